"""``zoo visualize {filters,activations,scoremap}``: pictures of a model (:mod:`zoo.visualize`).

    zoo visualize filters --model alexnet --weights alexnet.tv_in1k --out f.png
    zoo visualize activations --model vgg16 --layer conv1_2 --image chelsea --out a.png
    zoo visualize scoremap --model vgg16 --weights vgg16.tv_in1k --image cat.jpg --size 384

``--weights``: ``random`` (an init from ``--seed``), a weight tag or a file
(:func:`zoo.weights.load`). ``--image``: a file, or a photo that ships with scikit-image
(chelsea, coffee, astronaut, ...). ``scoremap`` slides the fully-convolutional net over the
image (docs/fully_conv.md) and prints the top classes of the position-averaged map.
Exit codes: 0 done, 2 bad arguments or input.
"""
from __future__ import annotations

import json
import os

from .. import images
from .. import visualize as V
from .args import at_least, output_file, positive_floats, warn


def add_arguments(p, name: str) -> None:
    sub = p.add_subparsers(dest="picture", required=True, metavar="PICTURE")

    def common(q, image=False, model_required=True):
        q.add_argument("--model", required=model_required,
                       help="model name" + ("" if model_required else " (default: the weights')"))
        q.add_argument("--weights", default="random", help="random, a weight tag, or a file")
        q.add_argument("--seed", type=at_least(0), help="init seed for --weights random (default 0)")
        if image:
            q.add_argument("--image", default="chelsea",
                           help="image file or scikit-image photo name (default chelsea)")
            q.add_argument("--invert", action="store_true",
                           help="invert intensities (dark digits on paper -> the training look)")

    f = sub.add_parser("filters", help="first-layer filters as an image grid")
    common(f)
    f.add_argument("--out", required=True, type=output_file, help="PNG path")
    a = sub.add_parser("activations", help="activation maps of a named layer for an image")
    common(a, image=True)
    a.add_argument("--out", required=True, type=output_file, help="PNG path")
    a.add_argument("--layer", required=True, help="layer path, e.g. conv1 or layer2")
    a.add_argument("--size", type=at_least(1), default=None,
                   help="the image's shorter side (default: the model's training size, "
                        "centre-cropped to it)")
    a.add_argument("--max-maps", type=at_least(1), default=64)
    s = sub.add_parser("scoremap", help="fully-convolutional score map of an image")
    common(s, image=True, model_required=False)
    s.add_argument("--out", type=output_file,
                   help="PNG path (default: <image>_<model>_fully_conv.png)")
    s.add_argument("--size", type=at_least(1), default=384, help="shorter side of the image (px)")
    s.add_argument("--stride", type=at_least(1), default=None,
                   help="map stride (px), a divisor of the network's (finer: shift-and-stitch)")
    s.add_argument("--scales", type=positive_floats, default=(1.0,),
                   help="comma-separated image scales to average (default 1.0)")
    s.add_argument("--class", dest="cls", type=at_least(0), default=None,
                   help="class drawn as the heat overlay (default: the top class)")
    s.add_argument("--top", type=at_least(1), default=5, help="classes printed")
    s.add_argument("--json", action="store_true", help="also print the report as JSON")


def run(args) -> int:
    if args.picture == "scoremap" and not (args.model or args.weights != "random"):
        raise ValueError("scoremap with random weights needs --model")
    if args.seed is not None and args.weights != "random":
        warn(f"--seed is ignored: it seeds --weights random, and the weights are {args.weights}")
    seed = 0 if args.seed is None else args.seed
    # the image is read first: a bad file fails at once, before any weights load or compile
    image = None if args.picture == "filters" else images.load_image(args.image)
    model, variables, names, config = V.load_model(args.model, args.weights, seed=seed)
    if args.picture == "filters":
        path, kernel = V.first_conv(model, variables["params"])
        V.save_filter_grid(kernel, args.out)
        print(f"{model.name} {path}: {kernel.shape[3]} filters of {kernel.shape[0]}x"
              f"{kernel.shape[1]}x{kernel.shape[2]} -> {args.out}")
        return 0
    if args.picture == "activations":
        acts = V.save_layer_activations(model, variables, image, args.layer, args.out,
                                        config=config, size=args.size, invert=args.invert,
                                        max_maps=args.max_maps)
        print(f"{model.name} {args.layer}: {acts.shape[0]}x{acts.shape[1]}x{acts.shape[2]} "
              f"(first {min(args.max_maps, acts.shape[2])} maps) -> {args.out}")
        return 0
    stem = os.path.splitext(os.path.basename(args.image))[0]
    out = args.out or f"{stem}_{model.name}_fully_conv.png"
    r = V.score_map_report(model, variables, image, out, config=config, size=args.size,
                           stride=args.stride, scales=args.scales,
                           cls=args.cls, top=args.top, class_names=names, invert=args.invert,
                           title=f"{model.name} ({args.weights} weights), fully convolutional")
    fcn = r.pop("fcn")
    print(f"{fcn.name}: {r['map'][0]}x{r['map'][1]} map at stride {r['stride']} px (network "
          f"stride {r['network_stride']}, receptive field {r['receptive_field']}) over "
          f"{r['image_size'][0]}x{r['image_size'][1]} pixels; compile "
          f"{r['compile_seconds']:.1f} s, run {r['run_seconds']:.2f} s")
    print("top classes of the position-averaged map:")
    for c, name, p in r["top"]:
        print(f"  {p:7.4f}  {c:4d}  {name}")
    print(f"score map: {r['png']}")
    if args.json:
        print(json.dumps(r, default=str))
    return 0
