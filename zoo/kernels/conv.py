"""The one 2-D convolution every conv layer calls, and its implementations.

``conv2d`` computes NHWC x HWIO -> NHWC with symmetric zero padding ``P`` and the declared
rounding rule; a :class:`~zoo.kernels.policy.ConvPolicy` picks the implementation per
traced layer. All of them give XLA's values and gradients within float tolerance:

- ``'xla'``: ``lax.conv_general_dilated`` and autodiff's gradients;
- ``'im2col'``: patches as rows, then one matrix product per group (the notes'
  "implementation as matrix multiplication");
- custom VJPs (:data:`CUSTOM_CONVS`) that choose the forward, the input gradient and the
  weight gradient separately: ``'xla+stored'``, ``'xla+mmgrad'``, ``'taps'``, ``'winograd'``,
  ``'xla+phases'`` (a strided conv's input gradient without the zeros of the dilated ``dy``),
  ``'xla+colgrad'`` (the input gradient as one matrix product and its col2im), ``'amx'``
  (the bfloat16 forward on AMX tiles, :func:`.native.amx_conv`, and at stride 1 the input
  gradient; XLA's weight gradient).

Where the policy asks (``native_grad_min_map``: big float32 maps), the custom convs whose
weight gradient would be XLA's take it from zoo's compiled kernel (:mod:`.native`) instead;
those whose forward would be XLA's take the compiled forward on image convs and maps up to
``native_forward_max_map``, and with it the stride-1 input gradient. On a CPU with
AMX tiles the policy gives bfloat16 convs ``'amx'`` (XLA:CPU computes bfloat16
convolutions in float32).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import native, winograd
from .forms import (Geom, cols_input_grad, im2col_conv, input_grad, phase_input_grad,
                    taps_conv, weight_grad_matmul, xla_conv)
from .geometry import PoolGeometry, pair, padding_pairs, pool_geometry, spatial_out
from .policy import IMPLS, ConvGeometry, ConvPolicy
from .pool_bn import max_pool, stored

DEFAULT_POLICY = ConvPolicy()


class CustomConv(NamedTuple):
    """The static part of a custom-VJP convolution."""
    geom: Geom
    out_hw: tuple
    forward: str       # 'xla', 'native' (zoo.kernels.native, else XLA's), 'amx' (its bfloat16
                       # AMX kernel, else XLA's), 'taps', 'winograd'
    input_grad: str    # 'conv' (one explicit forward conv), 'winograd' (it as F(2x2, 3x3)),
                       # 'native' (that conv compiled, stride 1), 'amx' (that conv on the
                       # AMX tiles, bfloat16, stride 1), 'phases' (stride**2
                       # stride-1 convs), 'cols' (dy @ W^T, col2im), 'autodiff'
    weight_grad: str   # 'matmul', 'native' (zoo.kernels.native, else XLA's) or 'xla'
    chunk_bytes: int   # the im2col buffer per step of the matmul weight gradient
    store_input: bool  # keep the input as a stored buffer for the backward (pool_bn.stored)


def _tiles() -> bool:
    """Whether the AMX kernel runs here (else XLA's forms; a failed build warns once)."""
    return native.usable() and native.amx_available()


def _custom_primal(x, w, meta: CustomConv):
    if meta.forward == "native" and native.usable():
        return native.conv(x, w, meta.geom.stride, meta.geom.pads, meta.out_hw).astype(x.dtype)
    if meta.forward == "amx" and _tiles():
        return native.amx_conv(x, w, meta.geom.stride, meta.geom.pads, meta.out_hw)
    if meta.forward == "taps":
        return taps_conv(x, w, meta.geom, meta.out_hw)
    if meta.forward == "winograd":
        return winograd.conv3x3(x, w, meta.geom.pads, meta.out_hw, meta.geom.precision,
                                meta.geom.acc)
    return xla_conv(x, w, meta.geom)


def _custom_fwd(x, w, meta: CustomConv):
    if meta.store_input:
        x = stored(x)
    return _custom_primal(x, w, meta), (x, w)


def _pull(f, arg, dy):
    """``dy``'s pullback through ``f`` at ``arg``, ``dy`` cast to ``f``'s output type (a
    forward that rounds to bfloat16 where XLA's accumulates in float32)."""
    y, pull = jax.vjp(f, arg)
    return pull(dy.astype(y.dtype))[0]


def _custom_bwd(meta: CustomConv, res, dy):
    geom = meta.geom
    x, w = res
    if meta.input_grad == "phases":
        dx = phase_input_grad(dy.astype(x.dtype), w, geom, x.shape[1:3])
    elif meta.input_grad == "cols":
        dx = cols_input_grad(dy.astype(x.dtype), w, geom, x.shape, meta.out_hw)
    elif meta.input_grad == "native" and native.usable():
        dx = native.input_grad(dy, w, geom.pads, x.shape[1:3])
    elif meta.input_grad == "amx" and _tiles():
        dx = native.input_grad(dy.astype(x.dtype), w, geom.pads, x.shape[1:3], tiles=True)
    elif meta.input_grad in ("conv", "winograd", "native"):
        dx = input_grad(dy.astype(x.dtype), w, geom, x.shape[1:3],
                        by_winograd=meta.input_grad == "winograd")
    else:
        dx = _pull(lambda x_: xla_conv(x_, w, geom), x, dy)
    if meta.weight_grad == "matmul":
        dw = weight_grad_matmul(x, dy.astype(x.dtype), w.shape, geom, meta.out_hw,
                                 meta.chunk_bytes)
    elif meta.weight_grad == "native" and native.usable():
        dw = native.weight_grad(x, dy, w.shape[:2], geom.stride, geom.pads)
    else:
        dw = _pull(lambda w_: xla_conv(x, w_, geom), w, dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_custom_conv = jax.custom_vjp(_custom_primal, nondiff_argnums=(2,))
_custom_conv.defvjp(_custom_fwd, _custom_bwd)


class Epilogue(NamedTuple):
    """What follows a conv in inference, as per-channel terms: ``y * scale + shift``
    (float32) and then ReLU where ``relu``, then a max pool where ``pool`` (its ``(window,
    stride, padding, rounding)``; float32 only). ``after`` computes the same from the conv's
    output by the layers' own forms: what runs where the conv's forward is not compiled by
    zoo (:func:`_folds`)."""
    scale: object
    shift: object
    relu: bool
    after: object
    pool: tuple | None = None


def _folds(forward: str) -> bool:
    """Whether a custom conv's ``forward`` applies an :class:`Epilogue` in its store: zoo's
    compiled forwards, where they run."""
    return ((forward == "amx" and _tiles())
            or (forward == "native" and native.usable()))


def _affine(x, w, scale, shift, meta: CustomConv, relu: bool):
    if meta.forward == "amx":
        return native.amx_conv(x, w, meta.geom.stride, meta.geom.pads, meta.out_hw, scale,
                               shift, relu)
    return native.conv(x, w, meta.geom.stride, meta.geom.pads, meta.out_hw, scale, shift,
                       relu).astype(x.dtype)


def _affine_fwd(x, w, scale, shift, meta, relu):
    return _affine(x, w, scale, shift, meta, relu), (x, w, scale, shift)


def _affine_bwd_form(x, w, scale, shift, meta, relu):
    """The conv by its own VJP, then the float32 terms: the unfused form."""
    z = _custom_conv(x, w, meta).astype(jnp.float32) * scale + shift
    return (jnp.maximum(z, 0) if relu else z).astype(x.dtype)


def _affine_bwd(meta, relu, res, dy):
    # the gradients of the unfused form
    def unfused(x, w, scale, shift):
        return _affine_bwd_form(x, w, scale, shift, meta, relu)
    return jax.vjp(unfused, *res)[1](dy.astype(res[0].dtype))


_fused_conv = jax.custom_vjp(_affine, nondiff_argnums=(4, 5))
_fused_conv.defvjp(_affine_fwd, _affine_bwd)


def _pooled(x, w, scale, shift, meta: CustomConv, relu: bool, pool: PoolGeometry):
    return native.pooled_conv(x, w, meta.geom.stride, meta.geom.pads, meta.out_hw, scale, shift,
                              relu, (pool.window, pool.strides, pool.top_left, pool.out_hw)
                              ).astype(x.dtype)


def _pooled_fwd(x, w, scale, shift, meta, relu, pool):
    return _pooled(x, w, scale, shift, meta, relu, pool), (x, w, scale, shift)


def _pooled_bwd(meta, relu, pool, res, dy):
    # the gradients of the unfused form: the conv, the terms, the pool layer's own form
    def unfused(x, w, scale, shift):
        z = _affine_bwd_form(x, w, scale, shift, meta, relu)
        z = z[:, :pool.keep_hw[0], :pool.keep_hw[1]]
        return max_pool(z, pool.window, pool.strides, pool.pads, compiled=True)
    return jax.vjp(unfused, *res)[1](dy.astype(res[0].dtype))


_pooled_conv = jax.custom_vjp(_pooled, nondiff_argnums=(4, 5, 6))
_pooled_conv.defvjp(_pooled_fwd, _pooled_bwd)


class Recipe(NamedTuple):
    """What one of :data:`CUSTOM_CONVS` fixes; ``None`` leaves the input gradient to the
    policy's ``input_grad``, the stored input to its ``store_input``."""
    forward: str
    input_grad: str | None
    weight_grad: str
    store_input: bool | None


#: The implementations besides 'xla' and 'im2col'.
CUSTOM_CONVS = {"xla+mmgrad": Recipe("xla", None, "matmul", False),
                "taps": Recipe("taps", None, "xla", False),
                "xla+stored": Recipe("xla", "autodiff", "xla", True),
                "winograd": Recipe("winograd", "winograd", "xla", None),
                "xla+phases": Recipe("xla", "phases", "xla", True),
                "xla+colgrad": Recipe("xla", "cols", "xla", True),
                "amx": Recipe("amx", "amx", "xla", False)}


def geometry(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, rounding="exact",
             dtype=jnp.float32, where="<input>") -> tuple[ConvGeometry, tuple]:
    """``(the policy's view of the conv, its symmetric padding pair)``, checked."""
    stride, padding, dilation = map(pair, (stride, padding, dilation))
    kh, kw, cin_g, _ = w_shape
    if len(x_shape) == 4 and x_shape[3] != cin_g * groups:
        raise ValueError(f"layer '{where}': input has {x_shape[3]} channels, the kernel "
                         f"{tuple(w_shape)} with groups={groups} expects {cin_g * groups}")
    out_hw = spatial_out(x_shape, (kh, kw), stride, padding, dilation, rounding, where, "conv")
    return ConvGeometry(tuple(x_shape), tuple(w_shape), stride, dilation, groups, out_hw,
                        jnp.dtype(dtype)), padding


def choose(x, w, *, stride=1, padding=0, dilation=1, groups=1, rounding="exact", impl=None,
           policy: ConvPolicy | None = None, train=False, where="<input>") -> str:
    """The implementation :func:`conv2d` runs for these arguments: ``impl`` when given, else
    the policy's choice when traced (``train``: the layer runs in a train step), else
    ``'xla'`` (an eager call: one dispatch)."""
    g, _ = geometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                    groups=groups, rounding=rounding, dtype=x.dtype, where=where)
    return _resolve(g, x, impl, policy or DEFAULT_POLICY, where, train)


def _resolve(g: ConvGeometry, x, impl, policy: ConvPolicy, where: str, train=False) -> str:
    if impl is None or impl == "auto":
        return policy.choose(g, train) if isinstance(x, jax.core.Tracer) else "xla"
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS} or 'auto', got {impl!r}")
    if impl == "amx" and not (native.amx_here() and jnp.dtype(g.dtype) == jnp.bfloat16
                              and g.groups == 1 and tuple(g.dilation) == (1, 1)):
        raise ValueError(f"layer '{where}': conv impl 'amx' takes ungrouped, undilated "
                         f"bfloat16 convs on a CPU with AMX tiles "
                         f"({', '.join(native.AMX_FLAGS)}); got {jnp.dtype(g.dtype).name}, "
                         f"groups {g.groups}, dilation {g.dilation}, AMX "
                         f"{'here' if native.amx_here() else 'not on this CPU'}")
    if impl == "taps" and g.groups != 1:
        raise ValueError(f"layer '{where}': conv impl 'taps' takes ungrouped convs only")
    if impl == "xla+colgrad" and g.groups != 1:
        raise ValueError(f"layer '{where}': conv impl 'xla+colgrad' takes ungrouped convs only")
    if impl == "xla+phases" and not g.phases_shape():
        raise ValueError(f"layer '{where}': conv impl 'xla+phases' takes strided, undilated, "
                         f"ungrouped convs only; got stride {g.stride}, dilation {g.dilation}, "
                         f"groups {g.groups}")
    if impl == "winograd" and not g.winograd_shape():
        raise ValueError(f"layer '{where}': conv impl 'winograd' takes 3x3, stride-1, "
                         f"undilated, ungrouped convs only; got kernel {tuple(g.w_shape)}, "
                         f"stride {g.stride}, dilation {g.dilation}, groups {g.groups}")
    return impl


def conv2d(x, w, *, stride=1, padding=0, dilation=1, groups=1, rounding="exact", impl=None,
           policy: ConvPolicy | None = None, precision=None, train=False, where="<input>",
           epilogue: Epilogue | None = None):
    """2-D convolution, NHWC x HWIO -> NHWC, symmetric zero padding ``P`` per side.

    ``impl``: one of :data:`~zoo.kernels.policy.IMPLS`, or None/``'auto'`` for ``policy``'s
    choice (default :class:`ConvPolicy()`; ``train``: its choice for a train step). The result
    has ``x``'s dtype; low-precision inputs accumulate as the policy says. ``where`` names
    the layer in errors. ``epilogue``: applied to the result in the store of zoo's compiled
    forward where the conv runs one (``'amx'``, one rounding; float32 convs the policy
    gives the compiled forward), else by its ``after``."""
    policy = policy or DEFAULT_POLICY
    g, padding = geometry(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, rounding=rounding, dtype=x.dtype, where=where)
    impl = _resolve(g, x, impl, policy, where, train)
    pads = padding_pairs(x.shape, w.shape[:2], g.stride, padding, g.dilation, g.out_hw)
    w = w.astype(x.dtype)
    geom = Geom(g.stride, tuple(map(tuple, pads)), g.dilation, groups, precision,
                policy.accumulation(x.dtype))
    if impl == "xla":
        y = xla_conv(x, w, geom)
    elif impl == "im2col":
        y = im2col_conv(x, w, geom, g.out_hw)
    else:
        recipe = CUSTOM_CONVS[impl]
        grad = recipe.input_grad
        if grad is None:
            grad = "conv" if policy.input_grad == "conv" or policy.loop_body else "autodiff"
        store = policy.store_input if recipe.store_input is None else recipe.store_input
        forward, wgrad = recipe.forward, recipe.weight_grad
        if wgrad == "xla" and policy.native_grad(g):
            wgrad = "native"   # built (or found unbuildable) when a gradient is traced
        if forward == "xla" and policy.native_forward(g):
            forward = "native"
            if grad in ("conv", "autodiff") and g.stride == (1, 1):
                grad = "native"
        if grad == "amx" and (g.stride != (1, 1) or any(
                lo > k - 1 for (lo, _), k in zip(pads, w.shape[:2]))):
            grad = "autodiff"   # the input gradient as a forward conv needs both
        meta = CustomConv(geom, tuple(g.out_hw), forward, grad, wgrad,
                          int(policy.chunk_bytes), bool(store))
        if epilogue is not None and _folds(forward):
            if epilogue.pool is None:
                return _fused_conv(x, w, epilogue.scale, epilogue.shift, meta,
                                   bool(epilogue.relu))
            if forward == "native":   # the pooled kernel: float32's compiled forward
                pool = pool_geometry(tuple(g.out_hw), *epilogue.pool, where, "maxpool")
                return _pooled_conv(x, w, epilogue.scale, epilogue.shift, meta,
                                    bool(epilogue.relu), pool)
        y = _custom_conv(x, w, meta)
    y = y.astype(x.dtype)
    return y if epilogue is None else epilogue.after(y)
