#!/usr/bin/env python
"""Pictures of a model: first-layer filters, a layer's activations, fully-convolutional
score maps; and the pictures of ``docs/fully_conv.md``.

    python scripts/visualize.py filters --model alexnet --weights alexnet.tv_in1k --out f.png
    python scripts/visualize.py activations --model vgg16 --layer conv1_2 --image chelsea --out a.png
    python scripts/visualize.py scoremap --model vgg16 --image coffee --size 384 --stride 16 --out s.png
    python scripts/visualize.py docs            # rewrites docs/img/*.png

``--weights``: ``random`` (default; an init from ``--seed``), a weight tag or a file
(:func:`zoo.pretrained.load`). ``--image``: a file, or a photo that ships with
scikit-image (chelsea, coffee, astronaut, ...). The work is in :mod:`zoo.visualize`.
Exit codes: 0 done, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DOCS_IMG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, image=False):
        q.add_argument("--model", required=True)
        q.add_argument("--weights", default="random", help="random, a weight tag, or a file")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", required=True, help="PNG path")
        if image:
            q.add_argument("--image", default="chelsea",
                           help="image file or scikit-image photo name (default chelsea)")
            q.add_argument("--invert", action="store_true",
                           help="invert intensities (dark digits on paper -> the training look)")

    f = sub.add_parser("filters", help="first-layer filters as an image grid")
    common(f)
    a = sub.add_parser("activations", help="activation maps of a named layer for an image")
    common(a, image=True)
    a.add_argument("--layer", required=True, help="layer path, e.g. conv1 or layer2")
    a.add_argument("--size", type=int, default=None,
                   help="input size (default: the model's training size; the image is "
                        "resized so that its shorter side is SIZE, then centre-cropped)")
    a.add_argument("--max-maps", type=int, default=64)
    s = sub.add_parser("scoremap", help="fully-convolutional score map of an image")
    common(s, image=True)
    s.add_argument("--size", type=int, default=384, help="shorter side of the image (px)")
    s.add_argument("--stride", type=int, default=None, help="map stride (px), divides the net's")
    s.add_argument("--scales", default="1.0", help="comma-separated scales, averaged")
    s.add_argument("--class", dest="cls", type=int, default=None)
    d = sub.add_parser("docs", help="regenerate the pictures of docs/fully_conv.md")
    d.add_argument("--out-dir", default=DOCS_IMG)
    d.add_argument("--lenet-weights", default="lenet5.digits",
                   help="weights for the digits picture; trained here (about a minute) when "
                        "the tag cannot be loaded")
    return p


def _model(args, input_shape=None):
    from zoo import images, visualize as V

    return V.load_model(args.model, args.weights, seed=args.seed, input_shape=input_shape)


def run_filters(args) -> int:
    from zoo import images, visualize as V

    model, variables, _, _ = _model(args)
    path, kernel = V.first_conv(model, variables["params"])
    V.save_filter_grid(kernel, args.out)
    print(f"{args.model} {path}: {kernel.shape[3]} filters of {kernel.shape[0]}x{kernel.shape[1]}"
          f"x{kernel.shape[2]} -> {args.out}")
    return 0


def _prepare(image, config, size, invert=False):
    from zoo import images

    return images.prepare(image, channels=config["input_shape"][-1], mean=config["mean"],
                          std=config["std"], size=size, invert=invert)


def _centre_crop(x, h, w):
    top, left = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
    return x[top:top + h, left:left + w]


def run_activations(args) -> int:
    import numpy as np

    from zoo import images, visualize as V

    model, variables, _, config = _model(args)
    th, tw, _ = model.input_shape
    size = args.size or th
    x = _prepare(images.load_image(args.image), config, size, invert=args.invert)
    x = _centre_crop(x, max(size, th), max(size, tw)) if args.size is None else x
    try:
        acts = V.layer_output(model, variables, x[None], args.layer)
    except ValueError as e:
        print(f"error: {e}\nlayers: {', '.join(V.layer_names(model))}", file=sys.stderr)
        return 2
    acts = np.asarray(acts)[0]
    if acts.ndim != 3:
        print(f"error: layer {args.layer!r} outputs shape {acts.shape}, not a map", file=sys.stderr)
        return 2
    V.save_activation_grid(acts, args.out, max_maps=args.max_maps)
    print(f"{args.model} {args.layer}: {acts.shape[0]}x{acts.shape[1]}x{acts.shape[2]} "
          f"(first {min(args.max_maps, acts.shape[2])} maps) -> {args.out}")
    return 0


def run_scoremap(args) -> int:
    from zoo import images, visualize as V

    model, variables, names, config = _model(args)
    scales = tuple(float(s) for s in args.scales.split(","))
    r = V.score_map_report(model, variables, images.load_image(args.image), args.out, config=config,
                           size=args.size, stride=args.stride, scales=scales, cls=args.cls,
                           class_names=names, invert=args.invert,
                           title=f"{args.model} ({args.weights} weights), fully convolutional")
    print_report(r)
    return 0


def print_report(r) -> None:
    fcn = r["fcn"]
    print(f"{fcn.name}: {r['map'][0]}x{r['map'][1]} map at stride {r['stride']} px (network "
          f"stride {r['network_stride']}, receptive field {r['receptive_field']}) over "
          f"{r['image_size'][0]}x{r['image_size'][1]} pixels; compile {r['compile_seconds']:.1f} s, "
          f"run {r['run_seconds']:.2f} s")
    for c, name, p in r["top"]:
        print(f"  {p:7.4f}  {c:4d}  {name}")
    print(f"wrote {r['png']}")


# ----------------------------------------------------------------------------------------
# docs/fully_conv.md pictures.

def _digits_lenet(tag: str, log):
    """lenet5 with ``tag``'s weights, or trained here on the digits' training split."""
    import jax
    import numpy as np
    import optax

    import zoo
    from zoo import data
    from zoo import images, visualize as V

    try:
        model, variables, names, config = V.load_model("lenet5", tag)
        log(f"lenet5 weights: {tag}")
        return model, variables, config, f"{tag} weights"
    except Exception as e:  # noqa: BLE001 - any failure: train instead
        log(f"lenet5 weights {tag!r} not loadable ({type(e).__name__}); training on the digits")
    model = zoo.create("lenet5")
    train, _ = data.load("digits", image_shape=(32, 32, 1), seed=0)
    mean, std = model.mean[0], model.std[0]
    images = (np.asarray(train.images, np.float32) / (255.0 if train.images.dtype == np.uint8 else 1.0) - mean) / std
    labels = np.asarray(train.labels)
    variables = model.init(jax.random.key(0))
    opt = optax.adam(2e-3)
    params, state = variables["params"], variables["state"]
    opt_state = opt.init(params)

    @zoo.jit
    def step(params, opt_state, x, y):
        def loss(p):
            logits = model.apply(p, state, x)[0]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(0)
    for epoch in range(30):
        order = rng.permutation(len(labels))
        for i in range(0, len(order) - 63, 64):
            idx = order[i:i + 64]
            params, opt_state, value = step(params, opt_state, images[idx], labels[idx])
    log(f"trained lenet5 for 30 epochs on {len(labels)} digits (last batch loss {float(value):.3f})")
    return model, {"params": params, "state": state}, model.metadata(), "trained here, 30 epochs"


def _digit_canvas(seed=1):
    """uint8 (64, 224) canvas: five held-out digits (32x32, white on black) at irregular
    places; returns (canvas, [(digit, top, left)])."""
    import numpy as np

    from zoo import data

    _, test = data.load("digits", image_shape=(32, 32, 1), seed=0)
    rng = np.random.default_rng(seed)
    imgs = np.asarray(test.images)
    imgs = imgs if imgs.dtype == np.uint8 else (imgs * 255).astype(np.uint8)
    canvas = np.zeros((64, 224), np.uint8)
    placed = []
    lefts = [2, 46, 92, 138, 186]
    for digit, left in zip((3, 1, 4, 7, 9), lefts):
        idx = rng.choice(np.flatnonzero(test.labels == digit))
        top = int(rng.integers(0, 33))
        patch = imgs[idx][..., 0]
        canvas[top:top + 32, left:left + 32] = np.maximum(canvas[top:top + 32, left:left + 32], patch)
        placed.append((digit, top, left))
    return canvas, placed


def run_docs(args) -> int:
    import jax
    import numpy as np

    import zoo
    from zoo import fully_conv
    from zoo import images, visualize as V

    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    log = print
    t0 = time.perf_counter()

    # 1. Digits: lenet5 slides over a strip of five digits, at its stride (4) and at 2.
    model, variables, config, what = _digits_lenet(args.lenet_weights, log)
    canvas, placed = _digit_canvas()
    fcn, fvars = fully_conv.convert(model, variables)
    x = _prepare(canvas, config, None)
    for stride in (4, 2):
        sm = fully_conv.score_map(fcn, fvars, x, stride=stride)
        path = os.path.join(out, f"fcn_digits_stride{stride}.png")
        V.save_score_map(canvas, sm.scores, path, stride=stride, train_size=fcn.train_size,
                         class_names=[str(i) for i in range(10)], cls=7, top=6,
                         title=f"lenet5 ({what}) over five digits {[d for d, _, _ in placed]}",
                         size_inches=(12.0, 6.0))
        log(f"wrote {path}: map {sm.scores.shape[0]}x{sm.scores.shape[1]}, {sm.passes} passes")
        # where does each placed digit win?
        cells = np.asarray(jax.nn.softmax(sm.scores, axis=-1))
        for digit, top, left in placed:
            p, q = top // stride, left // stride
            p, q = min(p, cells.shape[0] - 1), min(q, cells.shape[1] - 1)
            log(f"   digit {digit} at ({top},{left}): cell ({p},{q}) argmax "
                f"{int(cells[p, q].argmax())} p={cells[p, q, digit]:.2f}")
    path = os.path.join(out, "filters_lenet5.png")
    V.save_filter_grid(variables["params"]["conv1"]["kernel"], path, scale=12)
    log(f"wrote {path}")

    # 2. A photo through a converted ImageNet net. Random weights unless imported weights
    #    are cached: the picture then shows the geometry (map size, stride), not classes.
    photo = images.load_image("chelsea")
    for name, weights in (("vgg16", "vgg16.tv_in1k"), ("alexnet", "alexnet.tv_in1k")):
        try:
            model, variables, names, config = V.load_model(name, weights)
        except Exception:  # noqa: BLE001
            weights = "random"
            model, variables, names, config = V.load_model(name, "random")
        if name == "vgg16":
            r = V.score_map_report(model, variables, photo, os.path.join(out, "fcn_chelsea_vgg16.png"),
                                   config=config, size=384, class_names=names,
                                   title=f"vgg16 ({weights} weights) on chelsea, shorter side 384")
            print_report(r)
        layer = "conv1_1" if name == "vgg16" else "conv1"
        xx = _prepare(photo, config, 224)
        xx = _centre_crop(xx, 224, 224)
        acts = np.asarray(V.layer_output(model, variables, xx[None], layer))[0]
        path = os.path.join(out, f"activations_{name}_{layer}.png")
        V.save_activation_grid(acts, path, max_maps=16, max_tile=80)
        log(f"wrote {path} ({weights} weights)")
        path = os.path.join(out, f"filters_{name}.png")
        V.save_filter_grid(V.first_conv(model, variables["params"])[1], path)
        log(f"wrote {path} ({weights} weights)")
        del variables
    log(f"docs pictures done in {time.perf_counter() - t0:.0f} s")
    return 0


MODES = {"filters": run_filters, "activations": run_activations, "scoremap": run_scoremap,
         "docs": run_docs}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return MODES[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
