"""Max pooling, training-mode BatchNorm and a stored buffer, written for XLA:CPU: the same
values and gradients as the plain JAX expressions (measurements in docs/benchmarks.md).

- :func:`max_pool`: the gradient is routed by comparing each of the ``kh*kw`` strided
  window views with the output (the first maximum in row-major window order wins, as
  XLA's), accumulated on the ``sh*sw`` stride-phase planes of the input and interleaved
  once: elementwise work that XLA fuses, instead of autodiff's ``select_and_gather_add``;
  or by zoo's compiled kernel, which reads each window once.
  Stride-1 pools also run their forward as the maximum of shifted views.
- :func:`batch_norm_train`: the batch sums as products with a ones vector, or zoo's compiled
  sums (:mod:`.native`), the backward written out (two sums instead of the reductions of
  the autodiff graph).
- :func:`stored`: a value XLA:CPU reads from memory instead of recomputing it in each
  consumer (the input a conv keeps for its weight gradient).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import native


def max_pool(x, window, strides, pads, compiled=False):
    """Max pooling of NHWC ``x`` over ``window`` (kh, kw) with ``strides`` (sh, sw) and
    ``pads`` ((top, bottom), (left, right)), all >= 0, padded with -inf. ``compiled``: a
    float32 pool and its gradient by zoo's compiled kernels (:func:`.native.max_pool`,
    :func:`.native.max_pool_grad`) where they run (built when first traced)."""
    geom = (tuple(window), tuple(strides), tuple(map(tuple, pads)))
    return _max_pool(x, geom, bool(compiled))


def _reduce_max(x, geom, compiled=False):
    """The forward. Float32 where ``compiled``, channels in whole vectors of 16: zoo's
    kernel, one read of each window, no padded copy (LeNet-5's 6-channel pool ran 1.13x
    slower with it). Else stride 1, or any stride in a low-precision type: the maximum of the
    ``kh*kw`` shifted views of the padded input, one fused elementwise pass, faster than
    XLA:CPU's reduce-window (which takes a bfloat16 strided window 4x the time); strided
    float32 pools keep the reduce-window, which is faster there."""
    (kh, kw), (sh, sw), pads = geom
    if (compiled and jnp.dtype(x.dtype) == jnp.float32 and x.shape[3] % native.LANES == 0
            and native.usable()):
        out_hw = tuple((size + lo + hi - k) // s + 1 for size, (lo, hi), k, s
                       in zip(x.shape[1:3], pads, (kh, kw), (sh, sw)))
        return native.max_pool(x, (kh, kw), (sh, sw), pads, out_hw)
    if (sh, sw) != (1, 1) and jnp.dtype(x.dtype) == jnp.float32:
        return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, (1, kh, kw, 1),
                                     (1, sh, sw, 1), ((0, 0), *pads, (0, 0)))
    _, views = _window_views(x, geom)
    return functools.reduce(jnp.maximum, [view for _, _, view in views])


def _window_views(x, geom):
    """The input padded with -inf, and ``(i, j, view)`` for each window offset: the strided
    slice of the padded input that offset (i, j) of every window reads, output-sized."""
    (kh, kw), (sh, sw), pads = geom
    xp = jax.lax.pad(x, np.array(-np.inf, x.dtype), [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
    n, rows, cols, c = xp.shape
    ho, wo = (rows - kh) // sh + 1, (cols - kw) // sw + 1
    return xp, [(i, j, jax.lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                                     (1, sh, sw, 1)))
                for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, geom, compiled):
    return _reduce_max(x, geom, compiled)


def _max_pool_fwd(x, geom, compiled):
    y = _reduce_max(x, geom, compiled)
    return y, (x, y)


def _max_pool_bwd(geom, compiled, res, g):
    (sh, sw), ((pt, _), (pl, _)) = geom[1:]
    x, y = res
    if compiled and native.usable():
        return (native.max_pool_grad(x, y, g.astype(x.dtype), *geom).astype(x.dtype),)
    xp, views = _window_views(x, geom)
    n, ho, wo, c = y.shape
    zero = jnp.zeros((), g.dtype)
    # Padded row i + sh*r is row r + i // sh of the phase-(i % sh) plane: each window offset
    # adds its routed gradient to one plane, shifted by whole rows; the planes interleave.
    rows, cols = -(-xp.shape[1] // sh), -(-xp.shape[2] // sw)
    planes = [[jnp.zeros((n, rows, cols, c), g.dtype) for _ in range(sw)] for _ in range(sh)]
    taken = jnp.zeros(y.shape, bool)
    for i, j, view in views:
        hit = (view == y) & ~taken
        taken = taken | hit
        di, dj = i // sh, j // sw
        planes[i % sh][j % sw] = planes[i % sh][j % sw] + jax.lax.pad(
            jnp.where(hit, g, zero), zero,
            ((0, 0, 0), (di, rows - ho - di, 0), (dj, cols - wo - dj, 0), (0, 0, 0)))
    dxp = jnp.stack([jnp.stack(row, axis=3) for row in planes], axis=2)  # n, rows, sh, cols, sw, c
    dxp = dxp.reshape(n, rows * sh, cols * sw, c)
    return (dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def stored(x):
    """``x``, as a buffer whose producers XLA cannot fuse into its consumers.

    XLA:CPU duplicates cheap elementwise producers into every consumer. When the consumer is
    the transpose XLA adds in front of its weight-gradient convolution (to (C, H, W, N)),
    the fused loop recomputes the whole BatchNorm/ReLU/residual-add chain in strided order,
    far slower than transposing a stored array. An optimization barrier is dropped before
    fusion; a conditional is not,
    and its operand and result are buffers (the cost is one copy of ``x``). Its predicate
    ``(v == v) | (v != v)`` holds for every float, NaN included, so the other branch is never
    taken; XLA cannot prove that, and keeps the conditional.
    """
    if x.size == 0:
        return x
    v = x.reshape(-1)[0]
    return jax.lax.cond((v == v) | (v != v), lambda a: a, jnp.zeros_like, x)


def _column_sum(a):
    """Sum over every axis but the last, as a product with a ones vector (XLA:CPU's
    reduction over N*H*W rows is slower than the dot)."""
    rows = a.reshape(-1, a.shape[-1])
    # The barrier keeps XLA from folding the ones back into a (slow) reduce.
    ones = jax.lax.optimization_barrier(jnp.ones((rows.shape[0],), a.dtype))
    return jnp.dot(ones, rows, precision=jax.lax.Precision.HIGHEST)


def batch_norm_train(x, scale, bias, eps, compiled=False):
    """Training-mode batch normalization over every axis but the last (Ioffe & Szegedy
    2015), float32: ``(y, batch mean, biased batch variance)``. The statistics are
    outputs for the running averages, not differentiated through (as PyTorch's).
    ``compiled``: the sums by zoo's compiled kernels (:func:`.native.batch_stats`,
    :func:`.native.grad_sums`; the caller checks :func:`.native.available`)."""
    y, mean, var = _batch_norm_train(x, scale, bias, eps, bool(compiled))
    return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


def _bn_forward(x, scale, bias, eps, compiled):
    if compiled:
        mean, var = native.batch_stats(x)
        centered = x - mean
    else:
        m = x.size // x.shape[-1]
        mean = _column_sum(x) / m
        centered = x - mean
        var = _column_sum(jnp.square(centered)) / m
    rstd = jax.lax.rsqrt(var + eps)
    return centered * (scale * rstd) + bias, mean, var, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, eps, compiled):
    y, mean, var, _ = _bn_forward(x, scale, bias, eps, compiled)
    return y, mean, var


def _batch_norm_train_fwd(x, scale, bias, eps, compiled):
    y, mean, var, rstd = _bn_forward(x, scale, bias, eps, compiled)
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_train_bwd(eps, compiled, res, cotangents):
    x, mean, rstd, scale = res
    g = cotangents[0]
    m = x.size // x.shape[-1]
    xhat = (x - mean) * rstd
    if compiled:
        sum_g, sum_gc = native.grad_sums(g, x, mean)
        sum_gx = sum_gc * rstd
    else:
        sum_g = _column_sum(g)
        sum_gx = _column_sum(g * xhat)
    dx = (scale * rstd / m) * (m * g - sum_g - xhat * sum_gx)
    return dx, sum_gx, sum_g


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
