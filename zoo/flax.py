"""The zoo's models as Flax modules: :class:`Linen` (``flax.linen``) and :class:`NNX`
(``flax.nnx``).

Both run the zoo's own pure ``Model.apply``; nothing is re-implemented, so their outputs are
the zoo model's for the same weights. The variables keep the zoo's ``/`` paths:

- ``Linen``: ``variables["params"]`` of the module is the zoo's params tree and
  ``variables["batch_stats"]`` its BatchNorm state tree (nested under the module's name when
  it is a submodule). ``train=True`` updates the statistics when ``batch_stats`` is mutable;
  dropout draws from the ``"dropout"`` rng.
- ``NNX``: one attribute per top-level layer, holding nested dicts of ``nnx.Param`` and
  ``nnx.BatchStat``, so ``nnx.state(m, nnx.Param)`` has the zoo's params paths.
  ``.train()``/``.eval()`` set ``use_running_average``/``deterministic`` as nnx does; a new
  module is in eval mode.

``pretrained`` (a weight tag such as ``"lenet5.digits"`` or a file) fills the weights at
``init`` through :func:`zoo.weights.load_for_finetuning`: with another class count the
classifier keeps its fresh initialisation. docs/interop.md shows training, freezing a
backbone and checkpointing with Orbax.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.core
import flax.linen as nn
import jax
import numpy as np
from flax import nnx

from . import paths, registry
from .nn import leaf_layers
from .registry import Model

__all__ = ["Linen", "NNX", "zoo_model"]


@functools.lru_cache(maxsize=64)
def _create(name: str, num_classes, features_only: bool) -> Model:
    # One Model per configuration: equal modules share one network, so jit reuses programs.
    extra = {"features_only": True} if features_only else {}
    return registry.create(name, num_classes, **extra)


def zoo_model(model: str | Model, num_classes: int | None = None,
              features_only: bool = False) -> Model:
    """The zoo :class:`Model` a wrapper runs: ``zoo.create(model, num_classes,
    features_only=...)`` for a name, or ``model`` itself when it is already built."""
    if isinstance(model, Model):
        if num_classes is not None or features_only:
            raise ValueError(f"{model.name}: num_classes and features_only apply to a model "
                             f"name; pass them to zoo.create when building the Model yourself")
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a zoo model name (see zoo.list_models()) or a "
                        f"zoo.Model, got {type(model).__name__} {model!r}")
    return _create(model, num_classes, bool(features_only))


def _has_dropout(model: Model) -> bool:
    return any(layer.kind == "dropout" and layer.config["rate"] > 0
               for _, layer in leaf_layers(model.network))


def _initial_variables(model: Model, key, shape, pretrained) -> dict:
    """The zoo's fresh init at ``shape``, with ``pretrained`` weights merged in. The loader
    gets a template of zero-strided NumPy zeros (no memory, and no tracers when ``init``
    runs under ``jit``); the leaves it re-initialises are taken from the fresh init."""
    variables = model.init(key, (1, *tuple(shape)[1:]))
    if pretrained is None:
        return variables
    from . import weights
    template = jax.tree_util.tree_map(
        lambda a: np.broadcast_to(np.zeros((), a.dtype), a.shape), variables)
    loaded, info = weights.load_for_finetuning(pretrained, model=model, variables=template)
    fresh = set(info["reinitialised"])
    return jax.tree_util.tree_map_with_path(
        lambda path, new, old: new if paths.path_str(path) in fresh else old, variables, loaded)


def _plain(tree) -> dict:
    # The zoo compares tree structures: a FrozenDict given by the caller becomes a dict.
    return flax.core.unfreeze(tree) if tree else {}


# ----------------------------------------------------------------------------------------
# Linen.

class Linen(nn.Module):
    """A zoo model as a ``flax.linen`` module.

    ``Linen("resnet18", num_classes=10, pretrained="resnet18.tv_in1k")``; ``model`` is a
    model name (the field is not called ``name``: Linen reserves that for the module's
    own name) or a built :class:`zoo.Model`. ``__call__(x, train=False)`` returns what the
    zoo model returns (logits; pooled features with ``num_classes=0``; a dict of stage
    outputs with ``features_only=True``). Params are created at ``init`` for ``x``'s size.

    ``train=True`` normalises with batch statistics and runs dropout (rng ``"dropout"``);
    the running statistics are written back when ``"batch_stats"`` is mutable and it is
    an error otherwise: ``apply(variables, x, train=True, mutable=["batch_stats"],
    rngs={"dropout": key})``. As with ``flax.linen.BatchNorm``, ``init`` leaves them at
    their initial values."""

    model: Any
    num_classes: int | None = None
    pretrained: str | None = None
    features_only: bool = False

    @property
    def zoo_model(self) -> Model:
        """The zoo :class:`Model` this module runs (its mean/std, classifier paths, ...)."""
        return zoo_model(self.model, self.num_classes, self.features_only)

    @nn.compact
    def __call__(self, x, train: bool = False):
        model = self.zoo_model
        initializing = self.is_initializing()
        if initializing and not self.variables.get("params"):   # once, if called twice
            fresh = _initial_variables(model, self.make_rng("params"), x.shape, self.pretrained)
            for key, tree in fresh["params"].items():
                self.param(key, lambda _, tree=tree: tree)
            for key, tree in fresh["state"].items():
                self.variable("batch_stats", key, lambda tree=tree: tree)
        params = _plain(self.variables.get("params"))
        state = _plain(self.variables.get("batch_stats"))
        update = train and not initializing and bool(jax.tree_util.tree_leaves(state))
        if update and not self.is_mutable_collection("batch_stats"):
            raise ValueError(
                f"{model.name}: train=True updates the BatchNorm statistics, but "
                f"'batch_stats' is not mutable; call apply(variables, x, train=True, "
                f"mutable=['batch_stats']) and keep the returned batch_stats (or train=False "
                f"to use the running statistics)")
        rng = self.make_rng("dropout") if train and _has_dropout(model) else None
        out, new_state = model.apply(params, state, x, train=train, rng=rng)
        if update:
            for key, tree in new_state.items():
                self.put_variable("batch_stats", key, tree)
        return out


# ----------------------------------------------------------------------------------------
# NNX.

def _leaf_paths(tree) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split("/")) for p in paths.flatten(tree))


def _insert(tree: dict, path, leaf, name: str) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{name}: '{'/'.join(path)}' is both a tensor and a layer in its "
                             f"params and state; NNX keeps them in one tree")
    if path[-1] in node:
        raise ValueError(f"{name}: '{'/'.join(path)}' names both a parameter and a state "
                         f"tensor; NNX keeps them in one tree")
    node[path[-1]] = leaf


class NNX(nnx.Module):
    """A zoo model as a ``flax.nnx`` module.

    ``NNX("resnet18", num_classes=10, pretrained=None, features_only=False,
    rngs=nnx.Rngs(0))``; ``name`` may also be a built :class:`zoo.Model`. The params are
    created for ``input_shape`` ((H, W, C) or (N, H, W, C); default the model's native
    size: give it when the params depend on the size, as VGG's fc6 does). ``rngs``: the
    ``params`` stream (or the default) initialises; the ``dropout`` stream (or the
    default), forked as ``nnx.Dropout`` does, drives dropout.

    Each top-level layer is an attribute (``m.conv1["kernel"]`` is an ``nnx.Param``;
    ``m.bn1["mean"]`` an ``nnx.BatchStat``). ``m(x)`` returns the zoo model's output.
    A new module is in eval mode (running statistics, no dropout); ``m.train()`` sets
    ``use_running_average`` and ``deterministic`` to False, ``m.eval()`` to True; in train
    mode a call updates the BatchStat leaves. The zoo runs BatchNorm and dropout in one
    mode, so a model with both needs the two flags equal."""

    def __init__(self, name: str | Model, num_classes: int | None = None,
                 pretrained: str | None = None, features_only: bool = False, *,
                 input_shape=None, rngs: nnx.Rngs):
        model = zoo_model(name, num_classes, features_only)
        if input_shape is None:
            shape = model.default_input_shape()
        else:
            shape = tuple(input_shape)
            shape = (1, *shape) if len(shape) == 3 else shape
        variables = _initial_variables(model, rngs.params(), shape, pretrained)
        reserved = set(dir(self)) | {"zoo_model", "deterministic", "use_running_average",
                                     "rngs", "param_paths", "state_paths"}
        self.zoo_model = model
        self.deterministic = True
        self.use_running_average = True
        self.rngs = rngs["dropout"].fork() if _has_dropout(model) else nnx.data(None)
        self.param_paths = _leaf_paths(variables["params"])
        self.state_paths = _leaf_paths(variables["state"])
        layers: dict = {}
        for group, kind in (("params", nnx.Param), ("state", nnx.BatchStat)):
            for path, leaf in paths.flatten(variables[group]).items():
                _insert(layers, tuple(path.split("/")), kind(leaf), model.name)
        for key, tree in layers.items():
            if key in reserved:
                raise ValueError(f"{model.name}: its layer '{key}' has the name of an "
                                 f"attribute of nnx.Module or zoo.flax.NNX; rename the layer")
            setattr(self, key, nnx.data(tree))

    def _variable(self, path):
        return functools.reduce(lambda node, key: node[key], path[1:], getattr(self, path[0]))

    def _tree(self, leaf_paths) -> dict:
        return paths.unflatten({"/".join(p): self._variable(p).get_value() for p in leaf_paths})

    def pure_variables(self) -> dict:
        """``{"params", "state"}``: the zoo's own trees of the current values, for
        ``zoo_model.apply`` and the zoo's tools (checkpoints, summaries, export)."""
        return {"params": self._tree(self.param_paths), "state": self._tree(self.state_paths)}

    def _train_mode(self) -> bool:
        batch_norm, dropout = bool(self.state_paths), self.rngs is not None
        if batch_norm and dropout and self.use_running_average != self.deterministic:
            raise ValueError(
                f"{self.zoo_model.name}: the zoo runs BatchNorm and dropout in one mode, got "
                f"use_running_average={self.use_running_average}, deterministic="
                f"{self.deterministic}; switch both with .train() or .eval()")
        return not (self.use_running_average if batch_norm else self.deterministic)

    def __call__(self, x):
        train = self._train_mode()
        variables = self.pure_variables()
        rng = self.rngs() if train and self.rngs is not None else None
        out, new_state = self.zoo_model.apply(variables["params"], variables["state"], x,
                                              train=train, rng=rng)
        if train:
            flat = paths.flatten(new_state)
            for path in self.state_paths:
                self._variable(path).set_value(flat["/".join(path)])
        return out
