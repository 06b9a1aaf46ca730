"""Winograd's minimal filtering F(2x2, 3x3) for 3x3 stride-1 convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016,
arXiv:1509.09308). Each 2x2 tile of the output comes from a 4x4 tile of the input with 16
multiplications per (input channel, output channel) instead of the direct form's 36:

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A

summed over the input channels. The input tiles are transformed (``B^T d B``, additions
only), the products become 16 matrix products over the channels (one per tile position),
and the result is transformed back (``A^T m A``, additions only): 2.25x fewer
multiply-adds than the direct convolution. Tiles overlap by 2, so a tile's rows and columns
are strided slices of the padded input, and XLA fuses each transform into one pass.

The transforms add a few roundings; on unit-scale data the result differs from XLA's
convolution by about 3e-6, less than torch's (about 1e-5). bfloat16 inputs accumulating in
float32 are transformed in float32 and multiplied as bfloat16: their error stays within 2x
of XLA's bfloat16 convolution's, which computes in float32 throughout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


#: ``G``: the kernel transform of F(2x2, 3x3).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _input_rows(s):
    """``B^T`` applied along a list of 4 (rows or columns of a 4x4 tile)."""
    return [s[0] - s[2], s[1] + s[2], s[2] - s[1], s[1] - s[3]]


def _output_rows(m):
    """``A^T`` applied along a list of 4."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def kernel_transform(w):
    """``G g G^T`` for an HWIO 3x3 kernel: (16, Cin, Cout), tile position ``4*a + b``.

    One (16, 9) x (9, Cin*Cout) product that reads the kernel once (16 elementwise outputs
    would read it 16 times)."""
    taps = jnp.asarray(np.kron(G, G), w.dtype)
    u = jnp.dot(taps, w.reshape(9, -1), precision=jax.lax.Precision.HIGHEST)
    return u.reshape(16, *w.shape[2:])


def tile_grid(out_hw):
    """How many 2x2 output tiles cover an ``out_hw`` map: (ceil(Ho/2), ceil(Wo/2))."""
    return -(-out_hw[0] // 2), -(-out_hw[1] // 2)


def input_transform(x, pads, tiles):
    """``B^T d B`` for every 4x4 input tile (stride 2): 16 arrays (N, th, tw, C)."""
    (th, tw), (top, _), (left, _) = tiles, *pads
    rows, cols = 2 * th + 2, 2 * tw + 2
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype),
                     [(0, 0, 0), (top, rows - x.shape[1] - top, 0),
                      (left, cols - x.shape[2] - left, 0), (0, 0, 0)])
    by_row = _input_rows([xp[:, i:i + 2 * th - 1:2] for i in range(4)])
    return [v for r in by_row for v in _input_rows([r[:, :, j:j + 2 * tw - 1:2] for j in range(4)])]


def output_transform(m, out_hw):
    """``A^T m A`` of the 16 products (N, th, tw, K) back to the (N, Ho, Wo, K) output."""
    n, th, tw, k = m[0].shape
    cols = [_output_rows([m[4 * a + b] for a in range(4)]) for b in range(4)]   # [b][row]
    tile_rows = [_output_rows([cols[b][r] for b in range(4)]) for r in range(2)]  # [row][col]
    y = jnp.stack([jnp.stack(r, axis=3) for r in tile_rows], axis=2)          # N, th, 2, tw, 2, K
    return y.reshape(n, 2 * th, 2 * tw, k)[:, :out_hw[0], :out_hw[1]]


def conv3x3(x, w, pads, out_hw, precision=None, preferred_element_type=None):
    """A 3x3, stride-1, undilated, ungrouped convolution, NHWC x HWIO -> NHWC, with padding
    ``pads`` ((top, bottom), (left, right); a negative bottom or right crops), giving
    ``out_hw``, as F(2x2, 3x3). With a ``preferred_element_type`` wider than the inputs the
    transforms run in it and the 16 products take the inputs' dtype."""
    if w.shape[:2] != (3, 3) or x.shape[3] != w.shape[2]:
        raise ValueError(f"Winograd F(2x2, 3x3) takes a 3x3 ungrouped kernel for {x.shape[3]} "
                         f"input channels, got {tuple(w.shape)}")
    if pads[0][0] < 0 or pads[1][0] < 0:
        raise ValueError(f"Winograd F(2x2, 3x3) takes non-negative top and left padding, got {pads}")
    tiles = tile_grid(out_hw)
    operand = x.dtype
    if preferred_element_type is not None and \
            jnp.dtype(preferred_element_type).itemsize > jnp.dtype(operand).itemsize:
        # low-precision operands, wider accumulation: the transforms in the wider type, the
        # products on low-precision operands (where bfloat16 dot instructions work)
        x, w = x.astype(preferred_element_type), w.astype(preferred_element_type)
    u = kernel_transform(w).astype(operand)
    cin = x.shape[3]
    products = [jnp.dot(v.astype(operand).reshape(-1, cin), u[t], precision=precision,
                        preferred_element_type=preferred_element_type).reshape(*v.shape[:3], -1)
                for t, v in enumerate(input_transform(x, pads, tiles))]
    return output_transform(products, out_hw)
