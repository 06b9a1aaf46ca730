"""Timing: the matmul ceiling, one runner's repetitions, and runners compared interleaved
round by round in one process (medians and the spread; compare ratios within a run, the
machines are shared), and what the numbers were measured on."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from ..kernels import xla
from ..machine import cpu as cpu_info
from ..train import DTYPES
from ..tuning.measure import SETTLE_BELOW_S, interleave


def matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of one ``n x n`` ``jnp.dot`` (operands passed as arguments, so XLA cannot
    constant-fold them); bfloat16 inputs accumulate in float32 (``preferred_element_type``).
    The median of ``reps`` timed calls after a warm-up, the better of two compilations:
    YNNPACK's matmul (``xla.YNNPACK_DOT_OPTIONS``, whatever ``XLA_FLAGS`` says; about 15%
    faster on a square 2048 product) and :func:`zoo.jit` (XLA's own)."""
    dt = DTYPES[dtype]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)  # noqa: E731
    best = 0.0
    ynn = xla.YNNPACK_DOT_OPTIONS if jax.default_backend() == "cpu" else None
    for fn in (jax.jit(dot, compiler_options=ynn), xla.jit(dot)):
        times = time_calls(lambda: fn(a, b), reps)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


def time_calls(fn: Callable, reps: int, calls: int = 1) -> list[float]:
    """Seconds per call of ``reps`` timed repetitions (each ``calls`` calls, the last one
    blocked on), after one warm-up call."""
    jax.block_until_ready(fn())
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = fn()
        _block(r)
        out.append((time.perf_counter() - t0) / calls)
    return out


def _block(r):
    if isinstance(r, (jax.Array, tuple, list, dict)):
        jax.block_until_ready(r)


def machine() -> dict:
    """What the numbers were measured on: :func:`zoo.machine.cpu` (``kind``: one table per
    kind in docs/benchmarks.md), versions, the load."""
    info = dict(cpu_info(), python=platform.python_version(),
                jax=jax.__version__, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()],
                xla_flags=os.environ.get("XLA_FLAGS", ""))
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    with contextlib.suppress(ImportError):
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


@dataclasses.dataclass
class Runner:
    """One thing to time: ``step()`` runs one call (inference or train step) of ``batch``
    images; ``compile_s`` is its ahead-of-time compile time (0 for torch)."""

    name: str
    step: Callable[[], object]
    batch: int
    compile_s: float = 0.0
    note: str = ""


# ----------------------------------------------------------------------------------------
# Interleaved timing.

def interleaved(runners: Sequence[Runner], rounds: int = 5, min_rep_s: float = 0.2,
                warmup: int = 2, settle_below_s: float = SETTLE_BELOW_S) -> dict:
    """Time ``runners`` round by round (:func:`zoo.tuning.measure.interleave`: the order
    rotating; a repetition of about ``min_rep_s``, its length set by a call timed after
    ``warmup`` untimed ones; a short call's repetition starts with one untimed call).
    Returns per runner its seconds per call of every round, and its calls per repetition."""
    return interleave({r.name: r.step for r in runners}, rounds, min_rep_s, warmup=warmup,
                      settle_below_s=settle_below_s, block=_block)


def stats(seconds: Sequence[float], batch: int, flops: float | None = None,
          peak: float | None = None) -> dict:
    """img/s median, min, max (from seconds per call) and the achieved GFLOP/s."""
    med = statistics.median(seconds)
    out = dict(seconds_median=med, img_s_median=batch / med, img_s_min=batch / max(seconds),
               img_s_max=batch / min(seconds), reps=len(seconds))
    if flops:
        out["gflops"] = flops / med / 1e9
        if peak:
            out["fraction_of_peak"] = out["gflops"] / peak
    return out
