#!/usr/bin/env python
"""Evaluate a training run: ``python scripts/evaluate.py --run runs/lenet5-digits-...``.

Loads the run's best checkpoint, evaluates it on the run's evaluation split (or on
``--dataset``'s), prints the accuracy and per-class accuracy, and writes a confusion-matrix
PNG into the run directory. The work is :func:`zoo.train.evaluate_run`.

Modes are dispatched from :func:`main`: ``standard`` (this one); ``fully_conv``
(``--fully-conv --model NAME --weights TAG --image FILE``: the fully-convolutional score
map of one image, see docs/fully_conv.md). Add a mode by adding its
arguments in :func:`build_parser` and a ``run_<mode>(args) -> int`` to ``MODES``.
Exit codes: 0 done, 2 bad arguments or input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a run's best checkpoint.")
    p.add_argument("--run", metavar="DIR",
                   help="run directory written by scripts/train.py (required, except with --fully-conv)")
    p.add_argument("--dataset", help="evaluate on this dataset's evaluation split instead of the run's")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's best")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", help="confusion-matrix PNG path (default: in the run directory); "
                                     "with --fully-conv, the score-map PNG")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    add_fully_conv_arguments(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def mode_of(args) -> str:
    """Which evaluation ``args`` asks for."""
    return "fully_conv" if getattr(args, "fully_conv", False) else "standard"


def run_standard(args) -> int:
    from zoo import train as T

    if not args.run:
        print("error: --run DIR is required (or use --fully-conv)", file=sys.stderr)
        return 2

    try:
        report = T.evaluate_run(args.run, dataset=args.dataset, data_dir=args.data_dir,
                                checkpoint=args.checkpoint, batch_size=args.batch_size,
                                output=args.output)
    except (T.ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"checkpoint: {report['checkpoint']}")
    print(f"accuracy on {report['eval_split']} ({report['count']} images): "
          f"{report['accuracy']:.4f}  (loss {report['loss']:.4f})")
    print("per-class accuracy:")
    width = max(len(n) for n in report["class_names"])
    matrix = report["confusion_matrix"]
    for i, (name, acc) in enumerate(report["per_class_accuracy"].items()):
        n = sum(matrix[i])
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:.4f}'}  ({n} images)")
    print(f"confusion matrix: {report['confusion_png']}")
    if args.json:
        print(json.dumps(report))
    return 0


# ----------------------------------------------------------------------------------------
# Mode "fully_conv" (zoo.fully_conv, docs/fully_conv.md): the converted net on one image.

def add_fully_conv_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fully-convolutional evaluation (--fully-conv)")
    g.add_argument("--fully-conv", action="store_true",
                   help="slide the converted network over --image and draw its score map")
    g.add_argument("--model", help="model name, e.g. vgg16 (default: from the weights)")
    g.add_argument("--weights", help="weight tag (lenet5.digits, vgg16.tv_in1k), file, or 'random'")
    g.add_argument("--image", help="image file, or a scikit-image photo: chelsea, coffee, astronaut")
    g.add_argument("--size", type=int, default=384, help="shorter side of the image in pixels")
    g.add_argument("--class", dest="cls", type=int, help="class drawn as the heat overlay "
                   "(default: the top class)")
    g.add_argument("--stride", type=int, help="map stride in pixels, a divisor of the network's "
                   "(finer strides use shift-and-stitch)")
    g.add_argument("--scales", default="1.0", help="comma-separated image scales to average")
    g.add_argument("--top", type=int, default=5, help="classes printed")
    g.add_argument("--seed", type=int, default=0, help="init seed for --weights random")


def run_fully_conv(args) -> int:
    from zoo import visualize as V

    if not args.image or not args.weights or not (args.model or args.weights != "random"):
        print("error: --fully-conv needs --image, --weights (a tag, a file or 'random') and, "
              "for random weights, --model", file=sys.stderr)
        return 2
    try:
        if args.weights == "random":
            model, variables, names, config = V.load_model(args.model, "random", seed=args.seed)
        else:
            from zoo import pretrained

            model, variables, info = pretrained.load(args.weights, args.model, with_info=True)
            names, config = info["class_names"], model.metadata()
            if info.get("transforms") is not None:
                config["mean"], config["std"] = info["transforms"].mean, info["transforms"].std
        from zoo import images

        image = images.load_image(args.image)
        stem = os.path.splitext(os.path.basename(args.image))[0]
        out = args.output or f"{stem}_{model.name}_fully_conv.png"
        report = V.score_map_report(
            model, variables, image, out, config=config, size=args.size, stride=args.stride,
            scales=tuple(float(s) for s in args.scales.split(",")), cls=args.cls, top=args.top,
            class_names=names, title=f"{model.name} ({args.weights}), fully convolutional")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fcn = report.pop("fcn")
    print(f"{fcn.name}: {report['map'][0]}x{report['map'][1]} map at stride {report['stride']} px "
          f"(network stride {fcn.stride}, receptive field {fcn.receptive_field}) over "
          f"{report['image_size'][0]}x{report['image_size'][1]} pixels; compile "
          f"{report['compile_seconds']:.1f} s, run {report['run_seconds']:.2f} s")
    print("top classes of the position-averaged map:")
    for c, name, prob in report["top"]:
        print(f"  {prob:7.4f}  {c:4d}  {name}")
    print(f"score map: {report['png']}")
    if args.json:
        print(json.dumps(report, default=str))
    return 0


MODES = {"standard": run_standard, "fully_conv": run_fully_conv}


def main(argv=None) -> int:
    args = parse_args(argv)
    return MODES[mode_of(args)](args)


if __name__ == "__main__":
    sys.exit(main())
