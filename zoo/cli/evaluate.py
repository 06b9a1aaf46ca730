"""``zoo evaluate --run DIR``: a run's best checkpoint on its evaluation split (or on
``--dataset``'s): accuracy, per-class accuracy, a confusion-matrix PNG in the run directory
(:func:`zoo.train.evaluate_run`). Exit codes: 0 done, 2 bad arguments or input."""
from __future__ import annotations

import json

from .. import train as T


def add_arguments(p, name: str) -> None:
    p.add_argument("--run", metavar="DIR", required=True, help="run directory written by zoo train")
    p.add_argument("--dataset", help="evaluate on this dataset's evaluation split instead of the run's")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's best")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", help="confusion-matrix PNG path (default: in the run directory)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")


def run(args) -> int:
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
