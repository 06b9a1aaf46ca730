"""A conv policy measured on the machine at hand: :func:`tune`, and the cached result.

``zoo.tune(model, (32, 224, 224, 3), train=True)`` times each distinct convolution of the
model's train step (or forward) under every implementation that can run it
(:func:`zoo.kernels.policy.candidates`), interleaved round by round, keeps the fastest per
geometry where it beats the hand-tuned rules' choice by more than ``margin``, checks the
whole model under the result against the default policy (a table that makes it slower is
not kept), caches the verdicts for this machine (:mod:`zoo.tuning.cache`) and returns the
model's policy with ``tuned`` filled in. :func:`named_policy` gives what ``--policy
tuned|default|xla`` means to the trainer, the evaluator and the benchmark."""
from __future__ import annotations

import datetime
import sys
from typing import Callable

import jax.numpy as jnp

from ..kernels.policy import ConvGeometry, ConvPolicy, candidates
from . import cache
from .measure import (INPUT_GRAD_FORMS, ConvCall, convs_of, conv_program, interleaved,
                      model_program, native_here, paired_ratio, summarise)

#: interleaved rounds of a whole-model comparison at least (one conv moves a step by little)
MODEL_ROUNDS = 7
#: implementations tried per geometry in the whole model, fastest alone first: the fastest
#: alone can lose there to the next one, which fuses better (docs/tuning.md)
MODEL_TRIES = 2

POLICIES = ("tuned", "default", "xla")

__all__ = ["POLICIES", "ConvCall", "coverage", "convs_of", "named_policy", "stale", "tune",
           "tuned_policy"]


def stale(key: str, entry: dict, needs_dx: bool | None = None) -> bool:
    """Whether a cached verdict was measured before one of today's implementations could run
    its geometry (bfloat16 Winograd, say): the rules decide it until ``zoo tune`` measures
    it again. 'xla' is always measured (under the rules' name where that is a custom conv
    with XLA's forward). The two input-gradient forms are asked for where the verdict timed
    the input gradient (``needs_dx`` in the entry; before it was recorded: where it holds
    either form), or where the caller's conv ``needs_dx`` (a verdict for the image's conv,
    which has no input gradient, does not hold for a conv that has one). A verdict timed
    with XLA's forms is stale where one of zoo's compiled kernels now runs in the custom
    convs (``native``), and in inference where XLA's own convolution was not timed beside
    the compiled forward. A key that names no geometry is stale too: nothing looks it up."""
    try:
        g, train = ConvGeometry.from_key(key)
    except ValueError:
        return True
    if native_here(g, train) and not entry.get("native", False):
        return True
    seconds = set(entry.get("seconds", {}))
    if not train and native_here(g, train) and "xla" not in seconds:
        return True   # XLA's convolution was timed under the compiled forward's name
    timed_dx = entry.get("needs_dx", bool(seconds & set(INPUT_GRAD_FORMS)))
    needed = set(candidates(g, train)) - {"xla"}
    if not (timed_dx or needs_dx):
        needed -= set(INPUT_GRAD_FORMS)
    return not needed <= seconds


def tuned_policy(base: ConvPolicy | None = None) -> ConvPolicy:
    """``base`` (default ``ConvPolicy()``) with every choice measured on this machine (but
    the :func:`stale` ones)."""
    base = base or ConvPolicy()
    table = dict(base.tuned)
    table.update({k: e["impl"] for k, e in cache.load().items() if not stale(k, e)})
    return base.replace(tuned=tuple(table.items()))


def coverage(model, input_shape, *, train: bool = False, dtype=jnp.float32) -> tuple[int, int]:
    """``(measured, total)``: how many of the model's distinct conv geometries for this input
    and mode its policy's ``tuned`` table decides."""
    calls = convs_of(model, input_shape, train=train, dtype=dtype)
    table = dict(model.policy.tuned)
    return sum(c.key in table for c in calls), len(calls)


def named_policy(name: str, model, input_shape, *, train: bool = False,
                 dtype=jnp.float32) -> tuple[ConvPolicy, str]:
    """``(policy, one line for a run header)`` for ``--policy NAME``: 'tuned' (the model's
    policy plus what ``zoo tune`` measured on this machine), 'default' (the model's policy
    without measurements: for a registered model, the hand-tuned rules) or 'xla' (every
    conv XLA's own)."""
    if name == "xla":
        return ConvPolicy.xla(), "conv policy: xla (every convolution XLA's own)"
    if name == "default":
        return model.policy.replace(tuned=()), "conv policy: default (the hand-tuned rules)"
    if name != "tuned":
        raise ValueError(f"--policy {name!r}: choose from {', '.join(POLICIES)}")
    policy = tuned_policy(model.policy.replace(tuned=()))
    measured, total = coverage(model.with_policy(policy), input_shape, train=train, dtype=dtype)
    mode = "train step" if train else "inference"
    if measured == 0:
        return policy, (f"conv policy: tuned, but none of the {total} conv geometries of the "
                        f"{mode} is measured on this machine, so the default rules run "
                        f"(measure them: python -m zoo tune {model.name} "
                        f"{'--train ' if train else ''}--batch-size {input_shape[0]} "
                        f"--image-size {input_shape[1]})")
    return policy, (f"conv policy: tuned ({measured} of {total} conv geometries of the {mode} "
                    f"measured on this machine, {cache.path()}; the rest by the default rules)")


def _progress(i: int, n: int, text: str, stream=None) -> None:
    stream = stream or sys.stderr
    width = 24
    done = int(width * i / max(n, 1))
    line = f"[{'#' * done}{'.' * (width - done)}] {i}/{n} {text}"
    if stream.isatty():
        stream.write("\r" + line[:120].ljust(120) + ("\n" if i == n else ""))
    else:
        stream.write(line + "\n")
    stream.flush()


def _describe(c: ConvCall) -> str:
    g = c.geometry
    kh, kw, cin, cout = g.w_shape
    return (f"{c.where}: {kh}x{kw}/{g.stride[0]} {cin * g.groups}->{cout} at "
            f"{g.x_shape[1]}x{g.x_shape[2]}")


def _contenders(call: ConvCall, entry: dict, margin: float, floor: float = 0.0) -> list:
    """The implementations faster alone than the default choice by more than ``margin``
    and saving at least ``floor`` seconds over the model's ``uses`` of the geometry, fastest
    first (what the whole-model check tries, in this order)."""
    seconds, default = entry["seconds"], call.default_impl()
    order = sorted(seconds, key=lambda i: (seconds[i], call.candidates().index(i)))
    if default not in seconds:
        return [i for i in order if i != default]
    return [i for i in order if i != default and seconds[i] < (1 - margin) * seconds[default]
            and (seconds[default] - seconds[i]) * call.uses >= floor]


def _conv_seconds(calls, entries: dict, known: dict) -> float:
    """The model's convolutions under the default rules, each timed alone, summed over
    their uses: a gain smaller than ``margin`` of this cannot be told from the noise of the
    whole model's time, so such a change is not tried there."""
    total = 0.0
    for c in calls:
        e = entries.get(c.key) or known.get(c.key) or {}
        total += e.get("seconds", {}).get(c.default_impl(), 0.0) * c.uses
    return total


def _choose(call: ConvCall, seconds: dict, margin: float) -> str:
    """The fastest where it beats the default choice by more than ``margin``; ties and
    near-ties keep the default (the order of :func:`candidates` breaks exact ties)."""
    default = call.default_impl()
    best = min(seconds, key=lambda i: (seconds[i], call.candidates().index(i)))
    if default in seconds and seconds[best] >= (1 - margin) * seconds[default]:
        return default
    return best


def tune(model, input_shape, *, train: bool = False, dtype=jnp.float32, rounds: int = 5,
         margin: float = 0.03, verify: bool = True, tries: int = MODEL_TRIES,
         use_cache: bool = True, refresh: bool = False,
         timings: Callable[[ConvCall, str], float] | None = None,
         progress: bool = True, log: Callable = print, report: dict | None = None) -> ConvPolicy:
    """Measure ``model``'s convolutions for ``input_shape`` (N, H, W, C) on this machine and
    return its policy with the winners in ``tuned``.

    ``train``: time the train step's forward and gradients, else the forward. ``rounds``:
    interleaved rounds per geometry (medians compared). ``margin``: another implementation
    replaces the default rules' choice only when faster by more than this fraction.
    ``verify``: try each change in the whole model (one at a time against the changes kept
    so far), then all kept against the default policy, at least :data:`MODEL_ROUNDS`
    interleaved rounds each, by the median of the per-round time ratios; a change is kept
    only if it makes the model faster by more than ``margin`` too, the table only if it is
    not slower. ``tries``: implementations tried per geometry in the whole model, fastest
    alone first. ``use_cache``: skip geometries already measured here under every current
    candidate (``refresh`` measures them again) and save the verdicts.
    ``timings(call, impl) -> seconds`` replaces the measurement (nothing compiled or run;
    deterministic; for tests). ``report``: a dict filled with every figure."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"zoo.tune: input_shape must be (batch, height, width, channels), "
                         f"got {tuple(input_shape)}")
    if rounds < 1 or tries < 1 or not 0 <= margin < 1:
        raise ValueError(f"zoo.tune: rounds and tries must be >= 1 and 0 <= margin < 1, got "
                         f"rounds={rounds}, tries={tries}, margin={margin}")
    base = model.policy
    calls = convs_of(model.with_policy(base.replace(tuned=())), shape, train=train, dtype=dtype)
    known = cache.load() if use_cache else {}
    todo = [c for c in calls
            if refresh or c.key not in known or stale(c.key, known[c.key], c.needs_dx)]
    mode = "train step" if train else "forward"
    log(f"tune {model.name} {mode}, input {'x'.join(map(str, shape))} "
        f"{jnp.dtype(dtype).name}: {len(calls)} conv geometries, {len(calls) - len(todo)} "
        f"cached, {len(todo)} to measure" + ("" if timings else f" ({rounds} rounds each)"))
    entries = {}
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for i, call in enumerate(todo):
        if progress:
            _progress(i, len(todo), _describe(call))
        impls = call.candidates()
        if timings is not None:
            seconds = {impl: float(timings(call, impl)) for impl in impls}
            spread = {impl: (s, s) for impl, s in seconds.items()}
        else:
            stats = summarise(interleaved({impl: conv_program(call, impl) for impl in impls},
                                          rounds))
            seconds = {impl: s[0] for impl, s in stats.items()}
            spread = {impl: s[1:] for impl, s in stats.items()}
        winner = _choose(call, seconds, margin)
        entries[call.key] = dict(impl=winner, default=call.default_impl(), where=call.where,
                                 needs_dx=call.needs_dx, native=call.native,
                                 seconds=seconds, spread=spread,
                                 rounds=0 if timings else rounds, measured=when)
    if progress and todo:
        _progress(len(todo), len(todo), "measured")
    table = dict(base.tuned)
    table.update({k: e["impl"] for k, e in known.items() if k not in entries and not stale(k, e)})
    table.update({k: e["impl"] for k, e in entries.items()})
    new = [c for c in calls if c.key in entries and entries[c.key]["impl"] != c.default_impl()]
    check = None
    if verify and timings is None and new:
        floor = margin * _conv_seconds(calls, entries, known)
        for c in new:
            if not _contenders(c, entries[c.key], margin, floor):
                log(f"  {_describe(c)}: {entries[c.key]['impl']} saves under {margin:.0%} of "
                    f"the model's conv time alone; the rules' choice stays")
                entries[c.key].update(impl=c.default_impl(), fastest_alone=entries[c.key]["impl"],
                                      in_model=[])
                table[c.key] = c.default_impl()
        new = [c for c in new if entries[c.key]["impl"] != c.default_impl()]
        if new:
            check = _confirm(model, shape, base, table, new, entries, train, dtype, rounds,
                             margin, floor, tries, log)
    for c in calls:
        e = entries.get(c.key) or known.get(c.key)   # what this call measured comes first
        if e and e["impl"] != c.default_impl():
            log(f"  {_describe(c)}: {e['impl']} instead of {c.default_impl()} "
                f"({e['seconds'][e['impl']] * 1e3:.2f} ms against "
                f"{e['seconds'].get(c.default_impl(), float('nan')) * 1e3:.2f} alone)")
    if use_cache and entries:
        log(f"saved {len(entries)} measurements to {cache.save(entries)}")
    if report is not None:
        report.update(calls=[c.key for c in calls], entries=entries, cached=len(calls) - len(todo),
                      verify=check)
    return base.replace(tuned=tuple(table.items()))


def _confirm(model, shape, base, table, new, entries, train, dtype, rounds, margin, floor,
             tries, log):
    """Keep each choice that won alone only if it also makes the whole model faster: one
    change at a time against the choices kept so far (a conv fast alone can slow what XLA
    fuses around it; then the next fastest alone is tried, up to ``tries``), then
    all kept against the default rules. ``table`` and ``entries`` are updated in place;
    returns the final comparison."""
    def program(t):
        return model_program(model.with_policy(base.replace(tuned=tuple(t.items()))), shape,
                             train=train, dtype=dtype)

    kept = {k: v for k, v in table.items() if k not in {c.key for c in new}}
    for c in new:
        kept[c.key] = c.default_impl()
    current = program(kept)
    for i, c in enumerate(new):
        tried = []
        for impl in _contenders(c, entries[c.key], margin, floor)[:tries]:
            trial = dict(kept, **{c.key: impl})
            candidate = program(trial)
            times = interleaved({"without": current, "with": candidate},
                                max(rounds, MODEL_ROUNDS), 0.2)
            st, ratio = summarise(times), paired_ratio(times, "with", "without")
            ok = ratio < 1.0 - margin   # smaller gains are this noise's size, not the conv's
            tried.append(dict(model=model.name, impl=impl, with_s=st["with"][0],
                              without_s=st["without"][0], ratio=ratio, kept=ok))
            log(f"  [{i + 1}/{len(new)}] {_describe(c)} as {impl} in the whole "
                f"{'train step' if train else 'forward'}: {st['with'][0] * 1e3:.1f} ms against "
                f"{st['without'][0] * 1e3:.1f}, paired ratio {ratio:.3f} "
                f"({'kept' if ok else 'not kept'})")
            if ok:
                kept, current = trial, candidate
                break
        entries[c.key]["in_model"] = tried
        if kept[c.key] != entries[c.key]["impl"]:
            entries[c.key].update(impl=kept[c.key], fastest_alone=entries[c.key]["impl"])
    table.clear()
    table.update(kept)
    if not any(entries[c.key]["impl"] != c.default_impl() for c in new):
        return None
    out = _verify(model, shape, base.replace(tuned=()), base.replace(tuned=tuple(kept.items())),
                  train, dtype, rounds, log)
    if out["ratio"] > 1.0:
        for c in new:
            if entries[c.key]["impl"] != c.default_impl():
                entries[c.key].setdefault("fastest_alone", entries[c.key]["impl"])
                entries[c.key]["impl"] = c.default_impl()
            table[c.key] = c.default_impl()
    return out


def _verify(model, shape, default: ConvPolicy, tuned: ConvPolicy, train, dtype, rounds,
            log) -> dict:
    """The whole model under both policies, interleaved: median seconds per call."""
    rounds = max(rounds, MODEL_ROUNDS)
    log(f"checking the whole {'train step' if train else 'forward'} under the tuned and the "
        f"default policy ({rounds} interleaved rounds)")
    programs = {name: model_program(model.with_policy(p), shape, train=train, dtype=dtype)
                for name, p in (("default", default), ("tuned", tuned))}
    times = interleaved(programs, rounds, min_rep_s=0.2)
    stats = summarise(times)
    out = dict(default_s=stats["default"][0], tuned_s=stats["tuned"][0],
               default_spread=stats["default"][1:], tuned_spread=stats["tuned"][1:],
               ratio=paired_ratio(times, "tuned", "default"))
    verdict = ("kept" if out["ratio"] <= 1.0
               else "not kept: the default rules decide these geometries")
    log(f"  tuned {out['tuned_s'] * 1e3:.1f} ms, default {out['default_s'] * 1e3:.1f} ms per "
        f"call (paired tuned/default {out['ratio']:.3f}): {verdict}")
    return out
