"""``zoo evaluate``: either a training run or a set of weights on a dataset.

- ``--run DIR``: the run's best checkpoint on its evaluation split (or on ``--dataset``'s):
  accuracy, per-class accuracy, a confusion-matrix PNG in the run directory
  (:func:`zoo.train.evaluate_run`).
- ``--weights TAG_OR_PATH --dataset FOLDER_OR_TFDS``: pretrained or packaged weights on a
  labelled folder (class subfolders by WordNet id, index or name; a flat folder with
  ``--labels``) or a TFDS split, through the weights' own transforms: top-1, top-5,
  per-class accuracy, the worst classes and a confusion-matrix PNG
  (:func:`zoo.weights.evaluate_weights`).

Exit codes: 0 done, 2 bad arguments or input."""
from __future__ import annotations

import argparse
import json
import warnings

from .args import add_policy, at_least, output_file, warn

#: flags that belong to one mode only: flag -> (attribute, mode)
_ONLY = {"--checkpoint": ("checkpoint", "--run"), "--labels": ("labels", "--weights"),
         "--split": ("split", "--weights"), "--limit": ("limit", "--weights"),
         "--workers": ("workers", "--weights"), "--model": ("model", "--weights"),
         "--strict-images": ("strict_images", "--weights")}


def add_arguments(p, name: str) -> None:
    p.add_argument("--run", metavar="DIR", help="run directory written by zoo train")
    p.add_argument("--weights", metavar="TAG_OR_PATH",
                   help="evaluate these weights instead of a run: a tag (zoo list --weights), "
                        "a zoo weights file or a torchvision state dict; needs --dataset")
    p.add_argument("--dataset", help="with --run: evaluate on this dataset's evaluation split "
                   "instead of the run's; with --weights: a folder (class subfolders named by "
                   "WordNet id, class index or class name; or flat, with --labels) or a TFDS "
                   "name (tfds:NAME)")
    p.add_argument("--data-dir", help="TFDS data directory")
    p.add_argument("--checkpoint", help="a checkpoint file instead of the run's best (--run)")
    p.add_argument("--model", help="model name, for a torchvision file whose name does not say "
                   "(--weights)")
    p.add_argument("--labels", metavar="FILE", help="labels of a flat image folder (--weights): "
                   "CSV image,label or one label per line in sorted file order; a label is a "
                   "class index, WordNet id or class name")
    p.add_argument("--split", help="TFDS split (--weights; default test, else validation)")
    p.add_argument("--limit", type=at_least(1), help="evaluate N images only, spread evenly over "
                   "a folder (the first N of a TFDS split), for a quick check (--weights)")
    p.add_argument("--workers", type=at_least(1), help="image decoding threads (--weights; "
                   "default: the CPU count, at most 8)")
    p.add_argument("--strict-images", action="store_true", default=None,
                   help="fail on an unreadable image instead of skipping it with a warning "
                        "(--weights)")
    p.add_argument("--batch-size", type=at_least(1), help="default 64")
    add_policy(p, default="tuned")
    p.add_argument("--output", type=output_file,
                   help="confusion-matrix PNG path (default: in the run directory; with "
                        "--weights ./confusion_<weights>-<dataset>.png)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (--weights)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    # the score map of an image moved to its own command; the old flag says where
    p.add_argument("--fully-conv", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    if args.fully_conv:
        raise ValueError("evaluate --run scores a run's checkpoint on a dataset; --fully-conv "
                         "(the fully-convolutional score map of one image) is `zoo visualize "
                         "scoremap --model NAME --weights TAG --image FILE`")
    if args.run is not None and args.weights is not None:
        raise ValueError(f"--run {args.run} evaluates a training run's checkpoint and --weights "
                         f"{args.weights} a set of weights: give one of them, not both")
    if args.run is None and args.weights is None:
        raise ValueError("give --run DIR (a training run) or --weights TAG_OR_PATH --dataset "
                         "FOLDER_OR_TFDS (a set of weights on a dataset)")
    mode = "--run" if args.run is not None else "--weights"
    for flag, (attr, owner) in _ONLY.items():
        if owner != mode and getattr(args, attr) is not None:
            raise ValueError(f"{flag} goes with {owner}, not with {mode}")
    return _run_weights(args) if mode == "--weights" else _run_run(args)


def _run_run(args) -> int:
    from .. import train as T

    report = T.evaluate_run(args.run, dataset=args.dataset, data_dir=args.data_dir,
                            checkpoint=args.checkpoint, batch_size=args.batch_size,
                            policy=args.policy,
                            output=args.output)
    print(f"checkpoint: {report['checkpoint']}")
    print(report["policy"])
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


def _run_weights(args) -> int:
    from .. import weights

    if args.dataset is None:
        raise ValueError(f"--weights {args.weights} needs --dataset FOLDER_OR_TFDS: the labelled "
                         f"images to evaluate them on")
    with warnings.catch_warnings(record=True) as said:   # printed as "warning:" lines below
        warnings.simplefilter("always")
        r = weights.evaluate_weights(
            args.weights, args.dataset, model=args.model, labels=args.labels,
            data_dir=args.data_dir, split=args.split, batch_size=args.batch_size or 64,
            limit=args.limit, output=args.output, workers=args.workers,
            strict_images=bool(args.strict_images), progress=args.progress,
            policy=args.policy)
    for w in said:
        warn(str(w.message))
    print(f"{r['model']} with {r['weights']} on {r['dataset']} ({r['layout']})")
    print(r["policy"])
    skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
    print(f"top-1 {r['top1']:.4f}  top-{r['top_k']} {r['top5']:.4f}  ({r['count']} images"
          f"{skipped}; {r['images_per_second']:,.1f} images/s, {r['seconds']:.1f} s)")
    acc, counts = r["per_class_accuracy"], r["per_class_count"]
    shown = list(acc) if len(acc) <= 20 else r["worst_classes"]
    print("per-class accuracy:" if len(acc) <= 20 else
          f"worst {len(shown)} of {len(acc)} classes:")
    width = max(len(n) for n in shown)
    for name in shown:
        print(f"  {name:<{width}}  {acc[name]:.4f}  ({counts[name]} images)")
    print(f"confusion matrix: {r['confusion_png']}")
    if args.json:
        print(json.dumps(r))
    return 0
