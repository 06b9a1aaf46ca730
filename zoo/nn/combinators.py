"""Combinators: named layers in sequence (optionally scanned), parallel branches joined by
concatenation, a residual add with an optional projection, a shared-namespace chain, and a
trunk with side heads. Each passes ``train``, a per-name ``rng`` and the ``policy`` to its
children and keeps their params and state under their names.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels import ConvPolicy, native
from .layer import (Layer, captured, current_path, name_key, recorder, scope, side_branch,
                    wanted)
from .layers import Activation

DEFAULT_POLICY = ConvPolicy()

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
    rec = recorder()
    for name, layer in items:
        with scope(name):
            shape, p, s = layer.init(name_key(key, name), shape)
            if rec is not None:
                rec.end(shape)
        if p:
            params[name] = p
        if s:
            state[name] = s
    return shape, params, state


def _apply_children(items, params, state, x, train, rng, policy):
    new_state = dict(state)
    i = 0
    while i < len(items):
        name, layer = items[i]
        folded = _foldable(items, i, x, train, policy)
        fold = {"then": _fold(folded, params, state, rng, policy)} if folded else {}
        with scope(name):
            x, s = layer.apply(params.get(name, {}), state.get(name, {}), x, train=train,
                               rng=name_key(rng, name), policy=policy, **fold)
        if s:
            new_state[name] = s
        # the folded layers' outputs are the conv's now: the last one's is the one kept
        with scope(folded[-1][0] if folded else name):
            captured(x)
        i += 1 + len(folded)
    return x, new_state


def _foldable(items, i, x, train, policy) -> list:
    """The layers after ``items[i]`` that fold into its output: in inference, a conv that
    may run on zoo's compiled forward (float32, or bfloat16 on AMX tiles) followed by
    BatchNorm and/or ReLU, and in float32 then a max pool (the conv applies them by their own
    forms where its forward is XLA's); none whose outputs before the last are asked for, none
    while a summary records the layers."""
    name, layer = items[i]
    dtype = jnp.dtype(x.dtype)
    if (train or layer.kind != "conv" or not isinstance(x, jax.core.Tracer)
            or recorder() is not None or not (policy or DEFAULT_POLICY).native
            or not (dtype == jnp.float32 or (dtype == jnp.bfloat16 and native.amx_here()))):
        return []
    out = []
    for kind, names in (("batchnorm", None), ("activation", ("relu",))):
        j = i + 1 + len(out)
        if j < len(items) and items[j][1].kind == kind and (
                names is None or items[j][1].config.get("name") in names):
            out.append(items[j])
    j = i + 1 + len(out)
    if dtype == jnp.float32 and j < len(items) and items[j][1].kind == "maxpool":
        out.append(items[j])
    if any(wanted(path) for path in [name] + [n for n, _ in out[:-1]]):
        return []
    return out


def _fold(folded, params, state, rng, policy):
    """``then`` for the conv: the folded layers as per-channel terms and as a function."""
    scale = shift = pool = None
    relu = any(layer.kind == "activation" for _, layer in folded)
    if folded[-1][1].kind == "maxpool":
        cfg = folded[-1][1].config
        pool = (cfg["window"], cfg["stride"], cfg["padding"], cfg["rounding"])
    if folded[0][1].kind == "batchnorm":
        bn_name, bn = folded[0]
        p, s = params[bn_name], state[bn_name]
        scale = p["scale"] * jax.lax.rsqrt(s["var"] + bn.config["eps"])
        shift = p["bias"] - s["mean"] * scale

    def after(y):
        for n, layer in folded:
            with scope(n):
                y, _ = layer.apply(params.get(n, {}), state.get(n, {}), y, train=False,
                                   rng=name_key(rng, n), policy=policy)
        return y
    return scale, shift, relu, after, pool


def _signature(layer: Layer):
    """What a layer computes, as far as its description tells: kind, config and children."""
    return (layer.kind, repr(sorted(layer.config.items())),
            tuple((name, _signature(child)) for name, child in layer.children))


def _leaf_shapes(tree):
    return jax.tree.structure(tree), [(np.shape(a), jnp.result_type(a))
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
        policy = policy or DEFAULT_POLICY
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


def _branch_geometry(rec, ends):
    """After parallel branches, the summary's receptive field and stride are their max."""
    if rec is not None:
        rec.rf = max(rf for rf, _ in ends)
        rec.jump = max(j for _, j in ends)


def Concat(branches: NamedLayers, axis: int = -1) -> Layer:
    """Parallel named branches on the same input, concatenated on channels (Inception)."""
    items = _named(branches)

    def init(key, in_shape):
        rec = recorder()
        start = (rec.rf, rec.jump) if rec else None
        shapes, params, state, ends = [], {}, {}, []
        for name, layer in items:
            if rec:
                rec.rf, rec.jump = start
            shape, p, s = _init_children(((name, layer),), key, in_shape)
            shapes.append(shape)
            params.update(p)
            state.update(s)
            if rec:
                ends.append((rec.rf, rec.jump))
        if len({s[:axis] + s[axis + 1:] if axis != -1 else s[:-1] for s in shapes}) != 1:
            raise ValueError(f"layer '{current_path()}': branch outputs differ outside the concat "
                             f"axis: {dict(zip((n for n, _ in items), shapes))}")
        _branch_geometry(rec, ends)
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
        rec = recorder()
        start = (rec.rf, rec.jump) if rec else None
        out_shape, params, state = _init_children(body_items, key, in_shape)
        ends = [(rec.rf, rec.jump)] if rec else []
        sc_shape = in_shape
        if sc_items:
            if rec:
                rec.rf, rec.jump = start
            sc_shape, p, s = _init_children(sc_items, key, in_shape)
            params.update(p)
            state.update(s)
            if rec:
                ends.append((rec.rf, rec.jump))
        if tuple(sc_shape) != tuple(out_shape):
            raise ValueError(f"layer '{current_path()}': residual branch gives {tuple(out_shape)} but "
                             f"the shortcut gives {tuple(sc_shape)}; add a projection shortcut")
        _branch_geometry(rec, ends)
        return out_shape, params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        y, new_state = _apply_children(body_items, params, state, x, train, rng, policy)
        if sc_items:
            x, new_state = _apply_children(sc_items, params, new_state, x, train, rng, policy)
        y = y + x
        return (act.apply({}, {}, y)[0] if act else y), new_state

    return Layer(init, apply, "residual", dict(activation=activation), children)


def Chain(*layers: Layer) -> Layer:
    """Layers applied in order whose params and state share one namespace (no level of
    their own): each reads its children by name. ResNet's pre-activation unit puts its
    BN-ReLU before the split this way (``block/bn1`` beside ``block/conv1`` and
    ``block/downsample``)."""

    def init(key, in_shape):
        shape, params, state = in_shape, {}, {}
        for layer in layers:
            shape, p, s = layer.init(key, shape)
            clash = (params.keys() & p.keys()) | (state.keys() & s.keys())
            if clash:
                raise ValueError(f"layer '{current_path()}': names used twice: {sorted(clash)}")
            params.update(p)
            state.update(s)
        return shape, params, state

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        for layer in layers:  # each returns the whole state, its own children updated
            x, state = layer.apply(params, state, x, train=train, rng=rng, policy=policy)
        return x, state

    children = tuple(item for layer in layers for item in layer.children)
    return Layer(init, apply, "chain", {}, children)


def WithSideHeads(layers: NamedLayers, heads: Mapping[str, Layer],
                  taps: Mapping[str, str]) -> Layer:
    """A sequence of named layers with side heads (GoogLeNet's auxiliary classifiers):
    head ``h`` reads the output of trunk layer ``taps[h]``; heads share the trunk's
    namespace, their params sit beside the trunk's.

    ``apply`` is the trunk's (its output only; heads are not run, their state untouched);
    ``apply_with_aux`` also runs the heads: ``(y, {head: output}, new_state)``. Its kind is
    ``"sequential_with_aux"`` and ``config["taps"]`` names the heads (:mod:`zoo.nn.tree`)."""
    trunk = Sequential(layers)
    items = trunk.children
    trunk_names = [name for name, _ in items]
    for head, tap in taps.items():
        if tap not in trunk_names:
            raise ValueError(f"side head {head!r} taps {tap!r}, which is not a trunk layer")
    head_items = _named(tuple((name, heads[name]) for name in taps))
    _named(items + head_items)  # unique names across trunk and heads
    at: dict[str, list] = {}
    for name, layer in head_items:
        at.setdefault(taps[name], []).append((name, layer))

    def init(key, in_shape):
        shape, params, state = in_shape, {}, {}
        for item in items:
            shape, p, s = _init_children((item,), key, shape)
            params.update(p)
            state.update(s)
            for head in at.get(item[0], ()):
                with side_branch():
                    _, p, s = _init_children((head,), key, shape)
                params.update(p)
                state.update(s)
        return shape, params, state

    def apply_with_aux(params, state, x, *, train=False, rng=None, policy=None):
        new_state, aux = dict(state), {}
        for item in items:
            x, new_state = _apply_children((item,), params, new_state, x, train, rng, policy)
            for head in at.get(item[0], ()):
                aux[head[0]], new_state = _apply_children((head,), params, new_state, x, train,
                                                          rng, policy)
        return x, aux, new_state

    return Layer(init, trunk.apply, "sequential_with_aux", dict(taps=dict(taps)),
                 items + head_items, apply_with_aux=apply_with_aux)
