"""``zoo evaluate --run DIR``: a run's best checkpoint on its evaluation split (or on
``--dataset``'s): accuracy, per-class accuracy, a confusion-matrix PNG in the run directory
(:func:`zoo.train.evaluate_run`). Exit codes: 0 done, 2 bad arguments or input."""
from __future__ import annotations

import argparse
import json

from .. import train as T
from .args import at_least, output_file


def add_arguments(p, name: str) -> None:
    p.add_argument("--run", metavar="DIR", required=True, help="run directory written by zoo train")
    p.add_argument("--dataset", help="evaluate on this dataset's evaluation split instead of the run's")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's best")
    p.add_argument("--batch-size", type=at_least(1), help="default 64")
    p.add_argument("--output", type=output_file,
                   help="confusion-matrix PNG path (default: in the run directory)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    # the score map of an image moved to its own command; the old flag says where
    p.add_argument("--fully-conv", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    if args.fully_conv:
        raise ValueError("evaluate --run scores a run's checkpoint on a dataset; --fully-conv "
                         "(the fully-convolutional score map of one image) is `zoo visualize "
                         "scoremap --model NAME --weights TAG --image FILE`")
    report = T.evaluate_run(args.run, dataset=args.dataset, data_dir=args.data_dir,
                            checkpoint=args.checkpoint, batch_size=args.batch_size,
                            output=args.output)
    print(f"checkpoint: {report['checkpoint']}")
    print(f"accuracy on {report['eval_split']} ({report['count']} images): "
          f"{report['accuracy']:.4f}  (loss {report['loss']:.4f})")
    print("per-class accuracy:")
    width = max(len(n) for n in report["class_names"])
    matrix = report["confusion_matrix"]
    for i, (name, acc) in enumerate(report["per_class_accuracy"].items()):
        print(f"  {name:<{width}}  {'-' if acc is None else f'{acc:.4f}'}  ({sum(matrix[i])} images)")
    print(f"confusion matrix: {report['confusion_png']}")
    if args.json:
        print(json.dumps(report))
    return 0
