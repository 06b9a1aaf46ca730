"""Fully-convolutional evaluation: FC -> CONV conversion, dense (sliding) score maps,
shift-and-stitch and multi-scale averaging.

The cs231n notes: any FC layer is a CONV layer whose kernel covers its whole input volume
(VGG's first FC over 7x7x512 is a 7x7 conv, the next FCs are 1x1 convs). The converted net
slides over a larger image in one forward pass and returns a map of class scores.

    fcn, fcn_vars = convert(model, variables)          # weights reshaped, not retrained
    scores, _ = fcn.apply(fcn_vars["params"], fcn_vars["state"], x)    # (N, H', W', K)
    sm = score_map(fcn, fcn_vars, image, stride=fcn.stride // 2, scales=(1.0, 1.25))

Conversion works on the :class:`zoo.nn.Layer` tree, not on model names: it walks the
(nested) Sequentials to the head and rewrites it.

- FC head (``Flatten`` then ``Dense``...): the first Dense becomes a conv whose kernel is
  the spatial size of the Flatten's input volume, its ``(H*W*C, out)`` kernel reshaped to
  ``(H, W, C, out)`` (the Flatten order is NHWC); the next Denses become 1x1 convs.
- Pool head (``GlobalAvgPool``, or ``AdaptiveAvgPool`` to 1x1, then ``Dense``): the pool
  becomes a stride-1 average pool over the training-size window, the classifier a 1x1 conv.
- An ``AdaptiveAvgPool`` that is the identity at the training size is removed; one that
  pools k x k blocks becomes a stride-1 k x k average pool and the next conv is dilated by k
  (so the network stride is not multiplied).
- Dropout, activations and BatchNorm after the flatten act per feature and stay.
- Auxiliary classifiers (GoogLeNet's, active only in training) are dropped.

Geometry. The converted net's stride ``s`` and receptive field are read from
:func:`zoo.nn.recording`. Map cell ``(i, j)`` corresponds to the training-size crop whose
top-left corner is pixel ``(i*s, j*s)``. For a net whose layers declare the exact rule
(no rounding), the inputs that fit are the training size plus multiples of ``s``; any
other size raises an error that names the layer and the formula. :func:`score_map` floors
an image to the largest size that fits (it drops the last ``< s`` rows/columns, which no
full crop covers) and says so in its result.

Equality with crops. Map cell ``(i, j)`` equals the original network applied to its crop
only when the network has no zero padding: a padded layer sees zeros at a crop's border,
where the large image has pixels. See ``docs/fully_conv.md`` for the measured gap.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import nn, paths
from .kernels import xla
from .registry import Model

# Layers that act per position on the last axis, so they can stay in a converted head.
_POINTWISE = ("dropout", "activation", "batchnorm")
# Layers that end the spatial part of a network.
_HEAD_START = ("flatten", "global_avgpool", "adaptive_avgpool")


# ----------------------------------------------------------------------------------------
# The converted model.

@dataclasses.dataclass(frozen=True, eq=False)
class FullyConvModel(Model):
    """A converted network: ``apply`` returns ``(scores (N, H', W', K), state)``.

    ``stride``: pixels between neighbouring map cells; ``receptive_field``: the input span
    (pixels) that one cell depends on; ``train_size``: the (H, W) crop one cell stands for;
    ``changes``: what the conversion did, one line per rewritten layer; ``head_convs``: the
    paths of the convs that were dense layers; ``trunk_size``: how many leading layers (see
    :func:`zoo.nn.split`) the converted net shares, unchanged, with the original;
    ``compile_seconds``: compile time per (input shape, dtype, per_example) compiled so far.
    Caches belong to the object: another policy (:meth:`with_policy`) starts empty.
    """

    stride: int = 1
    receptive_field: int = 1
    train_size: tuple = (1, 1)
    head: str = ""
    changes: tuple = ()
    head_convs: tuple = ()
    trunk_size: int = 0
    source: Any = dataclasses.field(default=None, repr=False, compare=False)
    compile_seconds: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _geometry: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def apply(self, params, state, x, *, train: bool = False, rng=None):
        try:
            return super().apply(params, state, x, train=train, rng=rng)
        except ValueError as err:
            if len(x.shape) != 4:
                raise
            raise ValueError(f"{err}\n{self.fit_hint(x.shape[1], x.shape[2])}") from err

    # -- geometry --------------------------------------------------------------------------
    def fit_size(self, height: int, width: int) -> tuple[int, int]:
        """The largest input size ``<= (height, width)`` that the net takes for sure:
        training size plus a multiple of the stride (the "documented floor")."""
        (th, tw), s = self.train_size, self.stride
        if height < th or width < tw:
            raise ValueError(f"{self.name}: an input of {height}x{width} is smaller than the "
                             f"training size {th}x{tw}; the fully-convolutional net needs at "
                             f"least one full crop")
        return th + (height - th) // s * s, tw + (width - tw) // s * s

    def fit_hint(self, height: int, width: int) -> str:
        try:
            fh, fw = self.fit_size(height, width)
            floor = f"; the floor of {height}x{width} is {fh}x{fw} (fit_size)"
        except ValueError:
            floor = ""
        (th, tw), s = self.train_size, self.stride
        return (f"{self.name} (fully convolutional) takes inputs of {th}+{s}k x {tw}+{s}k "
                f"pixels{floor}; score_map() floors images to such a size")

    def map_shape(self, height: int, width: int) -> tuple[int, int]:
        """Score-map size for an input of ``height x width``; raises if it does not fit."""
        key = (int(height), int(width))
        if key not in self._geometry:
            shape = (1, height, width, self.input_shape[-1])
            try:
                out = self.output_shape(shape)
            except ValueError as err:
                raise ValueError(f"{err}\n{self.fit_hint(height, width)}") from err
            self._geometry[key] = tuple(out[1:3])
        return self._geometry[key]

    # -- compiled forward passes, cached per input shape -----------------------------------
    def compiled(self, params, state, x_shape, dtype=jnp.float32, *, per_example=False):
        """``(fn, compile_seconds)``: an AOT-compiled ``fn(params, state, x) -> scores`` for
        inputs of ``x_shape``. Cached per (shape, dtype, mode); ``compile_seconds`` is 0.0
        on a cache hit. ``per_example=True`` runs the batch through ``lax.map`` (one image
        at a time inside one program)."""
        key = (tuple(x_shape), jnp.dtype(dtype).name, bool(per_example))
        if key in self._compiled:
            return self._compiled[key], 0.0
        self.map_shape(x_shape[1], x_shape[2])  # a clear error before tracing

        def forward(p, s, x):
            if per_example:
                return jax.lax.map(lambda xi: self.network.apply(p, s, xi[None],
                                                                 policy=self.policy)[0][0], x)
            return self.network.apply(p, s, x, policy=self.policy)[0]

        t0 = time.perf_counter()
        x_spec = jax.ShapeDtypeStruct(tuple(x_shape), dtype)
        fn = xla.jit(forward).lower(params, state, x_spec).compile()
        seconds = time.perf_counter() - t0
        self._compiled[key] = fn
        self.compile_seconds[key] = seconds
        return fn, seconds

    def with_policy(self, policy) -> "FullyConvModel":
        """The same converted net under another conv policy, with its own compile cache."""
        return dataclasses.replace(super().with_policy(policy), compile_seconds={},
                                   _compiled={}, _geometry={})


# ----------------------------------------------------------------------------------------
# Walking the Layer tree.

def _input_shapes(leaves, in_shape):
    """The input shape of every leaf at ``in_shape`` (abstractly: no weights allocated)."""
    shapes = []

    def run(key):
        shape = tuple(in_shape)
        for path, layer in leaves:
            shapes.append(shape)
            with nn.scopes(path):
                shape, _, _ = layer.init(key, shape)
        shapes.append(tuple(shape))
        return jnp.zeros(())

    jax.eval_shape(run, jax.random.key(0))
    return shapes


# ----------------------------------------------------------------------------------------
# Conversion.

@dataclasses.dataclass
class _Plan:
    trunk_size: int
    replace: dict
    transforms: dict           # path of a converted dense -> fn(param subtree) -> new subtree
    changes: list
    head: str


def _plan(network: nn.Layer, in_shape, name: str, head_impl) -> _Plan:
    replace, transforms, changes = {}, {}, []
    # Auxiliary classifiers (training-only side outputs) are dropped.
    leaves = []
    for path, layer, aux in nn.main_path(network):
        if aux:
            replace[path] = None
            changes.append(f"{'/'.join(path)}: auxiliary classifier removed")
        else:
            leaves.append((path, layer))
    shapes = _input_shapes(leaves, in_shape)
    kept = [(path, layer, shape) for (path, layer), shape in zip(leaves, shapes)]

    starts = [i for i, (_, layer, _) in enumerate(kept) if layer.kind in _HEAD_START]
    if not starts:
        if len(shapes[-1]) == 4:
            return _Plan(len(kept), replace, transforms, changes, "none (already fully convolutional)")
        raise ValueError(f"{name}: no Flatten, GlobalAvgPool or AdaptiveAvgPool found in the "
                         f"(nested) Sequentials, so there is no head to convert")

    window = None      # (kh, kw) the next dense layer must cover, in cells of the 4-D map
    dilation = (1, 1)  # spacing of those cells (after a k x k adaptive pool turned stride-1)
    head = None
    for path, layer, shape in kept[starts[0]:]:
        where = "/".join(path)
        kind, cfg = layer.kind, layer.config
        if kind == "adaptive_avgpool":
            (oh, ow), (h, w) = cfg["output_size"], shape[1:3]
            if (oh, ow) == (h, w):
                replace[path] = None
                changes.append(f"{where}: adaptive average pool is the identity at {h}x{w}: "
                               f"removed")
                continue
            if h % oh or w % ow:
                raise ValueError(f"{name}: cannot convert '{where}': an adaptive pool from "
                                 f"{h}x{w} to {oh}x{ow} has uneven bins at the training size")
            kh, kw = h // oh, w // ow
            replace[path] = nn.AvgPool((kh, kw), stride=1)
            window, dilation = (oh, ow), ((kh, kw) if (oh, ow) != (1, 1) else (1, 1))
            head = head or ("pool" if (oh, ow) == (1, 1) else "fc")
            changes.append(f"{where}: adaptive average pool {h}x{w} -> {oh}x{ow} becomes a "
                           f"stride-1 {kh}x{kw} average pool")
        elif kind == "global_avgpool":
            h, w = shape[1:3]
            replace[path] = nn.AvgPool((h, w), stride=1)
            window, dilation, head = (1, 1), (1, 1), head or "pool"
            changes.append(f"{where}: global average pool becomes a stride-1 {h}x{w} "
                           f"average pool")
        elif kind == "flatten":
            replace[path] = None
            if len(shape) == 4:
                if window is None:
                    window, dilation = tuple(shape[1:3]), (1, 1)
                head = head or "fc"
            changes.append(f"{where}: flatten removed")
        elif kind == "dense":
            if len(shape) == 4 and window is None:  # a dense on the channels of a map
                continue
            kh, kw = window or (1, 1)
            features, bias = cfg["features"], cfg.get("bias", True)
            cin = shape[-1] // (kh * kw)
            if cin * kh * kw != shape[-1]:
                raise ValueError(f"{name}: cannot convert '{where}': {shape[-1]} input features "
                                 f"are not a {kh}x{kw} volume")
            replace[path] = nn.Conv(features, (kh, kw), dilation=dilation, bias=bias,
                                    impl=head_impl)
            transforms[path] = _dense_to_conv(kh, kw, cin, features)
            changes.append(f"{where}: dense {shape[-1]}->{features} becomes a {kh}x{kw} conv"
                           + (f" (dilation {dilation[0]})" if dilation != (1, 1) else "")
                           + f" over {kh}x{kw}x{cin}")
            window, dilation = (1, 1), (1, 1)
        elif kind in _POINTWISE:
            continue
        else:
            raise ValueError(f"{name}: cannot convert '{where}' (a {kind!r} layer) after the "
                             f"network's flatten/global pool; only dense, dropout, activation "
                             f"and batchnorm layers can follow it")
    return _Plan(starts[0], replace, transforms, changes, head or "none")


def _dense_to_conv(kh, kw, cin, cout):
    def fn(p):
        # NHWC flatten order: row index = (h*W + w)*C + c, so a plain reshape is exact.
        return dict(p, kernel=jnp.reshape(p["kernel"], (kh, kw, cin, cout)))
    return fn


#: How the convs that replace dense layers run. Each is, on the map, exactly the dense
#: layer's matrix product (one row per map cell), so im2col (patches, then one matmul) is
#: the natural form; XLA:CPU's own convolution ran VGG16's 7x7x512 -> 4096 conv on a 12x12
#: map 2.8x slower than that matmul (docs/fully_conv.md, "Speed").
HEAD_IMPL = "im2col"


def convert(model: Model, variables: Mapping, input_shape=None, *, head_impl: str | None = HEAD_IMPL):
    """``(fcn_model, fcn_variables)``: the network with its FC/pool head rewritten as convs.

    ``input_shape`` ((H, W, C) or (N, H, W, C)): the size the variables were made for
    (their first dense layer's size depends on it); default the model's ``input_shape``.
    Parameters are reshaped, never retrained; BatchNorm statistics are carried over.
    ``head_impl``: the conv implementation of the converted head (:data:`HEAD_IMPL`;
    ``None`` leaves the choice to :func:`zoo.nn.conv_policy`).
    """
    if isinstance(model, FullyConvModel):
        return model, variables
    shape = tuple(input_shape) if input_shape is not None else tuple(model.input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    shape = (1, *shape[1:])
    expected, _ = model.abstract_init(shape)
    for part in ("params", "state"):
        want, got = paths.shape_tree(expected[part]), paths.shape_tree(variables.get(part, {}))
        if want != got:
            bad = paths.diff(want, got)
            raise ValueError(f"{model.name}: the variables do not match the model at input "
                             f"{shape[1]}x{shape[2]} ({part} differ at {bad[:5]}); pass the "
                             f"input_shape they were initialised for")
    plan = _plan(model.network, shape, model.name, head_impl)
    network = nn.rebuild(model.network, plan.replace)

    params, state = variables["params"], variables.get("state", {})
    for path, new in plan.replace.items():
        if new is None:
            params, state = paths.set_path(params, path, None), paths.set_path(state, path, None)
    for path, fn in plan.transforms.items():
        params = paths.set_path(params, path, fn(paths.get(params, path)))

    box = {}

    def geometry(key):
        with nn.recording() as rec:
            _, p, s = network.init(key, shape)
        box["rf"], box["stride"] = rec.rf, rec.jump
        return {"params": p, "state": s}

    abstract = jax.eval_shape(geometry, jax.random.key(0))
    for part, tree in (("params", params), ("state", state)):
        if paths.shape_tree(abstract[part]) != paths.shape_tree(tree):
            raise AssertionError(f"{model.name}: converted {part} do not match the converted "
                                 f"network: {paths.diff(paths.shape_tree(abstract[part]), paths.shape_tree(tree))[:5]}")
    fcn = FullyConvModel(network, dict(model.config), dict(model.meta), model.policy,
                         stride=int(box["stride"]),
                         receptive_field=int(box["rf"]), train_size=tuple(shape[1:3]),
                         head=plan.head, changes=tuple(plan.changes),
                         head_convs=tuple("/".join(p) for p in plan.transforms),
                         trunk_size=plan.trunk_size, source=model)
    return fcn, {"params": params, "state": state}


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


# ----------------------------------------------------------------------------------------
# Reporting and the benchmark.

def describe(fcn: FullyConvModel, sizes: Sequence[int] = ()) -> str:
    """A few lines: head kind, changes, stride, receptive field, map sizes for ``sizes``."""
    th, tw = fcn.train_size
    lines = [f"{fcn.name}: {fcn.head} head converted at {th}x{tw}; stride {fcn.stride}, "
             f"receptive field {fcn.receptive_field}"]
    lines += [f"  {c}" for c in fcn.changes]
    for size in sizes:
        try:
            ph, pw = fcn.map_shape(size, size)
            lines.append(f"  {size}x{size} -> {ph}x{pw} map")
        except ValueError as err:
            lines.append(f"  {size}x{size} -> does not fit ({str(err).splitlines()[0][:120]}...)")
    return "\n".join(lines)


def macs(model: Model, input_shape) -> int:
    """Multiply-accumulates of one forward pass (sum of the summary's per-layer MACs)."""
    shape = tuple(input_shape)

    def run(key):
        with nn.recording() as rec:
            model.network.init(key, shape)
        box.extend(rec.rows)
        return jnp.zeros(())

    box: list = []
    jax.eval_shape(run, jax.random.key(0))
    return int(sum(r["macs"] for r in box))


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def benchmark_dense_eval(model_name: str = "vgg16", size: int = 384, repeats: int = 3, *,
                         num_classes: int | None = None,
                         variants: Sequence[str] = ("im2col_head", "xla_head"),
                         crops_per_example: bool = False, seed: int = 0, log=print) -> dict:
    """The notes' comparison: the converted net on one ``size`` image against the crops
    of the training size at the network stride, as one batch and as separate calls, timed
    in one run (medians of ``repeats``, interleaved, after a warm-up that also compiles).

    ``variants`` of the converted pass: ``im2col_head`` (the default conversion: the head
    convs as patches + one matmul, the same matrix products as the crops' dense layers) and
    ``xla_head`` (the head convs as XLA convolutions: the notes' plain implementation).
    ``crops_per_example``: also time the crops through ``lax.map`` in one program.
    Random weights (He init); speed does not depend on them. Returns seconds, GFLOP/s and
    the speedups beside the ideal FLOP ratio.
    """
    import zoo  # local: the registry imports every family

    model = zoo.create(model_name, **({} if num_classes is None else {"num_classes": num_classes}))
    variables = xla.jit(model.init, static_argnums=1)(jax.random.key(seed), model.default_input_shape())
    c = model.input_shape[-1]
    image = jax.random.normal(jax.random.key(seed + 1), (1, size, size, c))
    impls = {"im2col_head": "im2col", "xla_head": "xla", "auto_head": None}
    fcns = {}
    for variant in variants:
        if variant not in impls:
            raise ValueError(f"unknown variant {variant!r}; choose from {sorted(impls)}")
        fcns[variant] = convert(model, variables, head_impl=impls[variant])
    fcn = next(iter(fcns.values()))[0]
    batch, (rows, cols) = crops(image, fcn.train_size, fcn.stride)
    n_crops = rows * cols
    crop_macs = macs(model, (1, *model.input_shape)) * n_crops
    big_macs = macs(fcn, (1, size, size, c))
    result = dict(model=model_name, size=size, crops=n_crops, map=(rows, cols),
                  ideal_ratio=crop_macs / big_macs, gflop_big=2 * big_macs / 1e9,
                  gflop_crops=2 * crop_macs / 1e9, repeats=repeats)
    p, s = variables["params"], variables["state"]
    crop_fn = xla.jit(lambda p, s, x: model.apply(p, s, x)[0])
    singles = [batch[k:k + 1] for k in range(n_crops)]
    runners = {"crops_batched": lambda: crop_fn(p, s, batch),
               "crops_calls": lambda: [crop_fn(p, s, x1) for x1 in singles][-1]}
    if crops_per_example:
        map_fn = xla.jit(lambda p, s, x: jax.lax.map(
            lambda xi: model.apply(p, s, xi[None])[0][0], x))
        runners["crops_lax_map"] = lambda: map_fn(p, s, batch)
    for variant, (f, fv) in fcns.items():
        fn = xla.jit(lambda p, s, x, f=f: f.network.apply(p, s, x, policy=f.policy)[0])
        runners[f"fcn_{variant}"] = (lambda fn=fn, fv=fv: fn(fv["params"], fv["state"], image))
    outputs = {}
    for name, run in runners.items():  # warm-up: compiles
        t0 = time.perf_counter()
        outputs[name] = jax.block_until_ready(run())
        result[f"first_call_s/{name}"] = time.perf_counter() - t0
    # The same numbers? Only where no zero padding reaches a cell (see compare_with_crops).
    crop_scores = np.asarray(outputs["crops_batched"])
    for name in runners:
        if name.startswith("fcn_"):
            result[f"vs_crops/{name}"] = compare_with_crops(outputs[name][0], crop_scores)
    del outputs
    times = {name: [] for name in runners}
    for _ in range(repeats):  # interleaved, so that load changes hit every variant alike
        for name, run in runners.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        result[name] = float(np.median(ts))
    result["crops_batched_gflops"] = result["gflop_crops"] / result["crops_batched"]
    for variant in fcns:
        t = result[f"fcn_{variant}"]
        result[f"gflops/fcn_{variant}"] = result["gflop_big"] / t
        result[f"speedup_vs_batched/fcn_{variant}"] = result["crops_batched"] / t
        result[f"speedup_vs_calls/fcn_{variant}"] = result["crops_calls"] / t
    if log:
        log(format_benchmark(result))
    return result


def format_benchmark(r: Mapping) -> str:
    lines = [f"{r['model']} dense evaluation at {r['size']}x{r['size']}: {r['map'][0]}x{r['map'][1]} "
             f"map = {r['crops']} crops; ideal FLOP ratio {r['ideal_ratio']:.2f}x "
             f"(medians of {r['repeats']})",
             f"  crops as one batch: {r['crops_batched']:.3f} s ({r['crops_batched_gflops']:.0f} GFLOP/s)",
             f"  crops as {r['crops']} calls: {r['crops_calls']:.3f} s"]
    if "crops_lax_map" in r:
        lines.append(f"  crops through lax.map: {r['crops_lax_map']:.3f} s")
    for key in r:
        if key.startswith("vs_crops/"):
            c = r[key]
            lines.append(f"  {key[9:]} vs crops: {c['agree']}/{c['positions']} cells equal "
                         f"(1e-4), same top class at {c['top1_agree']}, max relative "
                         f"difference {c['max_rel']:.3g}, mean {c['mean_rel']:.3g}")
    for key in r:
        if key.startswith("fcn_"):
            lines.append(f"  converted net, {key[4:]}: {r[key]:.3f} s ({r['gflops/' + key]:.0f} GFLOP/s); "
                         f"{r['speedup_vs_batched/' + key]:.2f}x vs batched crops, "
                         f"{r['speedup_vs_calls/' + key]:.2f}x vs calls (ideal {r['ideal_ratio']:.2f}x)")
    return "\n".join(lines)


jax.tree_util.register_static(FullyConvModel)
