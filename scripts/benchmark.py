#!/usr/bin/env python
"""Benchmark zoo models: images/s, compile time, GFLOP/s and the fraction of the matmul
peak measured in the same run; optionally against torch (NCHW and channels_last),
interleaved round by round.

    python scripts/benchmark.py                       # the speed issue's targets, JAX only
    python scripts/benchmark.py --compare-torch --levers --json bench.json
    python scripts/benchmark.py --models resnet18 --modes train --image-sizes 32 \\
        --batch-sizes 32 --dtypes float32 bfloat16 --compare-torch
    python scripts/benchmark.py --compile-report resnet18 resnet50 resnet152 --targets

A target is ``MODEL:MODE:SIZE:BATCH`` plus optional ``:classes=N``, ``:opt=adam|sgd``.
Numbers are facts of one shared machine at one time: compare the ratios within a run.
See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: The speed issue's list (issue 6): inference at 224 batch 8, resnet18 training at 224 and
#: at 32x32 (10 classes), lenet5 training with Adam at batch 128.
DEFAULT_TARGETS = [
    "alexnet:infer:224:8", "vgg16:infer:224:8", "googlenet:infer:224:8",
    "resnet18:infer:224:8", "resnet50:infer:224:8",
    "resnet18:train:224:32", "resnet18:train:32:32:classes=10",
    "lenet5:train:32:128:opt=adam",
]


def parse_target(spec: str, dtype: str) -> dict:
    parts = spec.split(":")
    if len(parts) < 4:
        raise SystemExit(f"bad target {spec!r}: expected MODEL:MODE:SIZE:BATCH[:classes=N][:opt=sgd|adam]")
    t = dict(model=parts[0], mode=parts[1], size=int(parts[2]), batch=int(parts[3]), dtype=dtype,
             classes=None, opt="sgd")
    for extra in parts[4:]:
        k, _, v = extra.partition("=")
        if k == "classes":
            t["classes"] = int(v)
        elif k == "opt":
            t["opt"] = v
        else:
            raise SystemExit(f"bad target option {extra!r} in {spec!r}")
    if t["mode"] not in ("infer", "train"):
        raise SystemExit(f"bad mode in {spec!r}: 'infer' or 'train'")
    return t


def target_name(t: dict) -> str:
    extra = (f" {t['classes']}cls" if t["classes"] else "") + (f" {t['opt']}" if t["mode"] == "train" else "")
    return f"{t['model']} {t['mode']} {t['size']}px b{t['batch']} {t['dtype']}{extra}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", nargs="*", default=None,
                   help="MODEL:MODE:SIZE:BATCH[:classes=N][:opt=adam] (default: the issue's list); "
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
                   help="conv implementation of the main JAX runner")
    p.add_argument("--compare-torch", action="store_true",
                   help="also torch eager, NCHW and channels_last, interleaved with JAX")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--levers", action="store_true",
                   help="also time the JAX runner with each conv lever switched off, the matmul "
                        "weight gradient switched on, and plain XLA convs, interleaved: what "
                        "each lever gives (zoo.bench.LEVER_VARIANTS)")
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
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    return p


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
    import jax
    import zoo
    from zoo import bench

    name = target_name(t)
    model = zoo.create(t["model"], conv_policy=zoo.ConvPolicy(impl=args.conv_impl),
                       **({"num_classes": t["classes"]} if t["classes"] else {}))
    c = model.input_shape[-1]
    ncls = model.num_classes
    shape = (t["batch"], t["size"], t["size"], c)
    macs = bench.forward_macs(model, shape[1:])
    flops = 2 * macs * t["batch"] * (3 if t["mode"] == "train" else 1)
    peak = peaks.get(t["dtype"])
    result = dict(target=name, **t, macs_per_image=macs, flops_per_call=flops, runners={})
    choices = bench.conv_choices(model, shape, dtype=t["dtype"])
    result["conv_choices"] = {}
    for _, impl, _, _ in choices:
        result["conv_choices"][impl] = result["conv_choices"].get(impl, 0) + 1

    runners = []
    kw = dict(optimizer=t["opt"])
    log(f"\n== {name}: {2 * macs / 1e9:.3f} GFLOP/image forward; convs {result['conv_choices']}")
    runners.append(bench.jax_runner(model, t["mode"], t["batch"], t["size"], t["dtype"],
                                    name="jax", **kw))
    if args.levers:
        for vname, variant in bench.lever_variants(model, t["mode"], shape, t["dtype"]).items():
            runners.append(bench.jax_runner(variant, t["mode"], t["batch"], t["size"], t["dtype"],
                                            name=vname, **kw))
    if args.per_example and t["mode"] == "infer" and t["batch"] > 1:
        runners.append(bench.jax_runner(model, "infer", t["batch"], t["size"], t["dtype"],
                                        per_example=True, name="per_example", **kw))
    if args.compare_torch:
        try:
            import torch
            torch.set_num_threads(args.torch_threads)
            for cl in (False, True):
                runners.append(bench.torch_runner(t["model"], t["mode"], t["batch"], t["size"], c,
                                                  ncls, t["dtype"], channels_last=cl, **kw))
        except (ImportError, KeyError) as err:
            log(f"   torch comparison skipped: {err!r}")
    for r in runners:
        if r.compile_s:
            log(f"   {r.name}: compiled in {r.compile_s:.1f} s")
    timing = bench.interleaved(runners, rounds=args.reps, min_rep_s=args.min_rep_s, warmup=1)
    for r in runners:
        secs = timing["times"][r.name]
        st = bench.stats(secs, r.batch, flops, peak)
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


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    import jax
    from zoo import bench

    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    started = time.time()
    results = dict(machine=bench.machine(), args=vars(args), peaks={}, targets=[])
    targets = targets_from(args)
    log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {results['machine'].get('torch', 'absent')}")
    n = args.peak_size or (2048 if jax.default_backend() == "cpu" else 8192)
    if not args.no_peak:
        for dtype in sorted({t["dtype"] for t in targets} | {"float32"}):
            results["peaks"][dtype] = bench.matmul_peak(dtype, n=n, reps=max(args.reps, 3))
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
        results["peaks_after"] = {d: bench.matmul_peak(d, n=n, reps=3) for d in results["peaks"]}
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
    from zoo import fully_conv

    log(f"\n== fully-convolutional VGG16 at {args.fully_conv_size}")
    try:
        return fully_conv.benchmark_dense_eval("vgg16", size=args.fully_conv_size,
                                               repeats=max(3, min(args.reps, 5)), log=log)
    except Exception as err:  # report, don't lose the rest of the run
        log(f"   failed: {err!r}")
        return dict(error=repr(err))


def run_compile_report(models, log, scan_steps: int = 0, rounds: int = 1) -> dict:
    """Train-step compile time (224, batch 32) of each model as built (long ResNet stages as a
    ``lax.scan``) and unrolled (``scan_min_run=0``), ``rounds`` times with the models
    alternating: per model the medians, and the ResNet-152/50 ratios as medians of the
    rounds' ratios. With ``scan_steps``, also the step time of both programs, interleaved,
    for the models where they differ."""
    import zoo
    from zoo import bench
    log("\n== compile time of the train step, 224x224, batch 32 (trace+lower, compile)")
    labels = (("built", None), ("unrolled", 0))
    runs = {name: {label: [] for label, _ in labels} for name in models}
    for i in range(rounds):
        for name in models:
            model = zoo.create(name)
            for label, min_run in labels:
                built = model if min_run is None else model.with_policy(
                    model.policy.replace(scan_min_run=min_run))
                lower_s, compile_s = bench.compile_seconds(built, "train", 32, 224)
                runs[name][label].append(dict(lower_s=lower_s, compile_s=compile_s,
                                              total_s=lower_s + compile_s))
                log(f"   {name:10s} {label:8s} lower {lower_s:6.1f} s  compile {compile_s:6.1f} s"
                    + (f"  (round {i + 1}/{rounds})" if rounds > 1 else ""))
    out = {}
    for name in models:
        row = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"rounds": rs}
               for label, rs in runs[name].items()}
        model = zoo.create(name)
        row["scanned"] = bench.has_scanned_runs(model, (32, 224, 224, 3))
        row.update({k: v for k, v in row["built"].items() if k != "rounds"})
        out[name] = row
        if scan_steps and row["scanned"]:
            out[name]["steps"] = scan_step_times(model, scan_steps, log)
    if "resnet152" in out and "resnet50" in out:
        for label, key in (("built", "resnet152/resnet50"), ("unrolled", "resnet152/resnet50 unrolled")):
            ratios = [a["total_s"] / b["total_s"]
                      for a, b in zip(runs["resnet152"][label], runs["resnet50"][label])]
            out[key] = statistics.median(ratios)
            out[key + " rounds"] = ratios
        log(f"   resnet152 / resnet50: {out['resnet152/resnet50']:.2f}x as built, "
            f"{out['resnet152/resnet50 unrolled']:.2f}x unrolled"
            + (f" (medians of {rounds} rounds: "
               + " ".join(f"{r:.2f}" for r in out["resnet152/resnet50 rounds"]) + ")"
               if rounds > 1 else ""))
    return out


def scan_step_times(model, rounds: int, log) -> dict:
    """The train step (224, batch 32) with its long runs scanned and unrolled, interleaved."""
    from zoo import bench
    runners = []
    for label, min_run in (("scanned", None), ("unrolled", 0)):
        built = model if min_run is None else model.with_policy(
            model.policy.replace(scan_min_run=min_run))
        runners.append(bench.jax_runner(built, "train", 32, 224, name=label))
    timing = bench.interleaved(runners, rounds=rounds, min_rep_s=0, warmup=1)
    out = {r.name: bench.stats(timing["times"][r.name], r.batch) for r in runners}
    ratio = out["scanned"]["seconds_median"] / out["unrolled"]["seconds_median"]
    out["time_ratio"] = ratio
    log(f"   {model.name} step: scanned {out['scanned']['img_s_median']:.2f} img/s, unrolled "
        f"{out['unrolled']['img_s_median']:.2f} img/s, time ratio {ratio:.2f}")
    return out


if __name__ == "__main__":
    main()
