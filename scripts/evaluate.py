#!/usr/bin/env python
"""Evaluate a training run: ``python scripts/evaluate.py --run runs/lenet5-digits-...``.

Loads the run's best checkpoint, evaluates it on the run's evaluation split (or on
``--dataset``'s), prints the accuracy and per-class accuracy, and writes a confusion-matrix
PNG into the run directory. The work is :func:`zoo.train.evaluate_run`.

Modes are dispatched from :func:`main`: ``standard`` (this one). Add a mode by adding its
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
    p.add_argument("--run", required=True, metavar="DIR", help="run directory written by scripts/train.py")
    p.add_argument("--dataset", help="evaluate on this dataset's evaluation split instead of the run's")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's best")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", help="confusion-matrix PNG path (default: in the run directory)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def mode_of(args) -> str:
    """Which evaluation ``args`` asks for."""
    return "standard"


def run_standard(args) -> int:
    from zoo import train as T

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


MODES = {"standard": run_standard}


def main(argv=None) -> int:
    args = parse_args(argv)
    return MODES[mode_of(args)](args)


if __name__ == "__main__":
    sys.exit(main())
