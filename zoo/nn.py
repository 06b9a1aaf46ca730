"""The functional core: every layer is a ``Layer(init, apply)`` pair over named pytrees.

    init(key, in_shape)                               -> (out_shape, params, state)
    apply(params, state, x, *, train=False, rng=None) -> (y, new_state)

Activations are NHWC, conv kernels HWIO, dense kernels (in, out). Parameters and state
are nested dicts keyed by the names given to :func:`Sequential`, :func:`Concat` and
:func:`Residual`; stateless layers have empty dicts, which the combinators omit.

Geometry follows the cs231n notes: a conv or pool produces ``(W - F + 2P)/S + 1`` outputs
along each spatial axis. When that is not an integer the layer raises, unless its
definition declares ``rounding="floor"`` or ``"ceil"`` (the rule of the published model).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import zlib
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import ops, winograd

Shape = tuple[int, ...]

ROUNDING_RULES = ("exact", "floor", "ceil")
CONV_IMPLS = ("xla", "im2col")


@dataclasses.dataclass(frozen=True)
class Layer:
    """A pure layer. ``kind``/``config``/``children`` describe it for tools that rewrite nets."""

    init: Callable
    apply: Callable
    kind: str = "layer"
    config: Mapping = dataclasses.field(default_factory=dict)
    children: tuple = ()


# ----------------------------------------------------------------------------------------
# Names, keys and the init-time recorder used by the summary.

_SCOPE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("zoo_scope", default=())
_RECORDER: contextvars.ContextVar = contextvars.ContextVar("zoo_recorder", default=None)


@contextlib.contextmanager
def scope(name: str):
    token = _SCOPE.set(_SCOPE.get() + (name,))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_path() -> str:
    return "/".join(_SCOPE.get()) or "<input>"


def name_key(key, name: str):
    """A key derived from a layer's name, so keys stay stable when other layers change."""
    return None if key is None else jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Recorder:
    """Collects one row per primitive layer during ``init`` (see :mod:`zoo.summary`).

    It also tracks the receptive field and cumulative stride (the "jump") of the
    activations flowing through the net: a k x k layer with dilation d and stride s maps
    ``rf -> rf + (d(k-1)) * jump`` and ``jump -> jump * s``. Parallel branches take the max.
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.rf, self.jump = 1, 1

    def add(self, kind, out_shape, *, params=0, macs=0, activations=0, kernel=1, stride=1,
            dilation=1):
        self.rf += dilation * (kernel - 1) * self.jump
        self.jump *= stride
        self.rows.append(dict(name=current_path(), kind=kind, output_shape=tuple(out_shape),
                              params=int(params), activations=int(activations), macs=int(macs),
                              receptive_field=self.rf, stride=self.jump))


@contextlib.contextmanager
def recording():
    recorder = Recorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def is_recording() -> bool:
    """Whether a :func:`recording` block is open (layer rows are collected at trace time)."""
    return _RECORDER.get() is not None


@contextlib.contextmanager
def side_branch():
    """Initialise a side output (an auxiliary head) without moving the summary's receptive
    field and stride off the main path."""
    recorder = _RECORDER.get()
    saved = (recorder.rf, recorder.jump) if recorder is not None else None
    try:
        yield
    finally:
        if recorder is not None:
            recorder.rf, recorder.jump = saved


def _record(kind, out_shape, **info):
    recorder = _RECORDER.get()
    if recorder is not None:
        recorder.add(kind, out_shape, **info)


def _volume(shape) -> int:
    return int(np.prod(shape[1:]))


# ----------------------------------------------------------------------------------------
# Geometry.

def output_size(size: int, window: int, stride: int, padding: int, dilation: int = 1,
                rounding: str = "exact", what: str = "") -> int:
    """``(W - F + 2P)/S + 1`` with the declared rounding rule; errors name the layer.

    ``ceil`` follows Caffe/PyTorch: a last window that would start in the right padding is
    dropped.
    """
    if rounding not in ROUNDING_RULES:
        raise ValueError(f"{current_path()}: rounding must be one of {ROUNDING_RULES}, got {rounding!r}")
    span = dilation * (window - 1) + 1
    where = f"layer '{current_path()}'" + (f" ({what})" if what else "")
    if size + 2 * padding < span:
        raise ValueError(
            f"input too small at {where}: W={size} with padding P={padding} is smaller than the "
            f"window F={span}; use a larger input image")
    exact = (size - span + 2 * padding) / stride + 1
    if rounding == "exact":
        if exact != int(exact):
            raise ValueError(
                f"{where} does not fit: (W - F + 2P)/S + 1 = ({size} - {span} + 2*{padding})/{stride}"
                f" + 1 = {exact:g} is not an integer (W={size}, F={span}, P={padding}, S={stride}); "
                f"change the input size or declare rounding='floor' or 'ceil'")
        return int(exact)
    if rounding == "floor":
        return (size - span + 2 * padding) // stride + 1
    out = -(-(size - span + 2 * padding) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _spatial_out(in_shape, window, stride, padding, dilation, rounding, what):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (window, stride, padding, dilation))
    if len(in_shape) != 4:
        raise ValueError(f"layer '{current_path()}' expects NHWC input, got shape {tuple(in_shape)}")
    ho = output_size(in_shape[1], kh, sh, ph, dh, rounding, what + ", height")
    wo = output_size(in_shape[2], kw, sw, pw, dw, rounding, what + ", width")
    return ho, wo


def _right_padding(size, out, window, stride, padding, dilation):
    """Right padding that makes exactly ``out`` windows fit: ``P`` under the exact rule, less
    (possibly negative: a crop) under floor, more under ceil."""
    span = dilation * (window - 1) + 1
    return (out - 1) * stride + span - size - padding


# ----------------------------------------------------------------------------------------
# Convolution: the one function every conv goes through.

_DEFAULT_CONV_IMPL: contextvars.ContextVar = contextvars.ContextVar("zoo_conv_impl", default="auto")
#: True while the body of a scanned run of layers (``Sequential(scan_repeats=...)``) is traced.
_IN_SCAN: contextvars.ContextVar[bool] = contextvars.ContextVar("zoo_in_scan", default=False)

#: The levers of the ``'auto'`` policy (measured by ``scripts/benchmark.py --levers``;
#: see docs/benchmarks.md). :func:`conv_levers` overrides them inside a block.
#:
#: - ``small_map``: output maps of at most this many pixels run as im2col + one matmul
#:   (XLA:CPU's convolution is 20-40x slower than a matmul there); 0 switches it off.
#: - ``pointwise``: 1x1 convolutions (any stride) as a strided slice + one matmul.
#: - ``single_channel``: convolutions of one input channel (LeNet's first) as ``'taps'``:
#:   ``kh*kw`` shifted multiply-adds per output plane (XLA:CPU's convolution with one input
#:   channel runs at ~4 GFLOP/s).
#: - ``input_grad``: ``'conv'``: in ``'xla+mmgrad'`` and ``'taps'``, the input gradient as
#:   one explicit forward convolution of ``dy`` with the flipped kernel, not the transposed
#:   convolution autodiff emits (1.1x at 56x56x64; inside a ``lax.scan`` 5x, so there it is
#:   always on); ``'autodiff'`` off. Plain ``'xla'`` convs keep autodiff's (LeNet-5's
#:   conv2: 3% slower step with the explicit one).
#: - ``weight_grad``: ``'matmul'`` keeps XLA's forward and input-gradient convolutions but
#:   computes the weight gradient as ``im2col(x)^T @ dy``, a few images at a time;
#:   ``'xla'`` (the default) leaves it to XLA's weight-gradient convolution. The matmul form
#:   was 1.8x under YNNPACK's graph fusion; with that fusion off (``zoo.xla``) XLA's own is
#:   faster outside loops: ResNet-18 train step at 224 0.91-0.95x the time (three
#:   interleaved runs), the 3x3 convs at 56x56x64 to 7x7x512 alone 0.73-0.86x; building
#:   the im2col buffer (a pad, nine slices and a concatenate, each materialized) costs
#:   more than the transposes XLA adds. Inside a scanned run the matmul form is always
#:   used (XLA's weight-gradient convolution runs about 70x slower in a loop body).
#:   Where it applies by shape: the patch is long enough (``kh*kw*Cin >= mmgrad_min_k``),
#:   ``Cout >= 32`` and the output map has ``>= mmgrad_min_map`` pixels.
#: - ``chunk_bytes``: the im2col buffer per step of that weight gradient.
#: - ``store_input``: the remaining convs (``'xla'`` by shape) run as ``'xla+stored'``:
#:   XLA's convolution and gradients, but the input the weight gradient reads is kept as
#:   one stored buffer (:func:`zoo.ops.stored`) instead of being recomputed from its
#:   BatchNorm/ReLU/add producers inside XLA's transposing fusion (ResNet-18 train step at
#:   224: 0.87-0.90x the time). Inference is unchanged (the custom VJP's primal is XLA's conv).
#: - ``winograd``: float32, ungrouped 3x3 stride-1 convolutions run their forward and input
#:   gradient as Winograd's F(2x2, 3x3) (:mod:`zoo.winograd`; the weight gradient as in
#:   ``'xla+stored'``) on output maps of at
#:   least ``winograd_min_map`` pixels, where a ``(max map pixels, min input and output
#:   channels)`` pair admits them. Its transforms move 4x the input and output through
#:   memory for 2.25x fewer multiply-adds, so it pays with many channels: alone, batch 8,
#:   0.45-0.53x XLA's time at 28x28x128 and 14x14x256, 0.69-0.79x at 14x14x32-64 and
#:   28x28x64, 0.75x at 56x56x256 (0.77x at 96x96x256, batch 1), but 1.27x at 56x56x64,
#:   1.05x at 56x56x128, 1.1x at 28x28x16 and 1.1-1.2x on 7x7 maps (a 7x7 map is 4x4
#:   tiles of 8x8). ``()`` switches it off. Its 16 matrix products have one row per tile
#:   of the batch, ``N * ceil(Ho/2) * ceil(Wo/2)``, and below ``winograd_min_tiles`` rows
#:   they are too short: VGG16 on one 224 image takes 0.91x the time with its 14x14x512
#:   layers (49 rows) on XLA, and 14x14x256 alone takes 1.23x XLA's time at batch 2 (98
#:   rows), 0.80x at batch 4 and 0.71x at batch 8. At 144 rows (24x24x512, batch 1) it is
#:   slower alone (1.26x) yet faster in the model: the fully-convolutional VGG16 at 384
#:   takes 1.03-1.05x the time with those layers on XLA.
#: - ``low_precision``: for bfloat16/float16 inputs, ``'f32acc'`` accumulates in float32
#:   (``preferred_element_type``) and rounds the output once; ``'native'`` leaves it to XLA.
#: - ``cpu_only``: apply the levers on the CPU only; accelerators get XLA's convolution.
CONV_LEVERS = dict(small_map=16, pointwise=True, single_channel=True, input_grad="conv",
                   weight_grad="xla",
                   mmgrad_min_k=256, mmgrad_min_map=144, chunk_bytes=16 << 20,
                   store_input=True, winograd=((784, 32), (9216, 256)), winograd_min_map=100,
                   winograd_min_tiles=128,
                   low_precision="f32acc", cpu_only=True)
_CONV_LEVERS: contextvars.ContextVar = contextvars.ContextVar("zoo_conv_levers", default=None)


@contextlib.contextmanager
def conv_levers(**overrides):
    """Override :data:`CONV_LEVERS` for every conv traced inside the block (benchmarks
    switch levers off one at a time to measure what each gives)."""
    unknown = set(overrides) - set(CONV_LEVERS)
    if unknown:
        raise ValueError(f"unknown conv levers {sorted(unknown)}; known: {sorted(CONV_LEVERS)}")
    token = _CONV_LEVERS.set({**current_conv_levers(), **overrides})
    try:
        yield
    finally:
        _CONV_LEVERS.reset(token)


def current_conv_levers() -> dict:
    return {**CONV_LEVERS, **(_CONV_LEVERS.get() or {})}


_CONV_CHOICES: contextvars.ContextVar = contextvars.ContextVar("zoo_conv_choices", default=None)


@contextlib.contextmanager
def recording_conv_choices():
    """Collect ``(layer path, implementation, input shape, kernel shape)`` for every conv
    traced inside the block (what :func:`conv_policy` chose, layer by layer)."""
    rows: list = []
    token = _CONV_CHOICES.set(rows)
    try:
        yield rows
    finally:
        _CONV_CHOICES.reset(token)


def conv_policy(x_shape, w_shape, stride, dilation, groups, out_hw, dtype=jnp.float32) -> str:
    """The implementation chosen for ``impl='auto'``, by shape (a cheap rule measured on the
    2-core CPU of PERF-NOTES; the measurements are in docs/benchmarks.md):

    - ``'im2col'`` for output maps of <= ``small_map`` pixels (3x3 on 2x2 maps: 22-28 ms in
      XLA, 0.64 ms as im2col + matmul) and for 1x1 convolutions (a reshape + one matmul);
    - ``'xla+mmgrad'`` inside a scanned run of layers (:func:`Sequential`'s
      ``scan_repeats``), whatever the shape: XLA's convolution forward, the input gradient
      as one convolution, the weight gradient as ``im2col(x)^T @ dy`` (in a loop body
      XLA:CPU runs its weight-gradient convolution about 70x slower than outside one);
      outside loops only under ``weight_grad='matmul'``, for ungrouped convolutions with
      long patches (``kh*kw*Cin >= 256``, ``Cout >= 32``) on maps of >= 144 pixels;
    - ``'taps'`` for one input channel: shifted multiply-adds forward, XLA's weight-gradient
      convolution (LeNet-5 train step: 1.3x);
    - ``'winograd'`` for float32 3x3 stride-1 convolutions with enough channels for their
      map and enough 2x2 tiles in the batch (the ``winograd`` levers): the forward and the
      input gradient as Winograd's
      F(2x2, 3x3) (:mod:`zoo.winograd`, 2.25x fewer multiply-adds), XLA's weight gradient
      of the stored input;
    - ``'xla+stored'`` otherwise (``store_input``): XLA's convolution and gradients, the
      input kept as a stored buffer for the weight gradient;
    - ``'xla'`` with ``store_input`` off, and for every conv on accelerators (cuDNN & co.
      are good).

    Every choice gives XLA's values and gradients within float tolerance.
    """
    levers = current_conv_levers()
    if levers["cpu_only"] and jax.default_backend() != "cpu":
        return "xla"
    kh, kw = w_shape[:2]
    if out_hw[0] * out_hw[1] <= levers["small_map"]:
        return "im2col"
    if levers["pointwise"] and kh == kw == 1 and groups == 1:
        return "im2col"
    if groups == 1 and (_IN_SCAN.get() or (
            levers["weight_grad"] == "matmul" and kh * kw * x_shape[3] >= levers["mmgrad_min_k"]
            and w_shape[3] >= 32 and out_hw[0] * out_hw[1] >= levers["mmgrad_min_map"])):
        return "xla+mmgrad"
    if levers["single_channel"] and x_shape[3] == 1 and groups == 1:
        return "taps"
    if _winograd_fits(levers, x_shape, w_shape, stride, dilation, groups, out_hw, dtype):
        return "winograd"
    return "xla+stored" if levers["store_input"] else "xla"


def _winograd_shape(w_shape, stride, dilation, groups) -> bool:
    """Whether F(2x2, 3x3) computes this convolution: 3x3, stride 1, undilated, ungrouped."""
    return (tuple(w_shape[:2]) == (3, 3) and tuple(stride) == tuple(dilation) == (1, 1)
            and groups == 1)


def _winograd_fits(levers, x_shape, w_shape, stride, dilation, groups, out_hw, dtype) -> bool:
    if not (_winograd_shape(w_shape, stride, dilation, groups) and jnp.dtype(dtype) == jnp.float32):
        return False
    pixels, channels = out_hw[0] * out_hw[1], min(x_shape[3], w_shape[3])
    tiles = x_shape[0] * math.prod(winograd.tile_grid(out_hw))  # rows of its 16 products
    return pixels >= levers["winograd_min_map"] and tiles >= levers["winograd_min_tiles"] and any(
        pixels <= max_map and channels >= min_channels
        for max_map, min_channels in levers["winograd"])


@contextlib.contextmanager
def conv_impl(impl: str):
    """Force every ``impl=None`` conv traced inside the block to ``'xla'``, ``'im2col'`` or ``'auto'``."""
    if impl not in CONV_IMPLS + ("auto",):
        raise ValueError(f"conv impl must be one of {CONV_IMPLS + ('auto',)}, got {impl!r}")
    token = _DEFAULT_CONV_IMPL.set(impl)
    try:
        yield
    finally:
        _DEFAULT_CONV_IMPL.reset(token)


def _padding_pairs(x_shape, w_shape, stride, padding, dilation, out_hw):
    pads = []
    for axis in range(2):
        size, k = x_shape[1 + axis], w_shape[axis]
        extra = _right_padding(size, out_hw[axis], k, stride[axis], padding[axis], dilation[axis])
        pads.append((padding[axis], extra))
    return pads


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


def _accumulation(dtype, levers):
    """``preferred_element_type`` for a conv/matmul on ``dtype`` inputs: float32 for
    bfloat16/float16 under the ``f32acc`` lever (725 vs 285 GFLOP/s for bf16 out on the
    notes' CPU), else None (XLA's default)."""
    low = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if levers["cpu_only"] and jax.default_backend() != "cpu":
        return None  # GPU/TPU kernels accumulate in float32 already
    return jnp.float32 if low and levers["low_precision"] == "f32acc" else None


def _xla_conv(x, w, geom):
    stride, pads, dilation, groups, precision, acc = geom
    return jax.lax.conv_general_dilated(
        x, w, window_strides=stride, padding=pads, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=precision, preferred_element_type=acc)


def _im2col_conv(x, w, kernel_hw, stride, pads, dilation, out_hw, groups, precision, acc):
    (kh, kw), cin_g, cout = kernel_hw, w.shape[2], w.shape[3]
    cols = im2col(x, (kh, kw), stride, pads, dilation, out_hw)  # N, Ho, Wo, K, C
    n, ho, wo = cols.shape[:3]
    if groups == 1:
        return jnp.dot(cols.reshape(n * ho * wo, kh * kw * cin_g), w.reshape(kh * kw * cin_g, cout),
                       precision=precision, preferred_element_type=acc).reshape(n, ho, wo, cout)
    cols = cols.reshape(n * ho * wo, kh * kw, groups, cin_g)
    wg = w.reshape(kh * kw, cin_g, groups, cout // groups)
    y = jnp.einsum("mkgc,kcgo->mgo", cols, wg, precision=precision, preferred_element_type=acc)
    return y.reshape(n, ho, wo, cout)


def _chunk(n, per_image_bytes, budget):
    """The largest divisor of the batch ``n`` whose im2col buffer fits ``budget``."""
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * per_image_bytes <= budget:
            best = c
    return best


def _weight_grad_matmul(x, dy, w_shape, geom, out_hw, chunk_bytes):
    """``dW = im2col(x)^T @ dy`` over the batch, ``chunk`` images per step of a ``lax.scan``
    (the buffer stays in cache; a scan of matmuls, unlike one of XLA convolutions, runs at
    full speed), accumulated in float32."""
    stride, pads, dilation, groups, precision, acc = geom
    kh, kw, cin, cout = w_shape
    n = x.shape[0]
    rows = out_hw[0] * out_hw[1]
    chunk = _chunk(n, rows * kh * kw * cin * x.dtype.itemsize, chunk_bytes)

    def part(xc, gc):
        cols = im2col(xc, (kh, kw), stride, pads, dilation, out_hw).reshape(-1, kh * kw * cin)
        return jax.lax.dot_general(cols, gc.reshape(-1, cout), (((0,), (0,)), ((), ())),
                                   precision=precision, preferred_element_type=jnp.float32)

    if chunk == n:
        total = part(x, dy)
    else:
        xs = x.reshape(n // chunk, chunk, *x.shape[1:])
        gs = dy.reshape(n // chunk, chunk, *dy.shape[1:])
        total, _ = jax.lax.scan(lambda a, xg: (a + part(*xg), None),
                                jnp.zeros((kh * kw * cin, cout), jnp.float32), (xs, gs))
    return total.reshape(w_shape)


def _conv_input_grad(dy, w, geom, in_hw, by_winograd=False):
    """``dL/dx`` of :func:`_xla_conv` as one forward convolution of ``dy`` (dilated by the
    stride) with the flipped kernel, inputs and outputs swapped per group. The same values
    as autodiff's transposed convolution, but a plain convolution to XLA: inside a
    ``lax.scan`` XLA:CPU runs autodiff's form 5x slower than this one (docs/benchmarks.md).
    ``by_winograd``: that convolution as F(2x2, 3x3) where it is one (3x3, stride 1)."""
    stride, pads, dilation, groups, precision, acc = geom
    kh, kw, cin_g, cout = w.shape
    w_t = jnp.flip(w, (0, 1)).reshape(kh, kw, cin_g, groups, cout // groups)
    w_t = w_t.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups, groups * cin_g)
    padding = []
    for axis in range(2):
        k_eff = dilation[axis] * (w.shape[axis] - 1) + 1
        lo = pads[axis][0]
        out = dy.shape[1 + axis]
        padding.append((k_eff - 1 - lo, in_hw[axis] - (out - 1) * stride[axis] - 1 + lo))
    if (by_winograd and _winograd_shape(w.shape, stride, dilation, groups)
            and padding[0][0] >= 0 and padding[1][0] >= 0):
        return winograd.conv3x3(dy, w_t, padding, in_hw, precision, acc)
    return jax.lax.conv_general_dilated(
        dy, w_t, window_strides=(1, 1), padding=padding, lhs_dilation=stride,
        rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=precision, preferred_element_type=acc)


def _taps(x, w_shape, geom, out_hw):
    """``(i, j, c, shifted input channel c)`` for every kernel tap: the strided slices of the
    padded input that multiply ``w[i, j, c]``."""
    stride, pads, dilation, groups, precision, acc = geom
    kh, kw, cin, _ = w_shape
    dt = acc or x.dtype
    xp = jax.lax.pad(x.astype(dt), jnp.zeros((), dt),
                     [(0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
    n, (ho, wo) = x.shape[0], out_hw
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = jax.lax.slice(xp, (0, r0, c0, 0),
                                  (n, r0 + (ho - 1) * stride[0] + 1, c0 + (wo - 1) * stride[1] + 1, cin),
                                  (1, stride[0], stride[1], 1))
            for c in range(cin):
                yield i, j, c, patch[..., c:c + 1]


def _taps_conv(x, w, geom, out_hw):
    """The convolution as ``kh*kw*Cin`` shifted multiply-adds per output channel, one fused
    elementwise pass per channel plane, stacked: for one input channel (LeNet's first conv
    at batch 128: 1.1 ms instead of XLA's 7 ms). Planes and a stack, not one NHWC sum:
    XLA:CPU fuses a cheap elementwise producer into every consumer, and LeNet's max-pool
    gradient then recomputed the whole sum (24 ms); the stack is materialized once."""
    dt = geom[-1] or x.dtype
    planes = [None] * w.shape[3]
    for i, j, c, tap in _taps(x, w.shape, geom, out_hw):
        for o in range(w.shape[3]):
            term = tap[..., 0] * w[i, j, c, o].astype(dt)
            planes[o] = term if planes[o] is None else planes[o] + term
    return jnp.stack(planes, axis=-1)


class _CustomConv(NamedTuple):
    """The static part of :func:`_conv_custom`."""
    geom: tuple
    out_hw: tuple
    forward: str       # 'xla', 'taps' or 'winograd'
    input_grad: str    # 'conv' (one explicit forward conv), 'winograd' (it as F(2x2, 3x3)), 'autodiff'
    weight_grad: str   # 'matmul' or 'xla'
    chunk_bytes: int   # the im2col buffer per step of the matmul weight gradient
    store_input: bool  # keep the input as a stored buffer for the backward (ops.stored)


def _conv_custom_primal(x, w, meta):
    if meta.forward == "taps":
        return _taps_conv(x, w, meta.geom, meta.out_hw)
    if meta.forward == "winograd":
        stride, pads, dilation, groups, precision, acc = meta.geom
        return winograd.conv3x3(x, w, pads, meta.out_hw, precision, acc)
    return _xla_conv(x, w, meta.geom)


def _conv_custom_fwd(x, w, meta):
    if meta.store_input:
        x = ops.stored(x)
    return _conv_custom_primal(x, w, meta), (x, w)


def _conv_custom_bwd(meta, res, dy):
    geom = meta.geom
    x, w = res
    if meta.input_grad in ("conv", "winograd"):
        dx = _conv_input_grad(dy.astype(x.dtype), w, geom, x.shape[1:3],
                              by_winograd=meta.input_grad == "winograd")
    else:
        dx = jax.vjp(lambda x_: _xla_conv(x_, w, geom), x)[1](dy)[0]
    if meta.weight_grad == "matmul":
        dw = _weight_grad_matmul(x, dy.astype(x.dtype), w.shape, geom, meta.out_hw, meta.chunk_bytes)
    else:
        dw = jax.vjp(lambda w_: _xla_conv(x, w_, geom), w)[1](dy)[0]
    return dx.astype(x.dtype), dw.astype(w.dtype)


#: A convolution whose forward, input gradient and weight gradient are chosen separately,
#: its input optionally stored for the backward (:class:`_CustomConv`).
_conv_custom = jax.custom_vjp(_conv_custom_primal, nondiff_argnums=(2,))
_conv_custom.defvjp(_conv_custom_fwd, _conv_custom_bwd)

class CustomConvRecipe(NamedTuple):
    """What one of :data:`CUSTOM_CONVS` fixes of :class:`_CustomConv`; ``None`` leaves the
    input gradient to the ``input_grad`` lever, the stored input to ``store_input``."""
    forward: str
    input_grad: str | None
    weight_grad: str
    store_input: bool | None


#: The implementations :func:`conv_policy` picks from besides ``'xla'`` and ``'im2col'``.
CUSTOM_CONVS = {"xla+mmgrad": CustomConvRecipe("xla", None, "matmul", False),
                "taps": CustomConvRecipe("taps", None, "xla", False),
                "xla+stored": CustomConvRecipe("xla", "autodiff", "xla", True),
                "winograd": CustomConvRecipe("winograd", "winograd", "xla", None)}


def conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1, rounding="exact", impl=None,
           precision=None):
    """2-D convolution, NHWC x HWIO -> NHWC, symmetric zero padding ``P`` per side.

    ``impl``: ``'xla'`` (``lax.conv_general_dilated``), ``'im2col'`` (patches, then one
    matrix product per group: the notes' "implementation as matrix multiplication"),
    ``'auto'`` or ``None`` (the :func:`conv_impl` setting, default ``'auto'``, which asks
    :func:`conv_policy` per layer, by shape, when traced; eager calls get ``'xla'``). All
    give the same values and gradients within float tolerance. The result has ``x``'s
    dtype; bfloat16/float16 inputs accumulate in float32 (see :data:`CONV_LEVERS`).
    """
    stride, padding, dilation = map(_pair, (stride, padding, dilation))
    kh, kw, cin_g, cout = w.shape
    if x.shape[3] != cin_g * groups:
        raise ValueError(f"layer '{current_path()}': input has {x.shape[3]} channels, the kernel "
                         f"{tuple(w.shape)} with groups={groups} expects {cin_g * groups}")
    out_hw = _spatial_out(x.shape, (kh, kw), stride, padding, dilation, rounding, "conv")
    impl = impl or _DEFAULT_CONV_IMPL.get()
    if impl == "auto" and not isinstance(x, jax.core.Tracer):
        impl = "xla"  # eager: one dispatch (and one compile) instead of kh*kw slices and a dot
    elif impl == "auto":
        impl = conv_policy(x.shape, w.shape, stride, dilation, groups, out_hw, x.dtype)
    elif impl not in CONV_IMPLS + tuple(CUSTOM_CONVS):
        raise ValueError(f"conv impl must be one of {CONV_IMPLS + ('auto',)}, got {impl!r}")
    if impl == "taps" and groups != 1:
        raise ValueError(f"layer '{current_path()}': conv impl 'taps' takes ungrouped convs only")
    if impl == "winograd" and not _winograd_shape(w.shape, stride, dilation, groups):
        raise ValueError(f"layer '{current_path()}': conv impl 'winograd' takes 3x3, stride-1, "
                         f"undilated, ungrouped convs only; got kernel {tuple(w.shape)}, "
                         f"stride {stride}, dilation {dilation}, groups {groups}")
    choices = _CONV_CHOICES.get()
    if choices is not None:
        choices.append((current_path(), impl, tuple(x.shape), tuple(w.shape)))
    pads = _padding_pairs(x.shape, w.shape, stride, padding, dilation, out_hw)
    levers = current_conv_levers()
    w = w.astype(x.dtype)
    acc = _accumulation(x.dtype, levers)
    geom = (stride, tuple(map(tuple, pads)), dilation, groups, precision, acc)
    if impl == "xla":
        y = _xla_conv(x, w, geom)
    elif impl in CUSTOM_CONVS:
        forward, input_grad, weight_grad, store = CUSTOM_CONVS[impl]
        if input_grad is None:
            input_grad = "conv" if levers["input_grad"] == "conv" or _IN_SCAN.get() else "autodiff"
        if store is None:
            store = bool(levers["store_input"])
        y = _conv_custom(x, w, _CustomConv(geom, tuple(out_hw), forward, input_grad, weight_grad,
                                           int(levers["chunk_bytes"]), store))
    else:
        y = _im2col_conv(x, w, (kh, kw), stride, pads, dilation, out_hw, groups, precision, acc)
    return y.astype(x.dtype)


# ----------------------------------------------------------------------------------------
# Primitive layers.

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
    if n <= _NORMAL_BLOCK:
        blocks = [_normal_block(key, _draw_length(n))]
    else:
        blocks = [_normal_block(jax.random.fold_in(key, i), _NORMAL_BLOCK)
                  for i in range(-(-n // _NORMAL_BLOCK))]
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


def Conv(features: int, kernel, *, stride=1, padding=0, dilation=1, groups=1, bias=True,
         rounding="exact", impl=None, mask=None) -> Layer:
    """Convolution, kernel HWIO. ``mask`` (optional ``(Cin, Cout)`` 0/1 table, as LeNet-5's
    C3) stores only the connected kernel slices: params ``kernel`` is ``(kh, kw, n_connections)``."""
    kh, kw = _pair(kernel)
    cfg = dict(features=features, kernel=(kh, kw), stride=_pair(stride), padding=_pair(padding),
               dilation=_pair(dilation), groups=groups, bias=bias, rounding=rounding, impl=impl)
    table = None if mask is None else np.asarray(mask, dtype=bool)

    def dense_kernel(params, cin):
        if table is None:
            return params["kernel"]
        full = jnp.zeros((kh, kw, cin * features), params["kernel"].dtype)
        full = full.at[:, :, np.flatnonzero(table.reshape(-1))].set(params["kernel"])
        return full.reshape(kh, kw, cin, features)

    def init(key, in_shape):
        cin = in_shape[3]
        if cin % groups or features % groups:
            raise ValueError(f"layer '{current_path()}': channels in={cin}, out={features} are not "
                             f"divisible by groups={groups}")
        ho, wo = _spatial_out(in_shape, (kh, kw), stride, padding, dilation, rounding, "conv")
        fan_in = kh * kw * cin // groups
        if table is None:
            kernel_shape = (kh, kw, cin // groups, features)
            connections = cin // groups * features
        else:
            if table.shape != (cin, features):
                raise ValueError(f"layer '{current_path()}': connection table is {table.shape}, "
                                 f"expected (in, out) = {(cin, features)}")
            connections = int(table.sum())
            kernel_shape = (kh, kw, connections)
            fan_in = kh * kw * int(table.sum(0).max())
        params = {"kernel": he_normal(name_key(key, "kernel"), kernel_shape, fan_in)}
        if bias:
            params["bias"] = filled((features,), 0.0)
        out_shape = (in_shape[0], ho, wo, features)
        _record("conv", out_shape, params=kh * kw * connections + (features if bias else 0),
                macs=ho * wo * kh * kw * connections, activations=_volume(out_shape),
                kernel=kh, stride=cfg["stride"][0], dilation=cfg["dilation"][0])
        return out_shape, params, {}

    def apply(params, state, x, *, train=False, rng=None):
        w = dense_kernel(params, x.shape[3])
        y = conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   rounding=rounding, impl=impl)
        if bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "conv", cfg)


def Dense(features: int, *, bias=True) -> Layer:
    """Fully-connected layer, kernel ``(in, out)``, on the last axis."""

    def init(key, in_shape):
        fan_in = in_shape[-1]
        params = {"kernel": scaled_normal(name_key(key, "kernel"), (fan_in, features),
                                          math.sqrt(1.0 / fan_in))}
        if bias:
            params["bias"] = filled((features,), 0.0)
        out_shape = (*in_shape[:-1], features)
        _record("dense", out_shape, params=fan_in * features + (features if bias else 0),
                macs=fan_in * features, activations=_volume(out_shape))
        return out_shape, params, {}

    def apply(params, state, x, *, train=False, rng=None):
        w = params["kernel"]
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"layer '{current_path()}': expects {w.shape[0]} input features, got "
                             f"input of shape {tuple(x.shape)}; was the model initialised for "
                             f"another input size?")
        y = jnp.dot(x, w.astype(x.dtype))
        if bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "dense", dict(features=features, bias=bias))


def _pool(kind, window, stride, padding, rounding, reducer):
    kh, kw = _pair(window)
    stride = _pair(stride if stride is not None else window)
    padding = _pair(padding)
    cfg = dict(window=(kh, kw), stride=stride, padding=padding, rounding=rounding)

    def geometry(shape):
        out_hw = _spatial_out(shape, (kh, kw), stride, padding, 1, rounding, kind)
        return out_hw, _padding_pairs(shape, (kh, kw), stride, padding, (1, 1), out_hw)

    def init(key, in_shape):
        (ho, wo), _ = geometry(in_shape)
        out_shape = (in_shape[0], ho, wo, in_shape[3])
        _record(kind, out_shape, activations=_volume(out_shape), kernel=kh, stride=stride[0])
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        _, ((ph, eh), (pw, ew)) = geometry(x.shape)
        # Under the floor rule the last rows/columns may never be reached: crop them.
        x = x[:, : x.shape[1] + min(eh, 0), : x.shape[2] + min(ew, 0)]
        pads = [(0, 0), (ph, max(eh, 0)), (pw, max(ew, 0)), (0, 0)]
        return reducer(x, (1, kh, kw, 1), (1, *stride, 1), pads), state

    return Layer(init, apply, kind, cfg)


def MaxPool(window, stride=None, padding=0, rounding="exact") -> Layer:
    """Max pooling; padding and the ceil rule's extra border are -inf (never selected).
    The gradient goes to the first maximum of each window (:func:`zoo.ops.max_pool`)."""

    def reduce_max(x, dims, strides, pads):
        return ops.max_pool(x, dims[1:3], strides[1:3], pads[1:3])

    return _pool("maxpool", window, stride, padding, rounding, reduce_max)


def AvgPool(window, stride=None, padding=0, rounding="exact") -> Layer:
    """Average pooling. Cells of the zero padding ``P`` count in the divisor (PyTorch's
    ``count_include_pad=True``); the ceil rule's extra border beyond ``P`` does not."""
    p = _pair(padding)

    def reduce_mean(x, dims, strides, pads):
        zero = np.array(0, x.dtype)  # a constant: a traced init value is not differentiable
        total = jax.lax.reduce_window(x, zero, jax.lax.add, dims, strides, pads)
        (_, (lo_h, hi_h), (lo_w, hi_w), _) = pads
        in_h, in_w = min(hi_h, p[0]), min(hi_w, p[1])
        ones = jnp.ones((1, x.shape[1] + lo_h + in_h, x.shape[2] + lo_w + in_w, 1), x.dtype)
        count = jax.lax.reduce_window(ones, zero, jax.lax.add, dims, strides,
                                      [(0, 0), (0, hi_h - in_h), (0, hi_w - in_w), (0, 0)])
        return total / count

    return _pool("avgpool", window, stride, padding, rounding, reduce_mean)


def _adaptive_bins(size, out):
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def AdaptiveAvgPool(output_size) -> Layer:
    """PyTorch's adaptive average pool: output cell i averages rows
    ``floor(i*H/out) .. ceil((i+1)*H/out)`` (bins may overlap)."""
    oh, ow = _pair(output_size)

    def init(key, in_shape):
        out_shape = (in_shape[0], oh, ow, in_shape[3])
        _record("avgpool", out_shape, activations=_volume(out_shape),
                kernel=-(-in_shape[1] // oh), stride=max(in_shape[1] // oh, 1))
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in _adaptive_bins(x.shape[1], oh)]
        x = jnp.concatenate(rows, axis=1)
        cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in _adaptive_bins(x.shape[2], ow)]
        return jnp.concatenate(cols, axis=2), state

    return Layer(init, apply, "adaptive_avgpool", dict(output_size=(oh, ow)))


def GlobalAvgPool() -> Layer:
    """Mean over the spatial axes: (N, H, W, C) -> (N, C)."""

    def init(key, in_shape):
        out_shape = (in_shape[0], in_shape[3])
        _record("global_avgpool", out_shape, activations=_volume(out_shape), kernel=in_shape[1])
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        return jnp.mean(x, axis=(1, 2)), state

    return Layer(init, apply, "global_avgpool")


def Flatten() -> Layer:
    """(N, H, W, C) -> (N, H*W*C) in NHWC order (importers permute torch's CHW order once)."""

    def init(key, in_shape):
        if len(in_shape) == 4:
            # Seen as a conv over the whole map (FC -> CONV): the map's size, stride 1.
            _record("flatten", (in_shape[0], _volume(in_shape)), kernel=in_shape[1])
        return (in_shape[0], _volume(in_shape)), {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, "flatten")


def LRN(size=5, alpha=1e-4, beta=0.75, k=2.0) -> Layer:
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3):
    ``b = a / (k + alpha * sum_{|j-i|<=size//2} a_j^2) ** beta``. Note PyTorch and Caffe
    divide ``alpha`` by ``size``; pass ``alpha/size`` to reproduce them."""

    def init(key, in_shape):
        _record("lrn", in_shape)
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        sq = jnp.square(x.astype(jnp.float32))
        half = size // 2
        summed = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                       [(0, 0), (0, 0), (0, 0), (half, size - 1 - half)])
        return (x / jnp.power(k + alpha * summed, beta).astype(x.dtype)), state

    return Layer(init, apply, "lrn", dict(size=size, alpha=alpha, beta=beta, k=k))


def BatchNorm(*, eps=1e-5, momentum=0.1) -> Layer:
    """Batch normalization (Ioffe & Szegedy 2015) over N, H, W, with PyTorch's semantics:
    train normalises with the biased batch variance and updates the running statistics
    ``r <- (1 - momentum) r + momentum * batch`` with the unbiased one; eval uses the
    running statistics. Statistics are computed in float32 whatever the input dtype; the
    training path is :func:`zoo.ops.batch_norm_train` (sums as dots, an analytic backward)."""

    def init(key, in_shape):
        c = in_shape[-1]
        _record("batchnorm", in_shape, params=2 * c)
        params = {"scale": filled((c,), 1.0), "bias": filled((c,), 0.0)}
        state = {"mean": filled((c,), 0.0), "var": filled((c,), 1.0)}
        return in_shape, params, state

    def apply(params, state, x, *, train=False, rng=None):
        if train:
            y, mean, var = ops.batch_norm_train(x.astype(jnp.float32), params["scale"],
                                                params["bias"], eps)
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            new_state = {"mean": (1 - momentum) * state["mean"] + momentum * mean,
                         "var": (1 - momentum) * state["var"] + momentum * unbiased}
            return y.astype(x.dtype), new_state
        mean, var, new_state = state["mean"], state["var"], state
        scale = params["scale"] * jax.lax.rsqrt(var + eps)
        shift = params["bias"] - mean * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype), new_state

    return Layer(init, apply, "batchnorm", dict(eps=eps, momentum=momentum))


def Dropout(rate: float) -> Layer:
    """Inverted dropout (Srivastava et al. 2014); ``train=True`` needs an explicit ``rng``."""

    def init(key, in_shape):
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        if not train or rate == 0.0:
            return x, state
        if rng is None:
            raise ValueError(f"layer '{current_path()}': dropout in train mode needs an explicit rng")
        keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), state

    return Layer(init, apply, "dropout", dict(rate=rate))


def scaled_tanh(x):
    """LeCun et al. 1998, appendix A: ``f(a) = A tanh(S a)`` with A = 1.7159, S = 2/3."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "scaled_tanh": scaled_tanh,
               "sigmoid": jax.nn.sigmoid}


def Activation(name: str) -> Layer:
    """An element-wise nonlinearity by name: one of :data:`ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    fn = ACTIVATIONS[name]

    def init(key, in_shape):
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None):
        return fn(x), state

    return Layer(init, apply, "activation", dict(name=name))


def Relu() -> Layer:
    return Activation("relu")


# ----------------------------------------------------------------------------------------
# Combinators.

NamedLayers = Sequence[tuple[str, Layer]] | Mapping[str, Layer]


def _named(layers: NamedLayers) -> tuple[tuple[str, Layer], ...]:
    items = tuple(layers.items()) if isinstance(layers, Mapping) else tuple(layers)
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate layer names in {names}")
    for name, layer in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"layer names must be non-empty strings without '/', got {name!r}")
        if not isinstance(layer, Layer):
            raise TypeError(f"'{name}' is not a Layer: {layer!r}")
    return items


def _init_children(items, key, in_shape):
    shape, params, state = in_shape, {}, {}
    for name, layer in items:
        with scope(name):
            shape, p, s = layer.init(name_key(key, name), shape)
        if p:
            params[name] = p
        if s:
            state[name] = s
    return shape, params, state


def _apply_children(items, params, state, x, train, rng):
    new_state = dict(state)
    for name, layer in items:
        with scope(name):
            x, s = layer.apply(params.get(name, {}), state.get(name, {}), x, train=train,
                               rng=name_key(rng, name))
        if s:
            new_state[name] = s
    return x, new_state


_SCAN_REPEATS: contextvars.ContextVar = contextvars.ContextVar("zoo_scan", default=None)


@contextlib.contextmanager
def scan_repeats(min_run: int | None):
    """Override ``scan_repeats`` of the Sequentials that set it, for everything traced inside
    the block: scan runs of at least ``min_run`` identical layers, 0 for never (tests and the
    benchmark compare the scanned and the unrolled program)."""
    token = _SCAN_REPEATS.set(min_run)
    try:
        yield
    finally:
        _SCAN_REPEATS.reset(token)


def _signature(layer: Layer):
    """What a layer computes, as far as its description tells: kind, config and children."""
    return (layer.kind, repr(sorted(layer.config.items())),
            tuple((name, _signature(child)) for name, child in layer.children))


def _leaf_shapes(tree):
    return jax.tree.structure(tree), [(jnp.shape(a), jnp.result_type(a))
                                      for a in jax.tree.leaves(tree)]


def _repeat_runs(items, params, state):
    """Split ``items`` into runs of consecutive layers with the same signature and the same
    param and state shapes."""
    runs, key = [], None
    for name, layer in items:
        this = (_signature(layer), _leaf_shapes(params.get(name, {})),
                _leaf_shapes(state.get(name, {})))
        if runs and this == key:
            runs[-1].append((name, layer))
        else:
            runs.append([(name, layer)])
            key = this
    return runs


def _apply_scanned(run, params, state, x, train, rng):
    """Apply identical layers as one ``lax.scan`` over their stacked params and state: one
    copy of the layer in the program instead of ``len(run)``, the same values."""
    names = [name for name, _ in run]
    layer = run[0][1]
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    xs = (stack([params.get(n, {}) for n in names]), stack([state.get(n, {}) for n in names]),
          None if rng is None else jnp.stack([name_key(rng, n) for n in names]))

    def step(carry, per_layer):
        p, s, key = per_layer
        token = _IN_SCAN.set(True)
        try:
            with scope(f"{names[0]}..{names[-1]}"):
                y, new_s = layer.apply(p, s, carry, train=train, rng=key)
        finally:
            _IN_SCAN.reset(token)
        return y.astype(carry.dtype), new_s

    y, states = jax.lax.scan(step, x, xs)
    return y, {n: jax.tree.map(lambda a, i=i: a[i], states) for i, n in enumerate(names)}


def _preserves_shape(layer, p, s, x, train, rng):
    out = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=train, rng=rng)[0], p, s, x)
    return out.shape == x.shape and out.dtype == x.dtype


def Sequential(layers: NamedLayers, *, scan_repeats: int = 0) -> Layer:
    """Named layers applied in order; each one's params live under its name.

    ``scan_repeats``: if >= 2, apply each run of at least that many consecutive identical,
    shape-preserving layers (a ResNet stage's blocks after the first) as one
    ``jax.lax.scan`` over their stacked params; :func:`scan_repeats` overrides the number
    while tracing. The params keep their per-layer paths (stacking happens inside the
    traced function, so checkpoints and weight importers see no difference); the program
    holds one copy of the layer, so a deep net compiles in about the time of a shallow one.
    Layers are identical when their kind, config and children (recursively) and their param
    and state shapes are."""
    items = _named(layers)

    def init(key, in_shape):
        return _init_children(items, key, in_shape)

    def apply(params, state, x, *, train=False, rng=None):
        override = _SCAN_REPEATS.get()
        min_run = scan_repeats if override is None or not scan_repeats else override
        if not min_run:
            return _apply_children(items, params, state, x, train, rng)
        new_state = dict(state)
        for run in _repeat_runs(items, params, state):
            name = run[0][0]
            if len(run) >= max(min_run, 2) and _preserves_shape(run[0][1], params.get(name, {}),
                                                 state.get(name, {}), x, train,
                                                 name_key(rng, name)):
                x, states = _apply_scanned(run, params, state, x, train, rng)
                new_state.update({n: s for n, s in states.items() if s})
            else:
                x, new_state = _apply_children(run, params, new_state, x, train, rng)
        return x, new_state

    return Layer(init, apply, "sequential", {"scan_repeats": scan_repeats} if scan_repeats else {},
                 items)


def _branch_geometry(recorder, starts, ends):
    if recorder is not None:
        recorder.rf = max(rf for rf, _ in ends)
        recorder.jump = max(j for _, j in ends)


def Concat(branches: NamedLayers, axis: int = -1) -> Layer:
    """Parallel named branches on the same input, concatenated on channels (Inception)."""
    items = _named(branches)

    def init(key, in_shape):
        recorder = _RECORDER.get()
        start = (recorder.rf, recorder.jump) if recorder else None
        shapes, params, state, ends = [], {}, {}, []
        for name, layer in items:
            if recorder:
                recorder.rf, recorder.jump = start
            shape, p, s = _init_children(((name, layer),), key, in_shape)
            shapes.append(shape)
            params.update(p)
            state.update(s)
            if recorder:
                ends.append((recorder.rf, recorder.jump))
        if len({s[:axis] + s[axis + 1:] if axis != -1 else s[:-1] for s in shapes}) != 1:
            raise ValueError(f"layer '{current_path()}': branch outputs differ outside the concat "
                             f"axis: {dict(zip((n for n, _ in items), shapes))}")
        _branch_geometry(recorder, start, ends)
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out), params, state

    def apply(params, state, x, *, train=False, rng=None):
        outs, new_state = [], dict(state)
        for name, layer in items:
            y, new_state = _apply_children(((name, layer),), params, new_state, x, train, rng)
            outs.append(y)
        return jnp.concatenate(outs, axis=axis), new_state

    return Layer(init, apply, "concat", dict(axis=axis), items)


def Residual(body: NamedLayers, shortcut: tuple[str, Layer] | None = None,
             activation: str | None = None) -> Layer:
    """``act(body(x) + shortcut(x))`` (He et al. 2016); the shortcut is the identity unless a
    named projection is given. Body layers and the shortcut share the block's namespace."""
    body_items = _named(body)
    sc_items = _named([shortcut]) if shortcut is not None else ()
    act = None if activation is None else Activation(activation)
    children = body_items + sc_items

    def init(key, in_shape):
        recorder = _RECORDER.get()
        start = (recorder.rf, recorder.jump) if recorder else None
        out_shape, params, state = _init_children(body_items, key, in_shape)
        ends = [(recorder.rf, recorder.jump)] if recorder else []
        sc_shape = in_shape
        if sc_items:
            if recorder:
                recorder.rf, recorder.jump = start
            sc_shape, p, s = _init_children(sc_items, key, in_shape)
            params.update(p)
            state.update(s)
            if recorder:
                ends.append((recorder.rf, recorder.jump))
        if tuple(sc_shape) != tuple(out_shape):
            raise ValueError(f"layer '{current_path()}': residual branch gives {tuple(out_shape)} but "
                             f"the shortcut gives {tuple(sc_shape)}; add a projection shortcut")
        _branch_geometry(recorder, start, ends)
        return out_shape, params, state

    def apply(params, state, x, *, train=False, rng=None):
        y, new_state = _apply_children(body_items, params, state, x, train, rng)
        if sc_items:
            x, new_state = _apply_children(sc_items, params, new_state, x, train, rng)
        y = y + x
        return (act.apply({}, {}, y)[0] if act else y), new_state

    return Layer(init, apply, "residual", dict(activation=activation), children)


def leaf_layers(layer: Layer, path: tuple[str, ...] = ()):
    """``(path, layer)`` for every leaf layer of the tree, in order."""
    if not layer.children:
        yield path, layer
    for name, child in layer.children:
        yield from leaf_layers(child, path + (name,))


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (BatchNorm running statistics are state)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
