"""The convolution's forms that take no custom VJP of their own: XLA's, im2col and one
matrix product, kh*kw taps, and the input and weight gradients the custom convs of
:mod:`.conv` combine (an explicit conv of ``dy``, one stride-1 conv per output phase, one
product and its col2im, the matmul weight gradient)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import winograd
from .policy import winograd_computes
from .pool_bn import stored


def im2col(x, kernel_hw, stride, pads, dilation, out_hw):
    """Patches of ``x`` as rows: (N, Ho, Wo, kh*kw, C), the notes' "im2col" stretch.

    A negative right padding (the floor rule's unreachable border) is never read."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_hw, stride, dilation, out_hw
    if kh == kw == 1 and all(lo == 0 for lo, _ in pads):  # pointwise: a strided view
        return jax.lax.slice(x, (0, 0, 0, 0), (x.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1,
                                               x.shape[3]), (1, sh, sw, 1))[:, :, :, None, :]
    xp = jnp.pad(x, ((0, 0), *[(lo, max(hi, 0)) for lo, hi in pads], (0, 0)))
    cols = []
    for i in range(kh):
        for j in range(kw):
            cols.append(jax.lax.slice(
                xp, (0, i * dh, j * dw, 0),
                (xp.shape[0], i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, xp.shape[3]),
                (1, sh, sw, 1)))
    return jnp.stack(cols, axis=3)


class Geom(NamedTuple):
    """The static arguments of one convolution after geometry is resolved."""
    stride: tuple
    pads: tuple
    dilation: tuple
    groups: int
    precision: object
    acc: object          # preferred_element_type, or None


def xla_conv(x, w, geom: Geom):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=geom.stride, padding=geom.pads, rhs_dilation=geom.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=geom.groups,
        precision=geom.precision, preferred_element_type=geom.acc)


def im2col_conv(x, w, geom: Geom, out_hw):
    kh, kw, cin_g, cout = w.shape
    cols = im2col(x, (kh, kw), geom.stride, geom.pads, geom.dilation, out_hw)  # N, Ho, Wo, K, C
    n, ho, wo = cols.shape[:3]
    if geom.groups == 1:
        return jnp.dot(cols.reshape(n * ho * wo, kh * kw * cin_g), w.reshape(kh * kw * cin_g, cout),
                       precision=geom.precision,
                       preferred_element_type=geom.acc).reshape(n, ho, wo, cout)
    cols = cols.reshape(n * ho * wo, kh * kw, geom.groups, cin_g)
    wg = w.reshape(kh * kw, cin_g, geom.groups, cout // geom.groups)
    y = jnp.einsum("mkgc,kcgo->mgo", cols, wg, precision=geom.precision,
                   preferred_element_type=geom.acc)
    return y.reshape(n, ho, wo, cout)


def _chunk(n, per_image_bytes, budget):
    """The largest divisor of the batch ``n`` whose im2col buffer fits ``budget``."""
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * per_image_bytes <= budget:
            best = c
    return best


def weight_grad_matmul(x, dy, w_shape, geom: Geom, out_hw, chunk_bytes):
    """``dW = im2col(x)^T @ dy`` over the batch, ``chunk`` images per step of a ``lax.scan``
    (the buffer stays in cache; a scan of matmuls, unlike one of XLA convolutions, runs at
    full speed), accumulated in float32."""
    kh, kw, cin, cout = w_shape
    n = x.shape[0]
    chunk = _chunk(n, out_hw[0] * out_hw[1] * kh * kw * cin * x.dtype.itemsize, chunk_bytes)

    def part(xc, gc):
        cols = im2col(xc, (kh, kw), geom.stride, geom.pads, geom.dilation, out_hw)
        return jax.lax.dot_general(cols.reshape(-1, kh * kw * cin), gc.reshape(-1, cout),
                                   (((0,), (0,)), ((), ())), precision=geom.precision,
                                   preferred_element_type=jnp.float32)

    if chunk == n:
        total = part(x, dy)
    else:
        xs = x.reshape(n // chunk, chunk, *x.shape[1:])
        gs = dy.reshape(n // chunk, chunk, *dy.shape[1:])
        total, _ = jax.lax.scan(lambda a, xg: (a + part(*xg), None),
                                jnp.zeros((kh * kw * cin, cout), jnp.float32), (xs, gs))
    return total.reshape(w_shape)


def input_grad(dy, w, geom: Geom, in_hw, by_winograd=False):
    """``dL/dx`` of :func:`xla_conv` as one forward convolution of ``dy`` (dilated by the
    stride) with the flipped kernel, inputs and outputs swapped per group: autodiff's values
    as a plain convolution, which XLA:CPU also runs at full speed inside a ``lax.scan``.
    ``by_winograd``: that convolution as F(2x2, 3x3) where it is one (3x3, stride 1)."""
    kh, kw, cin_g, cout = w.shape
    groups = geom.groups
    w_t = jnp.flip(w, (0, 1)).reshape(kh, kw, cin_g, groups, cout // groups)
    w_t = w_t.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups, groups * cin_g)
    padding = []
    for axis in range(2):
        k_eff = geom.dilation[axis] * (w.shape[axis] - 1) + 1
        lo = geom.pads[axis][0]
        out = dy.shape[1 + axis]
        padding.append((k_eff - 1 - lo, in_hw[axis] - (out - 1) * geom.stride[axis] - 1 + lo))
    if (by_winograd and winograd_computes(w.shape, geom.stride, geom.dilation, groups)
            and padding[0][0] >= 0 and padding[1][0] >= 0):
        return winograd.conv3x3(dy, w_t, padding, in_hw, geom.precision, geom.acc)
    return jax.lax.conv_general_dilated(
        dy, w_t, window_strides=(1, 1), padding=padding, lhs_dilation=geom.stride,
        rhs_dilation=geom.dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=geom.precision, preferred_element_type=geom.acc)


def phase_input_grad(dy, w, geom: Geom, in_hw):
    """``dL/dx`` of a strided, undilated, ungrouped :func:`xla_conv` as ``sh*sw`` stride-1
    convolutions of ``dy``, one per output phase (the input rows and columns ``i`` with
    ``(i + pad) % stride == r`` take only the taps ``r, r + stride, ...``), interleaved.
    The transposed convolution XLA runs instead multiplies ``dy`` dilated with zeros:
    ``stride**2`` times the work for the same values."""
    kh, kw, cin, cout = w.shape
    (sh, sw), (ph, pw) = geom.stride, (geom.pads[0][0], geom.pads[1][0])
    n, ho, wo, _ = dy.shape
    qh, qw = -(-(in_hw[0] + ph) // sh), -(-(in_hw[1] + pw) // sw)
    w_t = jnp.swapaxes(w, 2, 3)                              # kh, kw, cout, cin
    dt = geom.acc or dy.dtype
    rows = []
    for rh in range(sh):
        cols = []
        for rw in range(sw):
            sub = jnp.flip(w_t[rh::sh, rw::sw], (0, 1))
            mh, mw = sub.shape[:2]
            if mh == 0 or mw == 0:   # a phase no tap reaches (stride > kernel)
                cols.append(jnp.zeros((n, qh, qw, cin), dt))
                continue
            cols.append(jax.lax.conv_general_dilated(
                dy, sub, (1, 1), [(mh - 1, qh - ho), (mw - 1, qw - wo)],
                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=geom.precision,
                preferred_element_type=geom.acc))
        rows.append(jnp.stack(cols, axis=3))                 # n, qh, qw, sw, cin
    full = jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, cin)
    return full[:, ph:ph + in_hw[0], pw:pw + in_hw[1], :]


def cols_input_grad(dy, w, geom: Geom, x_shape, out_hw):
    """``dL/dx`` of an ungrouped conv as one matrix product, ``dy @ W^T`` (the gradient of
    the patches), summed back onto the input (the transpose of :func:`im2col`). XLA:CPU's
    transposed conv runs a few output channels slowly: LeNet-5's conv2 (16 -> 6 channels, 5x5)
    takes 2.4x as long."""
    kh, kw, cin, cout = w.shape
    dcols = jnp.dot(dy.reshape(-1, cout), w.reshape(kh * kw * cin, cout).T,
                    precision=geom.precision, preferred_element_type=geom.acc)
    dcols = dcols.astype(dy.dtype).reshape(*dy.shape[:3], kh * kw, cin)
    def to_cols(x):
        return im2col(x, (kh, kw), geom.stride, geom.pads, geom.dilation, out_hw)
    # stored: fused into its consumers (the max pool's gradient), the kh*kw-term sum is
    # recomputed per use: LeNet-5's train step took 2x as long
    dx = jax.linear_transpose(to_cols, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dcols)[0]
    return stored(dx)


def taps_conv(x, w, geom: Geom, out_hw):
    """The convolution as ``kh*kw*Cin`` shifted multiply-adds per output channel, one fused
    elementwise pass per output plane, the planes stacked once (as one NHWC sum XLA would
    recompute it inside every consumer, the max-pool gradient included)."""
    kh, kw, cin, cout = w.shape
    dt = geom.acc or x.dtype
    xp = jax.lax.pad(x.astype(dt), jnp.zeros((), dt),
                     [(0, 0, 0), (*geom.pads[0], 0), (*geom.pads[1], 0), (0, 0, 0)])
    n, (ho, wo), (sh, sw) = x.shape[0], out_hw, geom.stride
    planes = [None] * cout
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * geom.dilation[0], j * geom.dilation[1]
            patch = jax.lax.slice(xp, (0, r0, c0, 0),
                                  (n, r0 + (ho - 1) * sh + 1, c0 + (wo - 1) * sw + 1, cin),
                                  (1, sh, sw, 1))
            for c in range(cin):
                tap = patch[..., c]
                for o in range(cout):
                    term = tap * w[i, j, c, o].astype(dt)
                    planes[o] = term if planes[o] is None else planes[o] + term
    return jnp.stack(planes, axis=-1)
