"""Initial values: normal draws cut on the host, and constants made on the host.

Init draws are ``scale * jax.random.normal(key, (L,))[:n]`` with ``L`` one of five lengths
(2**8, 2**11, ..., 2**20), or 2**20-value blocks from ``fold_in(key, i)`` above 2**20.
Threefry's draws are prefix-consistent, so the values do not depend on ``L``: change this
only with that in mind, or old seeds give other weights.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_NORMAL_BLOCK = 1 << 20


@functools.partial(jax.jit, static_argnums=1)
def _normal_block(key, size):
    return jax.random.normal(key, (size,), jnp.float32)


def _draw_length(n: int) -> int:
    """How many values to draw for ``n`` (at most 2**20): 2**8, 2**11, ..., 2**20, five
    compiled programs. Threefry's draws are prefix-consistent, so the first ``n`` values do
    not depend on it."""
    bits = max(n - 1, 0).bit_length()
    return 1 << min(20, 8 + 3 * max(0, -(-(bits - 8) // 3)))


def scaled_normal(key, shape, scale: float, dtype=jnp.float32):
    """``scale * N(0, 1)`` of ``shape``: one draw from ``key`` of up to 2**20 values, or
    2**20-value blocks from ``fold_in(key, i)`` for block i. The cut, reshape and scale run
    in NumPy (the same float32 product), because as JAX ops they compiled one program per
    kernel shape (GoogLeNet: 58 programs, 8 of its 10 s of eager init)."""
    n = math.prod(shape)
    count = -(-n // _NORMAL_BLOCK)
    if isinstance(key, jax.core.Tracer) and count > 1:
        # Traced (jax.eval_shape, jit): the blocks as one batched draw, the same values,
        # so an abstract init costs the same whatever the layer's size.
        draw = jax.vmap(lambda i: _normal_block(jax.random.fold_in(key, i), _NORMAL_BLOCK))
        return (draw(jnp.arange(count, dtype=jnp.uint32)).reshape(-1)[:n].reshape(shape)
                * scale).astype(dtype)
    if n <= _NORMAL_BLOCK:
        blocks = [_normal_block(key, _draw_length(n))]
    else:
        blocks = [_normal_block(jax.random.fold_in(key, i), _NORMAL_BLOCK) for i in range(count)]
    if isinstance(blocks[0], jax.core.Tracer):  # a traced init (jax.eval_shape, jit)
        return (jnp.concatenate(blocks)[:n].reshape(shape) * scale).astype(dtype)
    drawn = np.concatenate([np.asarray(b) for b in blocks])[:n]
    return jnp.asarray(drawn.reshape(shape) * np.float32(scale), dtype)


def filled(shape, value: float, dtype=jnp.float32):
    """A constant array made on the host: an eager ``jnp.zeros`` compiles one program per shape."""
    return jax.device_put(np.full(shape, value, jnp.dtype(dtype)))


def he_normal(key, shape, fan_in, dtype=jnp.float32):
    """He et al. 2015 (arXiv:1502.01852): N(0, 2 / fan_in), for layers followed by a ReLU."""
    return scaled_normal(key, shape, math.sqrt(2.0 / fan_in), dtype)
