"""Dense score maps: shift-and-stitch, several scales, and the crops a map stands for."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import contract
from .convert import convert

# ----------------------------------------------------------------------------------------
# Dense score maps: shift-and-stitch and scales.

@dataclasses.dataclass
class ScoreMap:
    """The result of :func:`score_map`.

    ``scores``: (P, Q, K), or (N, P, Q, K) for a batch of images; cell (p, q) stands for the
    training-size crop at pixel ``(p*stride, q*stride)`` of the (first-scale, floored) image.
    ``image_size``: the (H, W) the cells' crops cover (the rest of the image, less than one
    stride, is dropped: the documented floor); ``compile_seconds``: time
    spent compiling in this call (0 when every shape was cached); ``run_seconds``: the rest.
    """

    scores: Any
    stride: int
    network_stride: int
    receptive_field: int
    train_size: tuple
    image_size: tuple
    scales: tuple
    compile_seconds: float
    run_seconds: float
    passes: int

    def pooled(self):
        """Scores averaged over all positions: (K,) or (N, K)."""
        return jnp.mean(self.scores, axis=(-3, -2))

    def top(self, k=5):
        """``[(class, pooled score), ...]`` of the first image, best first."""
        pooled = np.asarray(self.pooled()).reshape(-1, self.scores.shape[-1])[0]
        order = np.argsort(-pooled)[:k]
        return [(int(c), float(pooled[c])) for c in order]


def _dense_pass(fcn, variables, x, step, per_example=False):
    """Scores at every ``step`` pixels for a batch ``x`` (N, H, W, C) by shift-and-stitch.

    With network stride ``s`` and ``f = s / step``, the f*f passes on ``x`` shifted by
    ``(a*step, b*step)`` give the cells ``(i*f + a, j*f + b)``; passes with equal input
    shapes run as one batch.
    """
    s = fcn.stride
    if step < 1 or s % step:
        raise ValueError(f"{fcn.name}: stride {step} must divide the network stride {s} "
                         f"(shift-and-stitch runs (s/stride)^2 shifted passes)")
    f = s // step
    n, height, width = x.shape[:3]
    th, tw = fcn.train_size
    if height < th or width < tw:
        fcn.fit_size(height, width)  # raises the clear error
    rows, cols = (height - th) // step + 1, (width - tw) // step + 1
    groups: dict[tuple, list] = {}
    for a in range(f):
        for b in range(f):
            if a >= rows or b >= cols:
                continue
            h = th + (height - a * step - th) // s * s
            w = tw + (width - b * step - tw) // s * s
            groups.setdefault((h, w), []).append((a, b))
    params, state = variables["params"], variables.get("state", {})
    out = None
    compile_s = 0.0
    for (h, w), shifts in groups.items():
        batch = jnp.concatenate([x[:, a * step:a * step + h, b * step:b * step + w]
                                 for a, b in shifts], axis=0)
        fn, secs = fcn.compiled(params, state, batch.shape, batch.dtype, per_example=per_example)
        compile_s += secs
        maps = fn(params, state, batch)
        if out is None:
            out = jnp.zeros((n, rows, cols, maps.shape[-1]), maps.dtype)
        for k, (a, b) in enumerate(shifts):
            out = out.at[:, a::f, b::f].set(maps[k * n:(k + 1) * n])
    return out, compile_s, sum(len(v) for v in groups.values())


def resize_image(image, scale: float):
    """``image`` (N, H, W, C) resized by ``scale`` (bilinear, antialiased when shrinking)."""
    if scale == 1.0:
        return image
    n, h, w, c = image.shape
    size = (n, max(1, round(h * scale)), max(1, round(w * scale)), c)
    return jax.image.resize(image, size, "linear", antialias=scale < 1.0)


def score_map(model, variables, image, stride=None, scales: Sequence[float] = (1.0,), *,
              softmax: bool = False, input_shape=None, per_example: bool = False) -> ScoreMap:
    """Class scores at every ``stride`` pixels of ``image``, averaged over ``scales``.

    ``model``/``variables``: a converted pair from :func:`convert`, or an original model
    (converted here; convert once yourself to reuse the compiled passes). ``image``: a
    network-ready (normalised) array (H, W, C) or (N, H, W, C). ``stride``: pixels between
    cells, a divisor of the network stride (default: the network stride); finer strides
    use shift-and-stitch. ``scales``: the image is resized by each factor, its map computed
    and resized (bilinear) to the first scale's grid, and the maps averaged (with
    ``softmax=True``, the per-cell class probabilities are averaged instead of the raw
    scores). Each pass floors its (shifted) image to a size the net takes (training size
    plus a multiple of the network stride, :meth:`FullyConvModel.fit_size`), so the cells
    are exactly the crops that fit in the image.
    """
    fcn, fvars = convert(model, variables, input_shape)
    x = jnp.asarray(image)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"image must be (H, W, C) or (N, H, W, C), got shape {tuple(x.shape)}")
    contract.check_input(x, name=fcn.name, channels=fcn.input_shape[-1], mean=fcn.mean,
                         std=fcn.std, example=(1, *fcn.input_shape))
    step = fcn.stride if stride is None else int(stride)
    if not scales:
        raise ValueError("scales must name at least one factor")
    t0 = time.perf_counter()
    compile_s, passes, maps, covered = 0.0, 0, [], None
    for scale in scales:
        xs = resize_image(x, float(scale))
        fcn.fit_size(xs.shape[1], xs.shape[2])  # a clear error when the image is too small
        m, secs, n_passes = _dense_pass(fcn, fvars, xs, step, per_example)
        fh, fw = (m.shape[1] - 1) * step + fcn.train_size[0], (m.shape[2] - 1) * step + fcn.train_size[1]
        compile_s += secs
        passes += n_passes
        if softmax:
            m = jax.nn.softmax(m, axis=-1)
        if maps:
            ref = maps[0].shape
            if m.shape != ref:
                m = jax.image.resize(m, ref, "linear")
        else:
            covered = (fh, fw)
        maps.append(m)
    scores = maps[0] if len(maps) == 1 else jnp.mean(jnp.stack(maps), axis=0)
    scores = jax.block_until_ready(scores)
    total = time.perf_counter() - t0
    return ScoreMap(scores[0] if single else scores, step, fcn.stride, fcn.receptive_field,
                    fcn.train_size, covered, tuple(float(s) for s in scales), compile_s,
                    total - compile_s, passes)


def crops(image, size, stride, positions=None):
    """The training-size crops a score map stands for: (P*Q*N, h, w, C), row-major over
    positions, for ``image`` (N, H, W, C). Used by the tests and the benchmark."""
    th, tw = size
    n, height, width = image.shape[:3]
    rows = positions[0] if positions else (height - th) // stride + 1
    cols = positions[1] if positions else (width - tw) // stride + 1
    return jnp.concatenate([image[:, i * stride:i * stride + th, j * stride:j * stride + tw]
                            for i in range(rows) for j in range(cols)], axis=0), (rows, cols)


def compare_with_crops(scores, crop_scores, rtol: float = 1e-4) -> dict:
    """How far a score map (P, Q, K) is from the original network on its crops (P*Q, K)
    or (P, Q, K): ``agree`` (cells whose scores match within ``rtol`` of the crop's
    largest score), ``top1_agree`` (cells with the same best class), ``positions``,
    ``max_rel`` (largest difference over the largest score) and ``mean_rel`` (mean
    absolute difference over mean absolute score)."""
    a = np.asarray(scores, np.float64).reshape(-1, np.shape(scores)[-1])
    b = np.asarray(crop_scores, np.float64).reshape(a.shape)
    diff = np.abs(a - b)
    scale = np.max(np.abs(b), axis=-1)
    agree = np.all(diff <= rtol * scale[:, None], axis=-1)
    return dict(positions=int(a.shape[0]), agree=int(agree.sum()),
                top1_agree=int(np.sum(a.argmax(-1) == b.argmax(-1))),
                max_rel=float(diff.max() / max(np.abs(b).max(), 1e-30)),
                mean_rel=float(diff.mean() / max(np.abs(b).mean(), 1e-30)))
