"""``zoo benchmark``: images/s, compile time, GFLOP/s and the fraction of the matmul peak
measured in the same run; optionally against torch (NCHW and channels_last), interleaved
round by round (:func:`zoo.bench.run`; docs/benchmarks.md).

    zoo benchmark                       # the tracked targets, JAX only
    zoo benchmark --compare-torch --levers --json bench.json
    zoo benchmark --models resnet18 --modes train --image-sizes 32 --batch-sizes 32 \\
        --dtypes float32 bfloat16 --compare-torch
    zoo benchmark --targets --compile-report resnet18 resnet50 resnet152
    zoo benchmark --input-pipeline photos/ --workers 2 --reps 5
    zoo benchmark --jit jax             # the runners under a user's plain jax.jit
    zoo benchmark --tune --compare-torch --policy tuned default   # on a new machine

A target is ``MODEL:MODE:SIZE:BATCH`` plus optional ``:classes=N``, ``:opt=adam|sgd``.
Numbers are facts of one shared machine at one time: compare the ratios within a run.
"""
from __future__ import annotations

import argparse
import dataclasses

from .. import bench
from .args import add_policy, output_file


def add_arguments(p, name: str) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--targets", nargs="*", default=None,
                   help="MODEL:MODE:SIZE:BATCH[:classes=N][:opt=adam] (default: the tracked list, zoo.bench.DEFAULT_TARGETS); "
                        "an empty --targets runs none")
    p.add_argument("--models", nargs="+", help="cross product of models x modes x sizes x batches "
                                               "(replaces --targets)")
    p.add_argument("--modes", nargs="+", default=["infer"], choices=["infer", "train"])
    p.add_argument("--image-sizes", nargs="+", type=int, default=[224])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[8])
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (rounds) per runner")
    p.add_argument("--min-rep-s", type=float, default=0.2,
                   help="a repetition repeats the call until it lasts about this long")
    p.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "im2col"],
                   help="ConvPolicy.impl of the main JAX runner")
    add_policy(p, default=["tuned"], several=True)
    p.add_argument("--jit", default="zoo", choices=["zoo", "jax"],
                   help="how the JAX runners compile: zoo.jit, or plain jax.jit (what a "
                        "user's own jit gets: XLA_FLAGS as import zoo left it; set "
                        "ZOO_XLA_FLAGS=0 for JAX's defaults)")
    p.add_argument("--nnx", action="store_true",
                   help="train targets (float32): also time the model as a Flax NNX module "
                        "(zoo.flax.NNX, nnx.Optimizer, nnx.jit), interleaved; the ratio "
                        "jax/nnx is the pure step's time over the module's")
    p.add_argument("--compare-torch", action="store_true",
                   help="also torch eager, NCHW and channels_last, interleaved with JAX")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--levers", action="store_true",
                   help="also time the JAX runner under its policy with one field changed, "
                        "interleaved: what each field gives (zoo.bench.LEVER_VARIANTS)")
    p.add_argument("--per-example", action="store_true",
                   help="also time inference with the batch through lax.map, one image at a time")
    p.add_argument("--fully-conv", action="store_true",
                   help="time the fully-convolutional VGG16 comparison (zoo.fully_conv)")
    p.add_argument("--fully-conv-size", type=int, default=384)
    p.add_argument("--compile-report", nargs="*", metavar="MODEL",
                   help="compile time of the train step (224, batch 32) of these models")
    p.add_argument("--compile-rounds", type=int, default=1, metavar="ROUNDS",
                   help="with --compile-report: compile every model ROUNDS times, the models "
                        "alternately; medians, and the ResNet-152/50 ratio as the median of "
                        "the rounds' ratios (single compiles vary by +-2 s)")
    p.add_argument("--scan-steps", type=int, default=0, metavar="ROUNDS",
                   help="with --compile-report: also time the train step of the models with "
                        "scanned stages against their unrolled program, ROUNDS rounds")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul-peak measurement")
    p.add_argument("--peak-size", type=int, default=None,
                   help="matmul size of the peak measurement (default 2048 on CPU, 8192 otherwise)")
    p.add_argument("--input-pipeline", metavar="FOLDER",
                   help="time zoo's streaming loader (decode, random resized crop to 224, flip, "
                        "normalise) against torch's DataLoader over torchvision's ImageFolder "
                        "on FOLDER (class subfolders), --reps rounds interleaved; alone unless "
                        "--targets/--models are given")
    p.add_argument("--workers", type=int, default=2,
                   help="with --input-pipeline: worker processes of both loaders (0: in process)")
    p.add_argument("--pipeline-batches", type=int, default=20, metavar="N",
                   help="with --input-pipeline: batches per loader per round")
    p.add_argument("--pipeline-batch-size", type=int, default=32, metavar="N",
                   help="with --input-pipeline: images per batch")
    p.add_argument("--pipeline-train", metavar="MODEL",
                   help="with --input-pipeline: also time MODEL's train step fed by the "
                        "streaming loader from FOLDER against the bare step, --reps rounds "
                        "interleaved (is training input-bound?)")
    p.add_argument("--tune", action="store_true",
                   help="first measure each target's convolutions on this machine (zoo tune; "
                        "what is cached is kept), for --policy tuned")
    p.add_argument("--json", metavar="FILE", type=output_file, help="write every figure to FILE")


def run(args) -> int:
    fields = {f.name for f in dataclasses.fields(bench.Options)}
    options = bench.Options(**{k: v for k, v in vars(args).items() if k in fields})
    bench.run(options, log=lambda *a: print(*a, flush=True))
    return 0
