"""Model registry: name -> builder, default config; and the :class:`Model` it builds.

Inspired by timm's registry (fnmatch listing, a pretrained config per model): each family
file calls :func:`register` with a builder and the variant's defaults.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from . import nn
from .images import IMAGENET_MEAN, IMAGENET_STD
from .kernels import ConvPolicy



@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A built network plus its config and its conv policy.

    ``config`` holds at least ``name``, ``input_shape`` (H, W, C) at which the published
    model runs, ``mean``/``std`` (per channel, for inputs scaled to [0, 1]),
    ``num_classes`` and ``classifier`` (the param path of the final layer). ``policy`` is
    how its convolutions run (:class:`zoo.ConvPolicy`).

    A model is hashable and a pytree without leaves: it may be a static argument of
    ``jax.jit`` or a plain one. Two models are equal when they share the network, the config
    and the policy, so a program traced for one policy is never reused for another.
    """

    network: nn.Layer
    config: Mapping[str, Any]
    policy: ConvPolicy = ConvPolicy()

    def __eq__(self, other):
        return (type(other) is type(self) and other.network is self.network
                and other.policy == self.policy and dict(other.config) == dict(self.config))

    def __hash__(self):
        return hash((type(self), id(self.network), self.policy))

    def with_policy(self, policy: ConvPolicy) -> "Model":
        """The same network and config under another conv policy (a different model)."""
        if not isinstance(policy, ConvPolicy):
            raise TypeError(f"policy must be a zoo.ConvPolicy, got {policy!r}")
        return dataclasses.replace(self, policy=policy)

    @property
    def name(self) -> str:
        return self.config["name"]

    def default_input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, *self.config["input_shape"])

    def init(self, key, input_shape=None) -> dict:
        """``{"params", "state"}`` for inputs of ``input_shape`` (N, H, W, C); the default is
        the native size. Geometry is checked here: a layer that does not fit raises."""
        shape = tuple(input_shape) if input_shape is not None else self.default_input_shape()
        self._check_shape(shape)
        _, params, state = self.network.init(key, shape)
        return {"params": params, "state": state}

    def output_shape(self, input_shape=None) -> tuple[int, ...]:
        """The output shape for ``input_shape``, computed without allocating weights."""
        return self.abstract_init(input_shape)[1]

    def abstract_init(self, input_shape=None):
        """``(variables as ShapeDtypeStructs, output shape)``: ``init`` without the memory."""
        shape = tuple(input_shape) if input_shape is not None else self.default_input_shape()
        self._check_shape(shape)
        box = {}

        def run(key):
            box["out"], params, state = self.network.init(key, shape)
            return {"params": params, "state": state}

        return jax.eval_shape(run, jax.random.key(0)), tuple(box["out"])

    def apply(self, params, state, x, *, train: bool = False, rng=None):
        """``(logits, new_state)``; ``train=True`` uses batch statistics and dropout (which
        needs ``rng``)."""
        self._check_shape(tuple(x.shape))
        self._check_rng(train, rng)
        return self.network.apply(params, state, x, train=train, rng=rng, policy=self.policy)

    def apply_with_aux(self, params, state, x, *, train: bool = False, rng=None):
        """``(logits, {head: logits}, new_state)``: :meth:`apply` plus the side heads'
        outputs (GoogLeNet's auxiliary classifiers; ``{}`` for a model without any), which
        run here in train and eval mode alike. Their loss weight is
        ``config["aux_loss_weight"]``."""
        fn = self.network.apply_with_aux
        if fn is None:
            logits, new_state = self.apply(params, state, x, train=train, rng=rng)
            return logits, {}, new_state
        self._check_shape(tuple(x.shape))
        self._check_rng(train, rng)
        return fn(params, state, x, train=train, rng=rng, policy=self.policy)

    def _check_rng(self, train, rng):
        if train and rng is None:
            dropout = [p for p, layer in nn.leaf_layers(self.network)
                       if layer.kind == "dropout" and layer.config["rate"] > 0]
            if dropout:
                raise ValueError(f"{self.name}: train=True needs an explicit rng for its dropout "
                                 f"layers ({', '.join('/'.join(p) for p in dropout)})")

    def _check_shape(self, shape):
        channels = self.config["input_shape"][-1]
        if len(shape) != 4 or shape[-1] != channels:
            raise ValueError(f"{self.name} expects NHWC input with {channels} channel(s), "
                             f"e.g. {self.default_input_shape()}; got shape {shape}")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[..., nn.Layer]
    defaults: Mapping[str, Any]


_REGISTRY: dict[str, Entry] = {}


def register(name: str, builder: Callable[..., nn.Layer], **defaults) -> None:
    """Register ``builder(**config) -> Layer`` under ``name``. ``defaults`` must give
    ``input_shape``, ``num_classes``, ``classifier``, ``paper``, ``year``; ``mean``/``std``
    default to ImageNet's."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    missing = {"input_shape", "num_classes", "classifier", "paper", "year"} - set(defaults)
    if missing:
        raise ValueError(f"model {name!r} is missing config keys {sorted(missing)}")
    defaults.setdefault("mean", IMAGENET_MEAN)
    defaults.setdefault("std", IMAGENET_STD)
    defaults.setdefault("deviations", "")
    _REGISTRY[name] = Entry(name, builder, dict(defaults, name=name))


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch ``pattern``, sorted."""
    _load_families()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_config(name: str) -> dict:
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return dict(_REGISTRY[name].defaults)


#: keys that describe the model rather than parametrise its builder
DESCRIPTIVE_KEYS = ("name", "input_shape", "mean", "std", "classifier", "paper", "year",
                    "deviations", "aux_loss_weight")


def create(name: str, num_classes: int | None = None, *, conv_policy: ConvPolicy | None = None,
           **config) -> Model:
    """Build a registered model. ``config`` overrides its defaults (e.g. ``aux_logits=True``).
    Builders receive every non-descriptive key, ``num_classes`` included. ``conv_policy``:
    how its convolutions run (default ``ConvPolicy()``)."""
    cfg = get_config(name)
    if num_classes is not None:
        config["num_classes"] = num_classes
    unknown = set(config) - set(cfg)
    if unknown:
        raise ValueError(f"{name}: unknown config {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(config)
    if int(cfg["num_classes"]) < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {cfg['num_classes']}")
    builder_args = {k: v for k, v in cfg.items() if k not in DESCRIPTIVE_KEYS}
    model = Model(_REGISTRY[name].builder(**builder_args), cfg)
    return model if conv_policy is None else model.with_policy(conv_policy)


@functools.cache
def _load_families():
    from . import models  # noqa: F401  (registers every family)


jax.tree_util.register_static(Model)
