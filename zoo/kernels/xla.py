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

#: XLA debug options for programs compiled for the CPU (the empty list disables every
#: YNNPACK fusion type: convolutions and dots run as XLA:CPU's own kernels).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}

#: The same option for the whole process, as ``import zoo`` appends it to ``XLA_FLAGS``.
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type="

#: Options giving one program YNNPACK's own matmul whatever ``XLA_FLAGS`` says (the
#: benchmark's matmul peak takes the better of it and XLA's).
YNNPACK_DOT_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

#: The environment variable that stops ``import zoo`` touching ``XLA_FLAGS``: 0, false,
#: no or off (any case); unset or anything else leaves the flag on.
OPT_OUT = "ZOO_XLA_FLAGS"

# XLA aborts the process on an XLA_FLAGS entry it does not know, so the flag is only added
# for jaxlib releases known to have it: [first, end) as (major, minor).
_JAXLIB_WITH_FLAG = ((0, 10), (0, 12))


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options :func:`jit` passes for ``backend`` (default: JAX's default backend);
    none off the CPU."""
    backend = backend or jax.default_backend()
    return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else {}


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` plus :func:`compiler_options` (merged under any
    ``compiler_options`` given). Usable as ``@zoo.jit`` or ``zoo.jit(static_argnums=1)(f)``.
    With the process flag set (:func:`set_process_flags`) it compiles the same program as
    ``jax.jit``; without it, it is the way to zoo's speed."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
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
