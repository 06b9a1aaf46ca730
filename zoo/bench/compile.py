"""Compile time of train steps: as built (long ResNet stages as a ``lax.scan``) and unrolled,
and the step time of both programs."""
from __future__ import annotations

import statistics

from .. import registry
from .runners import compile_seconds, has_scanned_runs, jax_runner
from .timing import interleaved, stats


def run_compile_report(models, log, scan_steps: int = 0, rounds: int = 1) -> dict:
    """Train-step compile time (224, batch 32) of each model as built (long ResNet stages as a
    ``lax.scan``) and unrolled (``scan_min_run=0``), ``rounds`` times with the models
    alternating: per model the medians, and the ResNet-152/50 ratios as medians of the
    rounds' ratios. With ``scan_steps``, also the step time of both programs, interleaved,
    for the models where they differ."""
    log("\n== compile time of the train step, 224x224, batch 32 (trace+lower, compile)")
    labels = (("built", None), ("unrolled", 0))
    runs = {name: {label: [] for label, _ in labels} for name in models}
    for i in range(rounds):
        for name in models:
            model = registry.create(name)
            for label, min_run in labels:
                built = model if min_run is None else model.with_policy(
                    model.policy.replace(scan_min_run=min_run))
                lower_s, compile_s = compile_seconds(built, "train", 32, 224)
                runs[name][label].append(dict(lower_s=lower_s, compile_s=compile_s,
                                              total_s=lower_s + compile_s))
                log(f"   {name:10s} {label:8s} lower {lower_s:6.1f} s  compile {compile_s:6.1f} s"
                    + (f"  (round {i + 1}/{rounds})" if rounds > 1 else ""))
    out = {}
    for name in models:
        row = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} | {"rounds": rs}
               for label, rs in runs[name].items()}
        model = registry.create(name)
        row["scanned"] = has_scanned_runs(model, (32, 224, 224, 3))
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
    runners = []
    for label, min_run in (("scanned", None), ("unrolled", 0)):
        built = model if min_run is None else model.with_policy(
            model.policy.replace(scan_min_run=min_run))
        runners.append(jax_runner(built, "train", 32, 224, name=label))
    timing = interleaved(runners, rounds=rounds, min_rep_s=0, warmup=1, settle_below_s=0)
    out = {r.name: stats(timing["times"][r.name], r.batch) for r in runners}
    ratio = out["scanned"]["seconds_median"] / out["unrolled"]["seconds_median"]
    out["time_ratio"] = ratio
    log(f"   {model.name} step: scanned {out['scanned']['img_s_median']:.2f} img/s, unrolled "
        f"{out['unrolled']['img_s_median']:.2f} img/s, time ratio {ratio:.2f}")
    return out
