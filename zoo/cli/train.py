"""``zoo train``: train a model (:func:`zoo.train.run`); see docs/training.md.

With no arguments: lenet5 on the digits that ship with scikit-learn. Exit codes: 0 done,
1 training diverged (NaN/inf loss), 2 bad arguments or input, 130 interrupted and 143
terminated (the last checkpoint is kept; continue with --resume DIR).

Only the flags given reach :func:`zoo.train.run` (argparse defaults are None), so the
library can tell a flag typed from a default: ``--momentum`` with Adam is an error, the
default momentum is not.
"""
from __future__ import annotations

import argparse

from .. import train as T
from ..data import DATA_MODES
from ..train.config import AUGMENT_CHOICES
from .args import add_policy


def _epochs(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs (e.g. 30,60), "
                                         f"got {text!r}") from None


def add_arguments(p, name: str) -> None:
    d = T.TrainConfig()
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help=f"registered model name (default {d.model}; see `zoo list`)")
    g.add_argument("--dataset", help="'digits' (default), a TFDS name (mnist, cifar10, ...), "
                                     "'tfds:NAME', or a folder with one subfolder per class")
    g.add_argument("--data-dir", help="TFDS data directory (prepared datasets; zoo never downloads)")
    g.add_argument("--val-dataset", help="evaluation data: a folder (or TFDS name) with the same classes")
    g.add_argument("--val-fraction", type=float, help="hold out this stratified fraction of the "
                                                      "training data for evaluation")
    g.add_argument("--image-size", type=int, help="square input side (default: the model's)")
    g.add_argument("--augment", choices=AUGMENT_CHOICES,
                   help="training augmentation (default auto: none for single-channel data and "
                        "glyphs, crop_flip for RGB at <= 64 px, random_resized_crop above)")
    g.add_argument("--strict-images", action="store_true", default=None,
                   help="an unreadable image file in a dataset folder is an error (default: "
                        "skipped with a warning that counts and names them)")
    g.add_argument("--data-mode", choices=DATA_MODES,
                   help="memory: decode the set once; stream: read it in worker processes "
                        "every epoch; auto (default): memory when the decoded set fits 25%% "
                        "of this machine's memory")
    g.add_argument("--workers", type=int, help="streaming worker processes (default: the CPU "
                                               "count; 0 decodes in this process, for debugging)")
    g.add_argument("--num-classes", type=int, help="model outputs (default: the dataset's classes)")
    g.add_argument("--aux-logits", action="store_true", default=None,
                   help="train with the model's auxiliary classifiers (GoogLeNet; loss weight 0.3)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    g.add_argument("--batch-size", type=int, help=f"global batch over all devices (default {d.batch_size})")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr:g})")
    g.add_argument("--optimizer", choices=T.OPTIMIZERS, help=f"default {d.optimizer}")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    g.add_argument("--weight-decay", type=float, help="decay of kernels (never biases/BN); coupled "
                                                      "L2 for sgd/adam, decoupled for adamw")
    g.add_argument("--schedule", choices=T.SCHEDULES, help=f"default {d.schedule}")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup before the schedule")
    g.add_argument("--lr-milestones", type=_epochs,
                   help="step schedule: comma-separated epochs where lr *= --lr-gamma "
                        "(default: 50%% and 75%% of the epochs)")
    g.add_argument("--lr-gamma", type=float, help=f"step schedule factor (default {d.lr_gamma})")
    g.add_argument("--label-smoothing", type=float, help=f"default {d.label_smoothing}; 0 disables")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    g.add_argument("--dtype", choices=tuple(T.DTYPES), help="compute dtype; params and BN "
                                                             "statistics stay float32")
    add_policy(g)
    g.add_argument("--seed", type=int, help="seeds init, data order, augmentation, dropout")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--pretrained", metavar="TAG_OR_PATH", help="start from these weights "
                   "(zoo.weights.load_for_finetuning); the classifier is re-initialised "
                   "when the class count differs")
    g.add_argument("--freeze", action="append", metavar="PATTERN",
                   help="fnmatch pattern over param paths (e.g. 'conv1', 'layer1/*'); "
                        "repeatable; frozen params and their BN statistics never change")
    g.add_argument("--backbone-lr-scale", type=float, help="learning-rate factor for every param "
                                                           "outside the classifier")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", help="run directory (default runs/<model>-<dataset>-<time>)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    g.add_argument("--keep", type=int, help=f"training checkpoints kept besides the best (default {d.keep})")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar")
    g = p.add_argument_group("multi-host")
    g.add_argument("--distributed", action="store_true", default=None,
                   help="call jax.distributed.initialize(); every process runs this command")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (else autodetect)")
    g.add_argument("--num-processes", type=int, help="processes in the run (with --coordinator)")
    g.add_argument("--process-id", type=int, help="this process's id, 0 .. N-1 (0 runs the "
                                                   "coordinator)")
    g.add_argument("--distributed-timeout", type=float, metavar="SECONDS",
                   help=f"give up (exit 2) when the processes have not all arrived after this "
                        f"long (default {d.distributed_timeout:g})")


def _first_process() -> bool:
    import jax
    return jax.process_index() == 0


def run(args) -> int:
    settings = {k: v for k, v in vars(args).items()
                if v is not None and k not in ("command", "handler")}
    if "freeze" in settings:
        settings["freeze"] = tuple(settings["freeze"])
    summary = T.run(settings)
    acc = summary["eval_accuracy"]
    acc_text = f"{acc:.4f}" if acc is not None else "n/a"
    print(f"{summary['eval_split']} accuracy {acc_text} (best {summary['best_eval_accuracy'] or 0:.4f}, "
          f"{summary['epochs_completed']} epochs, {summary['seconds']:.0f} s); "
          f"run written to {summary['output_dir']}" + ("" if _first_process() else " by process 0"))
    return 0
