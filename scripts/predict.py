#!/usr/bin/env python
"""Classify images with pretrained weights and print the top-5 classes.

    python scripts/predict.py --weights lenet5.digits digit.png
    python scripts/predict.py --model resnet50 --weights resnet50.tv2_in1k cat.jpg
    python scripts/predict.py --model resnet18 --weights ~/Downloads/resnet18-f37072fd.pth cat.jpg

Each image goes through the weights' own transforms (torchvision's: resize the shorter
side, centre crop, mean/std; the zoo's own weights: the training data's fitting rule and
statistics). A thin front end over :func:`zoo.pretrained.load` (see docs/pretrained.md).
Exit codes: 0 done, 2 bad arguments, weights or images.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Top-5 predictions of a pretrained zoo model.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--weights", required=True, metavar="TAG_OR_PATH",
                   help="a weight tag (e.g. lenet5.digits, resnet50.tv_in1k; see --list), a "
                        "torchvision .pth/.safetensors state dict, or a zoo weights file")
    p.add_argument("--model", help="model name; needed for a torchvision file whose name does "
                                   "not say (the tag or zoo file says it otherwise)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import jax
    import numpy as np

    import zoo
    from zoo import pretrained

    try:
        model, variables, info = pretrained.load(args.weights, args.model, with_info=True)
    except (ValueError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    transforms, names = info["transforms"], info["class_names"]
    channels = int(model.input_shape[-1])
    try:
        batch = np.stack([transforms(path, channels) for path in args.images])
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    apply = zoo.jit(lambda p, s, x: model.apply(p, s, x, train=False)[0])
    logits = np.asarray(apply(variables["params"], variables["state"], batch), np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(args.top, probs.shape[1])
    for path, p in zip(args.images, probs):
        print(f"{path}: {model.name} with {args.weights}")
        for rank, i in enumerate(np.argsort(-p, kind="stable")[:k], 1):
            print(f"  {rank}. {names[i]:<30} {p[i]:7.2%}  (class {i})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
