"""How zoo compiles: ``zoo.jit`` is ``jax.jit`` with the XLA:CPU options the benchmarks chose.

XLA:CPU in jaxlib 0.10 hands convolutions and dots to YNNPACK by default and greedily fuses
whole chains of them into one YNNPACK graph, which ran slower than XLA's own convolutions
and matmuls on every model measured (docs/benchmarks.md, "How programs are compiled").
:data:`CPU_COMPILER_OPTIONS` turns those fusions off, per compiled program, without
touching ``XLA_FLAGS``.

Every program zoo compiles itself (the trainer's steps, evaluation, the benchmark, the
fully-convolutional evaluator, the CLI) goes through :func:`jit`. Your own
``jax.jit(model.apply)`` gets XLA's defaults; use ``zoo.jit`` instead, or set
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` before JAX starts.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax

#: XLA debug options for programs compiled for the CPU (the empty list disables every
#: YNNPACK fusion type: convolutions and dots run as XLA:CPU's own kernels).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The options :func:`jit` passes for ``backend`` (default: JAX's default backend);
    none off the CPU."""
    backend = backend or jax.default_backend()
    return dict(CPU_COMPILER_OPTIONS) if backend == "cpu" else {}


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` plus :func:`compiler_options` (merged under any
    ``compiler_options`` given). Usable as ``@zoo.jit`` or ``zoo.jit(static_argnums=1)(f)``."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
