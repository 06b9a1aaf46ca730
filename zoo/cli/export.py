"""``zoo export MODEL --format FORMAT --out PATH``: a model with its weights as a program
that runs without zoo (:mod:`zoo.export`): StableHLO (``jax.export``), a TensorFlow
SavedModel or ONNX.

    zoo export lenet5 --weights lenet5.digits --format stablehlo --out lenet5.stablehlo
    zoo export resnet50 --weights resnet50.tv2_in1k --format savedmodel --out resnet50_saved
    zoo export lenet5 --weights lenet5.digits --format onnx --out lenet5.onnx --batch 1

Without ``--weights`` the model is freshly initialised (random weights, said in a warning).
The input is one float32 NHWC batch normalised as the weights expect, at the size they
were made for; the batch dimension is symbolic unless ``--batch N``.

Exit codes: 0 done, 2 bad arguments, weights or a model the converter cannot handle."""
from __future__ import annotations

import argparse
import os

from .. import export as zoo_export
from .args import at_least, warn

_NAMES = {"stablehlo": "StableHLO (jax.export)", "savedmodel": "TensorFlow SavedModel",
          "onnx": "ONNX"}


def _batch(text: str):
    """``symbolic`` or an int >= 1."""
    return text if text == "symbolic" else at_least(1)(text)


def _platforms(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected platform names such as cpu,cuda, got {text!r}")
    return names


def add_arguments(p, name: str) -> None:
    p.add_argument("model", metavar="MODEL", help="model name (zoo list)")
    p.add_argument("--weights", metavar="TAG_OR_PATH",
                   help="a weight tag (zoo list --weights), a zoo weights file or a torchvision "
                        "state dict (default: freshly initialised weights, with a warning)")
    p.add_argument("--format", required=True, choices=zoo_export.FORMATS,
                   help="stablehlo: jax.export bytes; savedmodel: a TensorFlow SavedModel "
                        "directory (needs TensorFlow); onnx: an ONNX file (needs jax2onnx)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the file to write (a directory for savedmodel; an earlier SavedModel "
                        "there is replaced); its directory must exist")
    p.add_argument("--batch", type=_batch, default="symbolic", metavar="N|symbolic",
                   help="batch size of the program (default symbolic: any)")
    p.add_argument("--num-classes", type=at_least(1),
                   help="classes of a freshly initialised model (with --weights: must agree "
                        "with the weights)")
    p.add_argument("--platforms", type=_platforms, metavar="LIST",
                   help="stablehlo and savedmodel: JAX platforms the program is lowered for "
                        "(default cpu,cuda)")


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _load(args):
    """``(model, variables, (H, W, C), where the weights came from, their Transforms or
    None)``."""
    import jax

    from .. import registry, weights

    registry.spec(args.model)  # an unknown name fails here, listing the known ones
    if args.weights is None:
        model = registry.create(args.model, args.num_classes)
        warn(f"no --weights: {model.name} is exported with freshly initialised, random weights")
        return model, model.init(jax.random.key(0)), model.input_shape, "random weights", None
    model, variables, info = weights.load(args.weights, args.model, with_info=True)
    if args.num_classes is not None and args.num_classes != model.num_classes:
        raise ValueError(f"--num-classes {args.num_classes}: the weights {args.weights} have "
                         f"{model.num_classes} classes (to change the classifier, fine-tune "
                         f"with zoo train --pretrained)")
    shape = tuple(info["metadata"].get("input_shape") or model.input_shape)
    return model, variables, shape, f"weights {args.weights}", info["transforms"]


def run(args) -> int:
    from ..checkpoint import atomic_write_bytes

    out = zoo_export.check_output(args.out, args.format)
    if args.platforms is not None and args.format == "onnx":
        warn("--platforms is ignored with --format onnx (an ONNX file names no platform)")
    platforms = args.platforms or zoo_export.DEFAULT_PLATFORMS
    model, variables, shape, source, transforms = _load(args)
    try:
        if args.format == "stablehlo":
            data = zoo_export.stablehlo(model, variables, shape, batch=args.batch,
                                    platforms=platforms)
            atomic_write_bytes(out, data)
        elif args.format == "savedmodel":
            zoo_export.saved_model(model, variables, shape, out, batch=args.batch,
                               platforms=platforms)
        else:
            zoo_export.onnx(model, variables, shape, out, batch=args.batch)
    except NotImplementedError as e:  # the converter's limit: bad input for this command
        raise ValueError(str(e)) from None
    inputs, outputs = zoo_export.signature(model, shape, args.batch)
    where = (f" (opset {zoo_export.ONNX_OPSET})" if args.format == "onnx"
             else f" for {', '.join(platforms)}")
    print(f"wrote {args.out} ({_human(_size(out))}): {model.name} with {source} as "
          f"{_NAMES[args.format]}{where}")
    mean = ", ".join(f"{m:g}" for m in (transforms or model).mean)
    std = ", ".join(f"{s:g}" for s in (transforms or model).std)
    crop = ("" if transforms is None or transforms.fit else
            f" (as the weights expect: shorter side resized to {transforms.resize}, centre "
            f"crop {transforms.crop})")
    print(f"  input   images float32 ({', '.join(map(str, inputs))}) NHWC, normalised: "
          f"(pixels / 255 - mean) / std with mean ({mean}), std ({std}){crop}")
    print(f"  output  logits float32 ({', '.join(map(str, outputs))}): "
          f"{model.num_classes} classes")
    return 0
