"""How zoo compiles: XLA:CPU without YNNPACK's fusions, for zoo's programs and for yours.

XLA:CPU in jaxlib 0.10 hands convolutions and dots to YNNPACK by default and greedily fuses
whole chains of them into one YNNPACK graph, which ran slower than XLA's own convolutions
and matmuls on every model measured (docs/benchmarks.md, "How programs are compiled").
The option that turns those fusions off reaches XLA two ways:

- ``import zoo`` adds :data:`XLA_FLAG` to the process's ``XLA_FLAGS``
  (:func:`set_process_flags`), so that a plain ``jax.jit``, ``nnx.jit`` or Flax train step
  around a zoo model compiles as fast as ``zoo.jit``. XLA reads ``XLA_FLAGS`` once, when
  JAX starts its backends: import zoo before making any JAX array. A user's own entry for
  the flag is kept; ``ZOO_XLA_FLAGS=0`` (:data:`OPT_OUT`) leaves ``XLA_FLAGS`` alone; if
  JAX's CPU backend had already started, a ``UserWarning`` says what to do instead.
- :func:`jit` is ``jax.jit`` plus :data:`CPU_COMPILER_OPTIONS`, per compiled program,
  whatever the environment says. Every program zoo compiles itself (the trainer's steps,
  evaluation, the benchmark, the fully-convolutional evaluator, the CLI) goes through it.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Callable, MutableMapping

import jax

from ..machine import cpuinfo

#: XLA debug options for programs compiled for the CPU (the empty list disables every
#: YNNPACK fusion type: convolutions and dots run as XLA:CPU's own kernels).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}

#: The same option for the whole process, as ``import zoo`` appends it to ``XLA_FLAGS``.
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type="

#: Options giving one program YNNPACK's own matmul whatever ``XLA_FLAGS`` says (the
#: benchmark's matmul peak takes the better of it and XLA's). Programs computing in
#: bfloat16/float16 get them on a CPU with bfloat16 dot instructions (:func:`bf16_dots`):
#: YNNPACK multiplies bfloat16 operands into float32 there, where XLA's own dot and every
#: convolution convert them to float32 first (1.8-2x the bfloat16 matmul speed,
#: docs/benchmarks.md); convolutions stay XLA's.
YNNPACK_DOT_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

#: /proc/cpuinfo flags naming bfloat16 dot-product instructions (AVX-512 BF16, AMX tiles).
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16")

#: The environment variable that stops ``import zoo`` touching ``XLA_FLAGS``: 0, false,
#: no or off (any case); unset or anything else leaves the flag on.
OPT_OUT = "ZOO_XLA_FLAGS"

# XLA aborts the process on an XLA_FLAGS entry it does not know, so the flag is only added
# for jaxlib releases known to have it: [first, end) as (major, minor).
_JAXLIB_WITH_FLAG = ((0, 10), (0, 12))


@functools.lru_cache(maxsize=1)
def bf16_dots() -> bool:
    """Whether this CPU has bfloat16 dot instructions (:data:`BF16_DOT_FLAGS`)."""
    flags = set(cpuinfo().get("flags", "").split())
    return any(flag in flags for flag in BF16_DOT_FLAGS)


def compiler_options(backend: str | None = None, *, low_precision: bool = False) -> dict[str, Any]:
    """The options :func:`jit` passes for ``backend`` (default: JAX's default backend);
    none off the CPU. ``low_precision``: the program computes in bfloat16 or float16, so
    on a CPU with :func:`bf16_dots` its matmuls go to YNNPACK (:data:`YNNPACK_DOT_OPTIONS`)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    return dict(YNNPACK_DOT_OPTIONS if low_precision and bf16_dots() else CPU_COMPILER_OPTIONS)


def jit(fun: Callable | None = None, *, low_precision: bool = False, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` plus :func:`compiler_options` (merged under any
    ``compiler_options`` given); ``low_precision=True`` for a program that computes in
    bfloat16/float16. Usable as ``@zoo.jit`` or ``zoo.jit(static_argnums=1)(f)``. With
    the process flag set (:func:`set_process_flags`) it compiles the same float32 program
    as ``jax.jit``; without it, it is the way to zoo's speed."""
    if fun is None:
        return functools.partial(jit, low_precision=low_precision, **kwargs)
    options = {**compiler_options(low_precision=low_precision),
               **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)


def names_flag(xla_flags: str) -> bool:
    """Whether an ``XLA_FLAGS`` value sets the YNNPACK fusion flag (``-`` or ``--``, any
    value)."""
    name = XLA_FLAG.strip("-=")
    return any(token.lstrip("-").split("=", 1)[0] == name for token in xla_flags.split())


def set_process_flags(environ: MutableMapping[str, str] | None = None) -> str:
    """Append :data:`XLA_FLAG` to ``environ['XLA_FLAGS']`` (default ``os.environ``) before
    JAX starts its backends; ``import zoo`` calls it once. Returns what it did:

    - ``"opted out"``: :data:`OPT_OUT` is 0/false/no/off; nothing changed.
    - ``"user's own"``: ``XLA_FLAGS`` already names the flag; it is kept as it is.
    - ``"unknown to jaxlib"``: this jaxlib is not known to have the flag (an unknown entry
      would abort the process); nothing changed, :func:`jit` still passes it per program.
    - ``"too late"``: JAX's backends had started, so ``XLA_FLAGS`` would no longer reach
      XLA; nothing changed, and on the CPU a ``UserWarning`` says what to do.
    - ``"added"``.
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return "opted out"
    flags = environ.get("XLA_FLAGS", "")
    if names_flag(flags):
        return "user's own"
    if not _jaxlib_has_flag():
        return "unknown to jaxlib"
    if _backends_started():
        if _default_backend() == "cpu":
            warnings.warn(
                "JAX started its CPU backend before `import zoo`, so zoo could not turn off "
                "XLA:CPU's YNNPACK fusions for your own jax.jit programs (zoo's models ran "
                "up to 2.7x slower under them; docs/benchmarks.md). Import zoo before making "
                f"any JAX array, or start Python with XLA_FLAGS={XLA_FLAG}, or compile with "
                f"zoo.jit. {OPT_OUT}=0 silences this.", UserWarning, stacklevel=3)
        return "too late"
    environ["XLA_FLAGS"] = f"{flags} {XLA_FLAG}".strip()
    return "added"


def _jaxlib_has_flag() -> bool:
    try:
        import jaxlib
        version = tuple(int(p) for p in jaxlib.__version__.split(".")[:2])
    except (ImportError, AttributeError, ValueError):
        return False
    first, end = _JAXLIB_WITH_FLAG
    return first <= version < end


def _backends_started() -> bool:
    # jax._src.xla_bridge is private: if it moves, assume not started (the flag is then
    # added, which is harmless when late) rather than break `import zoo`.
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:
        return False


def _default_backend() -> str | None:
    try:
        return jax.default_backend()
    except Exception:
        return None
