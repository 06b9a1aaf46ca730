"""The notes' output-size arithmetic and the paddings that realise it.

A window of ``F`` pixels (dilated: ``d(F - 1) + 1``) moved by ``S`` over ``W`` pixels padded
by ``P`` on each side gives ``(W - F + 2P)/S + 1`` outputs. When that is not an integer the
layer must declare how the published model rounds: ``"floor"`` (the last rows are never
reached) or ``"ceil"`` (Caffe's and PyTorch's: an extra window over the right border, unless
it would start inside the right padding). Errors name the layer through ``where``.
"""
from __future__ import annotations

from typing import NamedTuple

ROUNDING_RULES = ("exact", "floor", "ceil")


def pair(v) -> tuple[int, int]:
    """``v`` as ``(height, width)``: an int is used for both."""
    return (v, v) if isinstance(v, int) else tuple(v)


def output_size(size: int, window: int, stride: int, padding: int, dilation: int = 1,
                rounding: str = "exact", where: str = "<input>", what: str = "") -> int:
    """``(W - F + 2P)/S + 1`` under ``rounding``; raises naming the layer ``where``."""
    if rounding not in ROUNDING_RULES:
        raise ValueError(f"{where}: rounding must be one of {ROUNDING_RULES}, got {rounding!r}")
    span = dilation * (window - 1) + 1
    layer = f"layer '{where}'" + (f" ({what})" if what else "")
    if size + 2 * padding < span:
        raise ValueError(
            f"input too small at {layer}: W={size} with padding P={padding} is smaller than the "
            f"window F={span}; use a larger input image")
    exact = (size - span + 2 * padding) / stride + 1
    if rounding == "exact":
        if exact != int(exact):
            raise ValueError(
                f"{layer} does not fit: (W - F + 2P)/S + 1 = ({size} - {span} + 2*{padding})/{stride}"
                f" + 1 = {exact:g} is not an integer (W={size}, F={span}, P={padding}, S={stride}); "
                f"change the input size or declare rounding='floor' or 'ceil'")
        return int(exact)
    if rounding == "floor":
        return (size - span + 2 * padding) // stride + 1
    out = -(-(size - span + 2 * padding) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def spatial_out(in_shape, window, stride, padding, dilation, rounding, where="<input>",
                what="") -> tuple[int, int]:
    """``(Ho, Wo)`` of a 2-D window over an NHWC ``in_shape``."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (window, stride, padding, dilation))
    if len(in_shape) != 4:
        raise ValueError(f"layer '{where}' expects NHWC input, got shape {tuple(in_shape)}")
    ho = output_size(in_shape[1], kh, sh, ph, dh, rounding, where, what + ", height")
    wo = output_size(in_shape[2], kw, sw, pw, dw, rounding, where, what + ", width")
    return ho, wo


def right_padding(size, out, window, stride, padding, dilation) -> int:
    """Right padding that makes exactly ``out`` windows fit: ``P`` under the exact rule, less
    (possibly negative: a crop) under floor, more under ceil."""
    span = dilation * (window - 1) + 1
    return (out - 1) * stride + span - size - padding


def padding_pairs(x_shape, window, stride, padding, dilation, out_hw):
    """``[(top, bottom), (left, right)]`` that give ``out_hw`` outputs."""
    pads = []
    for axis in range(2):
        size, k = x_shape[1 + axis], window[axis]
        extra = right_padding(size, out_hw[axis], k, stride[axis], padding[axis], dilation[axis])
        pads.append((padding[axis], extra))
    return pads


class PoolGeometry(NamedTuple):
    """A pool over an ``in_hw`` map: its window, strides, top and left padding and output
    map, the rows and columns it keeps (the floor rule's unreached border dropped) and its
    padding of the kept map (the ceil rule's border as padding)."""
    window: tuple
    strides: tuple
    top_left: tuple
    out_hw: tuple
    keep_hw: tuple
    pads: tuple


def pool_geometry(in_hw, window, stride, padding, rounding, where="<input>",
                  what="pool") -> PoolGeometry:
    """The :class:`PoolGeometry` of a pool over an ``in_hw`` map (errors name the layer
    ``where`` and its kind ``what``)."""
    window, stride, padding = map(pair, (window, stride, padding))
    shape = (1, *in_hw, 1)
    out_hw = spatial_out(shape, window, stride, padding, 1, rounding, where, what)
    (top, bottom), (left, right) = padding_pairs(shape, window, stride, padding, (1, 1), out_hw)
    return PoolGeometry(window, stride, (top, left), tuple(out_hw),
                        (in_hw[0] + min(bottom, 0), in_hw[1] + min(right, 0)),
                        ((top, max(bottom, 0)), (left, max(right, 0))))
