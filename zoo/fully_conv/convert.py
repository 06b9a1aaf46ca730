"""FC -> CONV conversion: the converted :class:`FullyConvModel` and :func:`convert`."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from .. import nn, paths
from ..kernels import xla
from ..registry import Model

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

    # apply is Model's: the input contract, then (below) a map of at least one full crop,
    # then params and state against the abstract init at the input's size.
    def _check_input(self, x):
        super()._check_input(x)
        self.fit_size(x.shape[1], x.shape[2])  # smaller than a crop: no cell means anything

    def abstract_init(self, input_shape=None):
        """As :meth:`Model.abstract_init`; an input smaller than the training size, or one
        that does not fit a layer, raises with the sizes the net takes (:meth:`fit_hint`)."""
        if input_shape is not None and len(input_shape) == 4:
            self.fit_size(input_shape[1], input_shape[2])
        try:
            return super().abstract_init(input_shape)
        except ValueError as err:
            if input_shape is None or len(input_shape) != 4:
                raise
            raise ValueError(f"{err}\n{self.fit_hint(input_shape[1], input_shape[2])}") from err

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
            out = self.output_shape((1, height, width, self.input_shape[-1]))
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
            self.validate(p, s, x)  # at trace time: the input's dtype, params and state
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


def _plan(network: nn.Layer, in_shape, name: str) -> _Plan:
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
            replace[path] = nn.Conv(features, (kh, kw), dilation=dilation, bias=bias)
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


def convert(model: Model, variables: Mapping, input_shape=None):
    """``(fcn_model, fcn_variables)``: the network with its FC/pool head rewritten as convs.

    ``input_shape`` ((H, W, C) or (N, H, W, C)): the size the variables were made for
    (their first dense layer's size depends on it); default the model's ``input_shape``.
    Parameters are reshaped, never retrained; BatchNorm statistics are carried over. The
    converted net keeps the model's conv policy, which runs a dense layer made a conv as
    one matrix product, as the dense layer was (``ConvPolicy.wide_patch``, ``pointwise``).
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
    plan = _plan(model.network, shape, model.name)
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


jax.tree_util.register_static(FullyConvModel)
