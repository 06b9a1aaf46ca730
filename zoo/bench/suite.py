"""A benchmark run: targets (model, mode, size, batch, dtype), each timed against its lever
variants and torch, interleaved round by round; the matmul peak before and after; the
fully-convolutional comparison; the compile report. ``zoo benchmark`` is its front end,
docs/benchmarks.md its record."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Callable

import jax

from .. import registry
from ..kernels import ConvPolicy
from ..summary import summary
from .dense_eval import benchmark_dense_eval
from .compile import run_compile_report
from .levers import conv_choices, lever_variants
from .runners import jax_runner, torch_runner
from .timing import interleaved, machine, matmul_peak, stats

#: The targets docs/benchmarks.md tracks: inference at 224 batch 8, resnet18 training at
#: 224 and at 32x32 (10 classes), lenet5 training with Adam at batch 128.
DEFAULT_TARGETS = [
    "alexnet:infer:224:8", "vgg16:infer:224:8", "googlenet:infer:224:8",
    "resnet18:infer:224:8", "resnet50:infer:224:8",
    "resnet18:train:224:32", "resnet18:train:32:32:classes=10",
    "lenet5:train:32:128:opt=adam",
]


@dataclasses.dataclass
class Options:
    """What :func:`run` measures (the ``zoo benchmark`` flags)."""

    targets: list | None = None        # MODEL:MODE:SIZE:BATCH[:classes=N][:opt=adam]; None: defaults
    models: list | None = None         # instead: models x modes x image sizes x batch sizes
    modes: list = dataclasses.field(default_factory=lambda: ["infer"])
    image_sizes: list = dataclasses.field(default_factory=lambda: [224])
    batch_sizes: list = dataclasses.field(default_factory=lambda: [8])
    dtypes: list = dataclasses.field(default_factory=lambda: ["float32"])
    reps: int = 5                      # timed rounds per runner
    min_rep_s: float = 0.2             # a repetition repeats the call for about this long
    conv_impl: str = "auto"            # the main JAX runner's ConvPolicy.impl
    compare_torch: bool = False
    torch_threads: int = 2
    levers: bool = False
    per_example: bool = False
    fully_conv: bool = False
    fully_conv_size: int = 384
    compile_report: list | None = None
    compile_rounds: int = 1
    scan_steps: int = 0
    no_peak: bool = False
    peak_size: int | None = None
    json: str | None = None


def parse_target(spec: str, dtype: str) -> dict:
    parts = spec.split(":")
    if len(parts) < 4:
        raise ValueError(f"bad target {spec!r}: expected MODEL:MODE:SIZE:BATCH[:classes=N][:opt=sgd|adam]")
    t = dict(model=parts[0], mode=parts[1], size=int(parts[2]), batch=int(parts[3]), dtype=dtype,
             classes=None, opt="sgd")
    for extra in parts[4:]:
        k, _, v = extra.partition("=")
        if k == "classes":
            t["classes"] = int(v)
        elif k == "opt":
            t["opt"] = v
        else:
            raise ValueError(f"bad target option {extra!r} in {spec!r}")
    if t["mode"] not in ("infer", "train"):
        raise ValueError(f"bad mode in {spec!r}: 'infer' or 'train'")
    return t


def target_name(t: dict) -> str:
    extra = (f" {t['classes']}cls" if t["classes"] else "") + (f" {t['opt']}" if t["mode"] == "train" else "")
    return f"{t['model']} {t['mode']} {t['size']}px b{t['batch']} {t['dtype']}{extra}"


def targets_from(args) -> list[dict]:
    out = []
    for dtype in args.dtypes:
        if args.models:
            for m in args.models:
                for mode in args.modes:
                    for s in args.image_sizes:
                        for b in args.batch_sizes:
                            out.append(parse_target(f"{m}:{mode}:{s}:{b}", dtype))
        else:
            for spec in (DEFAULT_TARGETS if args.targets is None else args.targets):
                out.append(parse_target(spec, dtype))
    return out


def run_target(t: dict, args, peaks: dict, log) -> dict:
    name = target_name(t)
    model = registry.create(t["model"], conv_policy=ConvPolicy(impl=args.conv_impl),
                       **({"num_classes": t["classes"]} if t["classes"] else {}))
    c = model.input_shape[-1]
    ncls = model.num_classes
    shape = (t["batch"], t["size"], t["size"], c)
    macs = summary(model, shape[1:]).macs
    flops = 2 * macs * t["batch"] * (3 if t["mode"] == "train" else 1)
    peak = peaks.get(t["dtype"])
    result = dict(target=name, **t, macs_per_image=macs, flops_per_call=flops, runners={})
    choices = conv_choices(model, shape, dtype=t["dtype"])
    result["conv_choices"] = {}
    for _, impl, _, _ in choices:
        result["conv_choices"][impl] = result["conv_choices"].get(impl, 0) + 1

    runners = []
    kw = dict(optimizer=t["opt"])
    log(f"\n== {name}: {2 * macs / 1e9:.3f} GFLOP/image forward; convs {result['conv_choices']}")
    runners.append(jax_runner(model, t["mode"], t["batch"], t["size"], t["dtype"],
                                    name="jax", **kw))
    if args.levers:
        for vname, variant in lever_variants(model, t["mode"], shape, t["dtype"]).items():
            runners.append(jax_runner(variant, t["mode"], t["batch"], t["size"], t["dtype"],
                                            name=vname, **kw))
    if args.per_example and t["mode"] == "infer" and t["batch"] > 1:
        runners.append(jax_runner(model, "infer", t["batch"], t["size"], t["dtype"],
                                        per_example=True, name="per_example", **kw))
    if args.compare_torch:
        try:
            import torch
            torch.set_num_threads(args.torch_threads)
            for cl in (False, True):
                runners.append(torch_runner(t["model"], t["mode"], t["batch"], t["size"], c,
                                                  ncls, t["dtype"], channels_last=cl, **kw))
        except (ImportError, KeyError) as err:
            log(f"   torch comparison skipped: {err!r}")
    for r in runners:
        if r.compile_s:
            log(f"   {r.name}: compiled in {r.compile_s:.1f} s")
    timing = interleaved(runners, rounds=args.reps, min_rep_s=args.min_rep_s, warmup=1)
    for r in runners:
        secs = timing["times"][r.name]
        st = stats(secs, r.batch, flops, peak)
        st.update(compile_s=r.compile_s, calls_per_rep=timing["calls"][r.name], seconds=secs)
        result["runners"][r.name] = st
    # Ratios round by round: time(JAX runner) / time(reference), < 1 means JAX is faster.
    ratios = {}
    jt = timing["times"]["jax"]
    for ref in ("torch_cl", "torch"):
        if ref in timing["times"]:
            per_round = [a / b for a, b in zip(jt, timing["times"][ref])]
            ratios[f"jax/{ref}"] = dict(median=statistics.median(per_round), rounds=per_round)
    for r in runners:
        if r.name not in ("jax", "torch", "torch_cl"):
            per_round = [a / b for a, b in zip(jt, timing["times"][r.name])]
            ratios[f"jax/{r.name}"] = dict(median=statistics.median(per_round), rounds=per_round)
    result["ratios"] = ratios
    for r in runners:
        st = result["runners"][r.name]
        extra = f"{st['gflops']:7.1f} GFLOP/s ({st['fraction_of_peak']:.2f} of peak)" if "fraction_of_peak" in st else ""
        log(f"   {r.name:13s} {st['img_s_median']:9.1f} img/s (min {st['img_s_min']:.1f}, max "
            f"{st['img_s_max']:.1f})  {extra}")
    for k, v in ratios.items():
        log(f"   time {k:22s} {v['median']:.2f}  (rounds: {' '.join(f'{x:.2f}' for x in v['rounds'])})")
    return result


def run(args: Options | None = None, log: Callable = print) -> dict:
    """Every figure the options ask for, in one process: the matmul peak, each target's
    runners interleaved, the fully-convolutional comparison, the compile report. With
    ``args.json`` the results are written after each part (a killed run keeps them)."""
    args = args or Options()
    if args.reps < 1:
        raise ValueError(f"reps must be >= 1, got {args.reps}")
    started = time.time()
    results = dict(machine=machine(), args=dataclasses.asdict(args), peaks={}, targets=[])
    targets = targets_from(args)
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {results['machine'].get('torch', 'absent')}")
    n = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
    if not args.no_peak:
        for dtype in sorted({t["dtype"] for t in targets} | {"float32"}):
            results["peaks"][dtype] = matmul_peak(dtype, n=n, reps=max(args.reps, 3))
            log(f"jnp.dot {n}^2 peak, {dtype}{' (f32 accumulation)' if dtype != 'float32' else ''}: "
                f"{results['peaks'][dtype]:.0f} GFLOP/s")
    for t in targets:
        results["targets"].append(run_target(t, args, results["peaks"], log))
        save(results, args.json)  # a long run killed midway keeps what it measured
    if args.fully_conv:
        results["fully_conv"] = run_fully_conv(args, log)
        save(results, args.json)
    if args.compile_report:
        results["compile_report"] = run_compile_report(args.compile_report, log, args.scan_steps,
                                                       args.compile_rounds)
    if not args.no_peak and targets:  # the peak again: how much the machine's load moved
        results["peaks_after"] = {d: matmul_peak(d, n=n, reps=3) for d in results["peaks"]}
    results["wall_s"] = time.time() - started
    log(f"\ntotal {results['wall_s']:.0f} s")
    if args.json:
        save(results, args.json)
        log(f"wrote {args.json}")
    return results


def save(results: dict, path: str | None):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(tmp, path)


def run_fully_conv(args, log) -> dict:
    log(f"\n== fully-convolutional VGG16 at {args.fully_conv_size}")
    try:
        return benchmark_dense_eval("vgg16", size=args.fully_conv_size,
                                               repeats=max(3, min(args.reps, 5)), log=log)
    except Exception as err:  # report, don't lose the rest of the run
        log(f"   failed: {err!r}")
        return dict(error=repr(err))
