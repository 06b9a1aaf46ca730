"""The primitive layers: conv, dense, pools, normalisations, dropout, activations.

Each is a :class:`~zoo.nn.layer.Layer` whose ``init`` checks its geometry (the notes'
``(W - F + 2P)/S + 1``, under the rounding rule it declares) and records a summary row.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import kernels
from ..kernels import pair as _pair
from .init import filled, he_normal, scaled_normal
from .layer import Layer, current_path, name_key, record, recorder, spatial_out, volume

def _check_features(kind, features):
    """A width is a positive int: checked when the layer is built, before any init."""
    if isinstance(features, (bool, np.bool_)) or not isinstance(features, (int, np.integer)):
        raise TypeError(f"{kind}: features must be an int, got {features!r}")
    if features < 1:
        raise ValueError(f"{kind}: features must be >= 1, got {features}")


def _biased(after, bias):
    """``after`` of the conv's output plus ``bias``."""
    def f(y):
        return after(y + bias.astype(y.dtype))
    return f


def Conv(features: int, kernel, *, stride=1, padding=0, dilation=1, groups=1, bias=True,
         rounding="exact", impl=None, mask=None) -> Layer:
    """Convolution, kernel HWIO. ``mask`` (optional ``(Cin, Cout)`` 0/1 table, as LeNet-5's
    C3) stores only the connected kernel slices: params ``kernel`` is ``(kh, kw, n_connections)``."""
    _check_features("Conv", features)
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
        ho, wo = spatial_out(in_shape, (kh, kw), stride, padding, dilation, rounding, "conv")
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
        record("conv", out_shape, params=kh * kw * connections + (features if bias else 0),
               macs=ho * wo * kh * kw * connections, activations=volume(out_shape),
               kernel=kh, stride=cfg["stride"][0], dilation=cfg["dilation"][0])
        return out_shape, params, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None, then=None):
        """``then``: ``(scale, shift, relu, after, pool)``, the inference layers that follow
        it as per-channel terms (scale None: 1), a max pool's config (or None) and as a
        function of this layer's output; folded into the store of zoo's compiled forward
        where the conv runs one (nn.Sequential passes it)."""
        w = dense_kernel(params, x.shape[3])
        where = current_path()
        args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                    rounding=rounding, policy=policy, where=where)
        chosen = kernels.choose(x, w, impl=impl, train=train, **args)
        rec = recorder()
        if rec is not None:
            rec.convs.append((where, chosen, tuple(x.shape), tuple(w.shape)))
            rec.conv_args.append(dict(args, x_shape=tuple(x.shape), w_shape=tuple(w.shape),
                                      dtype=x.dtype, train=bool(train), impl=impl))
        if then is not None:
            scale, shift, relu, after, pool = then
            scale = jnp.ones((features,), jnp.float32) if scale is None else scale
            shift = jnp.zeros((features,), jnp.float32) if shift is None else shift
            if bias:
                b = params["bias"]
                shift = shift + b.astype(jnp.float32) * scale
                after = _biased(after, b)
            epilogue = kernels.Epilogue(scale, shift, relu, after, pool)
            return kernels.conv2d(x, w, impl=chosen, epilogue=epilogue, **args), state
        y = kernels.conv2d(x, w, impl=chosen, **args)
        if bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "conv", cfg)


def Dense(features: int, *, bias=True) -> Layer:
    """Fully-connected layer, kernel ``(in, out)``, on the last axis."""
    _check_features("Dense", features)

    def init(key, in_shape):
        fan_in = in_shape[-1]
        params = {"kernel": scaled_normal(name_key(key, "kernel"), (fan_in, features),
                                          math.sqrt(1.0 / fan_in))}
        if bias:
            params["bias"] = filled((features,), 0.0)
        out_shape = (*in_shape[:-1], features)
        record("dense", out_shape, params=fan_in * features + (features if bias else 0),
               macs=fan_in * features, activations=volume(out_shape))
        return out_shape, params, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        w = params["kernel"]
        if x.shape[-1] != w.shape[0]:
            raise ValueError(f"layer '{current_path()}': expects {w.shape[0]} input features, got "
                             f"input of shape {tuple(x.shape)}; was the model initialised for "
                             f"another input size?")
        # bfloat16 accumulating in float32 (the policy's): XLA:CPU computes a bfloat16-output
        # dot in float32, converting the whole kernel on every call
        acc = (policy or kernels.DEFAULT_POLICY).accumulation(x.dtype)
        y = jnp.dot(x, w.astype(x.dtype), preferred_element_type=acc).astype(x.dtype)
        if bias:
            y = y + params["bias"].astype(y.dtype)
        return y, state

    return Layer(init, apply, "dense", dict(features=features, bias=bias))


def _compiled(policy, dtype) -> bool:
    """Whether a layer on ``dtype`` asks for zoo's compiled kernel under ``policy``."""
    return (policy or kernels.DEFAULT_POLICY).native_for(dtype)


def _pool(kind, window, stride, padding, rounding, reducer):
    kh, kw = _pair(window)
    stride = _pair(stride if stride is not None else window)
    padding = _pair(padding)
    cfg = dict(window=(kh, kw), stride=stride, padding=padding, rounding=rounding)

    def geometry(shape):
        if len(shape) != 4:
            raise ValueError(f"layer '{current_path()}' expects NHWC input, got shape "
                             f"{tuple(shape)}")
        return kernels.pool_geometry(shape[1:3], (kh, kw), stride, padding, rounding,
                                     current_path(), kind)

    def init(key, in_shape):
        ho, wo = geometry(in_shape).out_hw
        out_shape = (in_shape[0], ho, wo, in_shape[3])
        record(kind, out_shape, activations=volume(out_shape), kernel=kh, stride=stride[0])
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        g = geometry(x.shape)
        # Under the floor rule the last rows/columns may never be reached: crop them.
        x = x[:, : g.keep_hw[0], : g.keep_hw[1]]
        pads = [(0, 0), *g.pads, (0, 0)]
        return reducer(x, (1, kh, kw, 1), (1, *stride, 1), pads, policy), state

    return Layer(init, apply, kind, cfg)


def MaxPool(window, stride=None, padding=0, rounding="exact") -> Layer:
    """Max pooling; padding and the ceil rule's extra border are -inf (never selected).
    The gradient goes to the first maximum of each window (:func:`zoo.kernels.max_pool`)."""

    def reduce_max(x, dims, strides, pads, policy):
        return kernels.max_pool(x, dims[1:3], strides[1:3], pads[1:3],
                                _compiled(policy, x.dtype))

    return _pool("maxpool", window, stride, padding, rounding, reduce_max)


def AvgPool(window, stride=None, padding=0, rounding="exact") -> Layer:
    """Average pooling. Cells of the zero padding ``P`` count in the divisor (PyTorch's
    ``count_include_pad=True``); the ceil rule's extra border beyond ``P`` does not."""
    p = _pair(padding)

    def reduce_mean(x, dims, strides, pads, policy):
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
        record("avgpool", out_shape, activations=volume(out_shape),
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
        record("global_avgpool", out_shape, activations=volume(out_shape), kernel=in_shape[1])
        return out_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        return jnp.mean(x, axis=(1, 2)), state

    return Layer(init, apply, "global_avgpool")


def Flatten() -> Layer:
    """(N, H, W, C) -> (N, H*W*C) in NHWC order (importers permute torch's CHW order once)."""

    def init(key, in_shape):
        if len(in_shape) == 4:
            # Seen as a conv over the whole map (FC -> CONV): the map's size, stride 1.
            record("flatten", (in_shape[0], volume(in_shape)), kernel=in_shape[1])
        return (in_shape[0], volume(in_shape)), {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, "flatten")


def LRN(size=5, alpha=1e-4, beta=0.75, k=2.0) -> Layer:
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3):
    ``b = a / (k + alpha * sum_{|j-i|<=size//2} a_j^2) ** beta``. Note PyTorch and Caffe
    divide ``alpha`` by ``size``; pass ``alpha/size`` to reproduce them."""

    def init(key, in_shape):
        record("lrn", in_shape)
        return in_shape, {}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        sq = jnp.square(x.astype(jnp.float32))
        half = size // 2
        summed = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                       [(0, 0), (0, 0), (0, 0), (half, size - 1 - half)])
        return (x / jnp.power(k + alpha * summed, beta).astype(x.dtype)), state

    return Layer(init, apply, "lrn", dict(size=size, alpha=alpha, beta=beta, k=k))


def _check_batch_statistics(x):
    """Train mode needs at least two values per channel: one would normalise to zero (every
    input the same output) and none would make the running statistics NaN."""
    per_channel = x.size // x.shape[-1] if x.shape[-1] else 0
    if per_channel < 2:
        raise ValueError(f"layer '{current_path()}': BatchNorm in train mode expected more than "
                         f"1 value per channel, got input of shape {tuple(x.shape)} "
                         f"({per_channel} per channel); use a larger batch (or images), or "
                         f"train=False")


def BatchNorm(*, eps=1e-5, momentum=0.1) -> Layer:
    """Batch normalization (Ioffe & Szegedy 2015) over N, H, W, with PyTorch's semantics:
    train normalises with the biased batch variance and updates the running statistics
    ``r <- (1 - momentum) r + momentum * batch`` with the unbiased one; eval uses the
    running statistics. Statistics are computed in float32 whatever the input dtype; the
    training path is :func:`zoo.kernels.batch_norm_train` (sums as dots, or zoo's compiled
    sums where the policy asks and they run; an analytic backward)."""

    def init(key, in_shape):
        c = in_shape[-1]
        record("batchnorm", in_shape, params=2 * c)
        params = {"scale": filled((c,), 1.0), "bias": filled((c,), 0.0)}
        state = {"mean": filled((c,), 0.0), "var": filled((c,), 1.0)}
        return in_shape, params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        if train:
            _check_batch_statistics(x)
            compiled = _compiled(policy, jnp.float32) and kernels.native.usable()
            y, mean, var = kernels.batch_norm_train(x.astype(jnp.float32), params["scale"],
                                                params["bias"], eps, compiled)
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
