"""The functional core: every layer is a ``Layer(init, apply)`` pair over named pytrees.

    init(key, in_shape)                                            -> (out_shape, params, state)
    apply(params, state, x, *, train=False, rng=None, policy=None) -> (y, new_state)

Activations are NHWC, conv kernels HWIO, dense kernels (in, out). Parameters and state
are nested dicts keyed by the names given to :func:`Sequential`, :func:`Concat` and
:func:`Residual`; stateless layers have empty dicts, which the combinators omit.

Geometry follows the cs231n notes: a conv or pool produces ``(W - F + 2P)/S + 1`` outputs
along each spatial axis. When that is not an integer the layer raises, unless its
definition declares ``rounding="floor"`` or ``"ceil"`` (the rule of the published model).

``policy`` (a :class:`zoo.kernels.ConvPolicy`, default ``ConvPolicy()``) is how the convs
run; combinators pass it to every child. The model passes its own (``Model.policy``).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import zlib
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import kernels
from .kernels import ConvPolicy, pair as _pair

Shape = tuple[int, ...]

ROUNDING_RULES = kernels.ROUNDING_RULES
_DEFAULT_POLICY = ConvPolicy()


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
    """Collects one row per primitive layer during ``init`` (see :mod:`zoo.summary`), and
    ``convs``: ``(layer path, implementation, input shape, kernel shape)`` for every conv
    traced by ``apply`` inside the block (what the model's conv policy chose).

    It also tracks the receptive field and cumulative stride (the "jump") of the
    activations flowing through the net: a k x k layer with dilation d and stride s maps
    ``rf -> rf + (d(k-1)) * jump`` and ``jump -> jump * s``. Parallel branches take the max.
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.convs: list[tuple] = []
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
# Geometry (zoo.kernels.geometry), with errors that name the current layer.

def output_size(size: int, window: int, stride: int, padding: int, dilation: int = 1,
                rounding: str = "exact", what: str = "") -> int:
    """``(W - F + 2P)/S + 1`` with the declared rounding rule; errors name the layer.

    ``ceil`` follows Caffe/PyTorch: a last window that would start in the right padding is
    dropped."""
    return kernels.output_size(size, window, stride, padding, dilation, rounding,
                               current_path(), what)


def _spatial_out(in_shape, window, stride, padding, dilation, rounding, what):
    return kernels.spatial_out(in_shape, window, stride, padding, dilation, rounding,
                               current_path(), what)


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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        w = dense_kernel(params, x.shape[3])
        where = current_path()
        args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                    rounding=rounding, policy=policy, where=where)
        chosen = kernels.choose(x, w, impl=impl, **args)
        recorder = _RECORDER.get()
        if recorder is not None:
            recorder.convs.append((where, chosen, tuple(x.shape), tuple(w.shape)))
        y = kernels.conv2d(x, w, impl=chosen, **args)
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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
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
        return out_hw, kernels.padding_pairs(shape, (kh, kw), stride, padding, (1, 1), out_hw)

    def init(key, in_shape):
        (ho, wo), _ = geometry(in_shape)
        out_shape = (in_shape[0], ho, wo, in_shape[3])
        _record(kind, out_shape, activations=_volume(out_shape), kernel=kh, stride=stride[0])
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        _, ((ph, eh), (pw, ew)) = geometry(x.shape)
        # Under the floor rule the last rows/columns may never be reached: crop them.
        x = x[:, : x.shape[1] + min(eh, 0), : x.shape[2] + min(ew, 0)]
        pads = [(0, 0), (ph, max(eh, 0)), (pw, max(ew, 0)), (0, 0)]
        return reducer(x, (1, kh, kw, 1), (1, *stride, 1), pads), state

    return Layer(init, apply, kind, cfg)


def MaxPool(window, stride=None, padding=0, rounding="exact") -> Layer:
    """Max pooling; padding and the ceil rule's extra border are -inf (never selected).
    The gradient goes to the first maximum of each window (:func:`zoo.kernels.max_pool`)."""

    def reduce_max(x, dims, strides, pads):
        return kernels.max_pool(x, dims[1:3], strides[1:3], pads[1:3])

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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        return jnp.mean(x, axis=(1, 2)), state

    return Layer(init, apply, "global_avgpool")


def Flatten() -> Layer:
    """(N, H, W, C) -> (N, H*W*C) in NHWC order (importers permute torch's CHW order once)."""

    def init(key, in_shape):
        if len(in_shape) == 4:
            # Seen as a conv over the whole map (FC -> CONV): the map's size, stride 1.
            _record("flatten", (in_shape[0], _volume(in_shape)), kernel=in_shape[1])
        return (in_shape[0], _volume(in_shape)), {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, "flatten")


def LRN(size=5, alpha=1e-4, beta=0.75, k=2.0) -> Layer:
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3):
    ``b = a / (k + alpha * sum_{|j-i|<=size//2} a_j^2) ** beta``. Note PyTorch and Caffe
    divide ``alpha`` by ``size``; pass ``alpha/size`` to reproduce them."""

    def init(key, in_shape):
        _record("lrn", in_shape)
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
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
    training path is :func:`zoo.kernels.batch_norm_train` (sums as dots, an analytic backward)."""

    def init(key, in_shape):
        c = in_shape[-1]
        _record("batchnorm", in_shape, params=2 * c)
        params = {"scale": filled((c,), 1.0), "bias": filled((c,), 0.0)}
        state = {"mean": filled((c,), 0.0), "var": filled((c,), 1.0)}
        return in_shape, params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        if train:
            y, mean, var = kernels.batch_norm_train(x.astype(jnp.float32), params["scale"],
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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
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

    def apply(params, state, x, *, train=False, rng=None, policy=None):
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


def _apply_children(items, params, state, x, train, rng, policy):
    new_state = dict(state)
    for name, layer in items:
        with scope(name):
            x, s = layer.apply(params.get(name, {}), state.get(name, {}), x, train=train,
                               rng=name_key(rng, name), policy=policy)
        if s:
            new_state[name] = s
    return x, new_state


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


def _apply_scanned(run, params, state, x, train, rng, policy):
    """Apply identical layers as one ``lax.scan`` over their stacked params and state: one
    copy of the layer in the program instead of ``len(run)``, the same values. The body's
    convs run under ``policy.for_loop_body()``."""
    names = [name for name, _ in run]
    layer = run[0][1]
    body_policy = policy.for_loop_body()
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    xs = (stack([params.get(n, {}) for n in names]), stack([state.get(n, {}) for n in names]),
          None if rng is None else jnp.stack([name_key(rng, n) for n in names]))

    def step(carry, per_layer):
        p, s, key = per_layer
        with scope(f"{names[0]}..{names[-1]}"):
            y, new_s = layer.apply(p, s, carry, train=train, rng=key, policy=body_policy)
        return y.astype(carry.dtype), new_s

    y, states = jax.lax.scan(step, x, xs)
    return y, {n: jax.tree.map(lambda a, i=i: a[i], states) for i, n in enumerate(names)}


def _preserves_shape(layer, p, s, x, train, rng, policy):
    out = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=train, rng=rng,
                                                     policy=policy)[0], p, s, x)
    return out.shape == x.shape and out.dtype == x.dtype


def Sequential(layers: NamedLayers, *, scan: bool = False) -> Layer:
    """Named layers applied in order; each one's params live under its name.

    ``scan=True``: each run of at least ``policy.scan_min_run`` consecutive identical,
    shape-preserving layers (a ResNet stage's blocks after the first) runs as one
    ``jax.lax.scan`` over their stacked params. The params keep their per-layer paths
    (stacking happens inside the traced function, so checkpoints and weight importers see no
    difference); the program holds one copy of the layer, so a deep net compiles in about
    the time of a shallow one. Layers are identical when their kind, config and children
    (recursively) and their param and state shapes are."""
    items = _named(layers)

    def init(key, in_shape):
        return _init_children(items, key, in_shape)

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        policy = policy or _DEFAULT_POLICY
        min_run = policy.scan_min_run if scan else 0
        if not min_run:
            return _apply_children(items, params, state, x, train, rng, policy)
        new_state = dict(state)
        for run in _repeat_runs(items, params, state):
            name = run[0][0]
            if len(run) >= max(min_run, 2) and _preserves_shape(run[0][1], params.get(name, {}),
                                                 state.get(name, {}), x, train,
                                                 name_key(rng, name), policy):
                x, states = _apply_scanned(run, params, state, x, train, rng, policy)
                new_state.update({n: s for n, s in states.items() if s})
            else:
                x, new_state = _apply_children(run, params, new_state, x, train, rng, policy)
        return x, new_state

    return Layer(init, apply, "sequential", {"scan": True} if scan else {}, items)


def _branch_geometry(recorder, ends):
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
        _branch_geometry(recorder, ends)
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out), params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        outs, new_state = [], dict(state)
        for name, layer in items:
            y, new_state = _apply_children(((name, layer),), params, new_state, x, train, rng,
                                           policy)
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
        _branch_geometry(recorder, ends)
        return out_shape, params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        y, new_state = _apply_children(body_items, params, state, x, train, rng, policy)
        if sc_items:
            x, new_state = _apply_children(sc_items, params, new_state, x, train, rng, policy)
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
