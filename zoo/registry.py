"""The model registry: name -> builder, defaults and the family's facts; the :class:`Model`
it builds.

Each family file calls :func:`register` once per variant with everything known about it:
the builder and its default arguments, the descriptive metadata (paper, input size,
mean/std, classifier paths), the published weights (:class:`WeightSpec`) and the rules
that map its parameters to torchvision's keys (:class:`TorchvisionRules`). Listing follows
timm's registry (fnmatch patterns).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np

from . import contract, features, nn
from .contract import MAX_CLASSES, check_config, check_num_classes  # noqa: F401 (re-exported)
from .images import IMAGENET_MEAN, IMAGENET_STD, Transforms
from .kernels import ConvPolicy

#: keys of a model's metadata (what describes it); the other config keys are its builder's
DESCRIPTIVE_KEYS = ("name", "input_shape", "mean", "std", "classifier", "paper", "year",
                    "deviations", "aux_loss_weight", "features", "features_only")
TORCHVISION_URL = "https://download.pytorch.org/models/"


# ----------------------------------------------------------------------------------------
# Facts a family file registers.

@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A published set of weights. ``source`` is ``"torchvision"`` (``url`` + ``file``,
    checked against ``sha256_prefix``) or ``"zoo"`` (``file`` in the package's assets)."""

    tag: str
    model: str
    source: str
    file: str
    num_classes: int
    transforms: Transforms | None      # None: from the file's metadata (zoo weights)
    url: str | None = None
    acc1: float | None = None          # published top-1 on the ImageNet-1k val set, %
    acc5: float | None = None
    origin: str = ""                   # e.g. torchvision's enum name
    classes: str = "imagenet"          # "imagenet", or the class names live in the file

    @property
    def sha256_prefix(self) -> str | None:
        """The hash prefix in the file name (torch.hub's rule: ``-<hex>.``)."""
        m = re.search(r"-([a-f0-9]+)\.", self.file)
        return m.group(1) if m and self.source == "torchvision" else None


def torchvision_weights(tag: str, model: str, file: str, acc1: float, acc5: float,
                        origin: str, *, resize: int = 256,
                        transform_input: bool = False) -> WeightSpec:
    """A torchvision ImageNet-1k checkpoint: crop 224, bilinear, ImageNet mean/std
    (``transform_input``: torchvision GoogLeNet's ``(x*std + mean - 0.5) / 0.5``)."""
    transforms = Transforms(resize=resize, crop=224, transform_input=transform_input)
    if transform_input:
        transforms = dataclasses.replace(transforms, mean=(0.5,) * 3, std=(0.5,) * 3)
    return WeightSpec(tag=tag, model=model, source="torchvision", file=file,
                      url=TORCHVISION_URL + file, num_classes=1000, transforms=transforms,
                      acc1=acc1, acc5=acc5, origin=origin)


@dataclasses.dataclass(frozen=True)
class TorchvisionRules:
    """How a family's ``/`` module paths become torchvision module names.

    ``segments``: positional families (torchvision's ``nn.Sequential``): the model's
    top-level layers are cut at the named layers (``(prefix, end)``: up to, not including,
    ``end``; ``None``: to the last layer) and the i-th layer of a segment is ``prefix.i``.
    ``rename``: regex substitutions applied in order to the module path. Then ``/``
    becomes ``.``. ``optional``: regexes of source keys dropped when the model has nothing
    for them (GoogLeNet's aux heads)."""

    segments: tuple[tuple[str, str | None], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    optional: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything registered about one model name."""

    name: str
    builder: Callable[..., nn.Layer]
    defaults: Mapping[str, Any]        # the builder's arguments, num_classes included
    meta: Mapping[str, Any]            # DESCRIPTIVE_KEYS
    weights: tuple[WeightSpec, ...] = ()
    torchvision: TorchvisionRules | None = None


# ----------------------------------------------------------------------------------------
# The model.

def _split(config: Mapping, meta: Mapping | None) -> tuple[dict, dict]:
    config = dict(config)
    if meta is None:
        meta = {k: config.pop(k) for k in DESCRIPTIVE_KEYS if k in config}
    meta = dict(meta)
    classifier = meta.get("classifier", ())
    meta["classifier"] = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return config, meta


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Model:
    """A built network, its builder arguments (``config``), what describes it (``meta``:
    ``name``, ``input_shape`` (H, W, C) of the published model, ``mean``/``std`` per
    channel for inputs in [0, 1], ``classifier`` paths, ``paper``, ...) and its conv
    ``policy`` (:class:`zoo.ConvPolicy`).

    ``Model(network, config, meta=None)``: without ``meta`` the descriptive keys are taken
    out of ``config`` (handy for a hand-built net). A model is hashable and a pytree without
    leaves: a static or a plain argument of ``jax.jit``. Models are equal when they share the
    network, config, metadata and policy, so a program traced for one policy is never
    reused for another.
    """

    network: nn.Layer
    config: Mapping[str, Any]
    meta: Mapping[str, Any]
    policy: ConvPolicy

    def __init__(self, network: nn.Layer, config: Mapping[str, Any],
                 meta: Mapping[str, Any] | None = None, policy: ConvPolicy | None = None):
        config, meta = _split(config, meta)
        if "num_classes" in config:   # 0: headless, the features
            config["num_classes"] = check_num_classes(meta.get("name", "model"),
                                                      config["num_classes"], headless=True)
        for name, value in (("network", network), ("config", config), ("meta", meta),
                            ("policy", policy or ConvPolicy())):
            object.__setattr__(self, name, value)

    def __eq__(self, other):
        return (type(other) is type(self) and other.network is self.network
                and other.policy == self.policy and dict(other.config) == dict(self.config)
                and dict(other.meta) == dict(self.meta))

    def __hash__(self):
        return hash((type(self), id(self.network), self.policy))

    # -- what it is
    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) at which the published model runs."""
        return tuple(self.meta["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta.get("mean", IMAGENET_MEAN))

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta.get("std", IMAGENET_STD))

    @property
    def classifier(self) -> tuple[str, ...]:
        """Param paths of the layers that map features to classes (GoogLeNet: its aux
        heads' last layers too): re-initialised when fine-tuning to another class count."""
        return tuple(self.meta.get("classifier", ()))

    @property
    def features_only(self) -> bool:
        """Whether :meth:`apply` returns ``{stage: activation}`` (``features_only=True``)."""
        return bool(self.meta.get("features_only"))

    @property
    def feature_info(self) -> list[dict]:
        """Per stage of the family (``features=`` of its registration): ``name``,
        ``channels``, ``stride`` (reduction from the input), ``receptive_field`` and
        ``shape`` (H, W, C) at the native input size, from the summary's arithmetic."""
        return features.feature_info(self.network, self.default_input_shape(),
                                     self.meta.get("features", ()))

    @property
    def aux_loss_weight(self) -> float:
        return float(self.meta.get("aux_loss_weight") or 0.0)

    def metadata(self) -> dict:
        """Builder arguments and metadata in one dict (what checkpoints record as ``config``)."""
        return {**self.meta, **self.config}

    def with_policy(self, policy: ConvPolicy) -> "Model":
        """The same network and config under another conv policy (a different model)."""
        if not isinstance(policy, ConvPolicy):
            raise TypeError(f"policy must be a zoo.ConvPolicy, got {policy!r}")
        return self._replace(policy=policy)

    def _replace(self, **changes) -> "Model":
        new = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(self, f.name)))
        return new

    # -- running it
    def default_input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, *self.input_shape)

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

    def apply(self, params, state, x, *, train: bool = False, rng=None, check: bool = True,
              capture=()):
        """``(logits, new_state)``; ``train=True`` uses batch statistics and dropout (which
        needs ``rng``). ``capture``: layer paths ("layer2", "pool5", "layer3/1"; see
        ``zoo.nn.layer_names(model.network)``) whose outputs are returned too, as
        ``(logits, new_state, {path: activation})``, from the same program (differentiable,
        under ``jit``, in either mode). A ``features_only`` model returns ``{stage:
        activation}`` in place of the logits; a headless one (``num_classes=0``) the features
        that fed the classifier.

        The call is checked before anything runs (:meth:`validate`), so a wrong argument is
        an error that names it, never a wrong result. ``x``: floating images (N, H, W, C),
        N >= 1, normalised with :attr:`mean`/:attr:`std`; integer and bool images are a
        ``TypeError`` (write ``x.astype(jnp.float32) / 255``, then ``(x - mean) / std``).
        ``params``/``state``: the tree and shapes of :meth:`init` at this input size
        (``state=None`` is taken as ``{}`` when the model keeps no state). ``rng``: one key,
        ``jax.random.key(0)`` or a legacy ``jax.random.PRNGKey(0)``. Under ``jit`` the
        checks run once, at trace time; ``check=False`` skips the params/state comparison
        (for speed in an eager loop; the input and rng checks, microseconds, always run)."""
        state = self.validate(params, state, x, train=train, rng=rng, check=check)
        names = features.check_capture(self.network, capture, self.name)
        stages = tuple(self.meta.get("features", ())) if self.features_only else ()
        if not names and not stages:
            return self.network.apply(params, state, x, train=train, rng=rng, policy=self.policy)
        y, new_state, got = features.run_capturing(self.network, params, state, x,
                                                   tuple(dict.fromkeys(names + stages)),
                                                   train=train, rng=rng, policy=self.policy)
        if stages:
            y = {k: got[k] for k in stages}
        return (y, new_state, {k: got[k] for k in names}) if names else (y, new_state)

    def apply_with_aux(self, params, state, x, *, train: bool = False, rng=None,
                       check: bool = True):
        """``(logits, {head: logits}, new_state)``: :meth:`apply` plus the side heads'
        outputs (GoogLeNet's auxiliary classifiers; ``{}`` for a model without any), which
        run here in train and eval mode alike. Their loss weight is
        :attr:`aux_loss_weight`. Checked as :meth:`apply`."""
        fn = self.network.apply_with_aux
        if fn is None:
            logits, new_state = self.apply(params, state, x, train=train, rng=rng, check=check)
            return logits, {}, new_state
        state = self.validate(params, state, x, train=train, rng=rng, check=check)
        return fn(params, state, x, train=train, rng=rng, policy=self.policy)

    def validate(self, params, state, x, *, train: bool = False, rng=None, check: bool = True):
        """Raise what :meth:`apply` raises for these arguments, computing nothing: the input
        contract, the rng, and (``check``) ``params``/``state`` against the abstract init at
        ``x``'s size, cached per size; a layer that does not fit the input names itself.
        Returns the state to run with."""
        self._check_input(x)
        contract.check_rng(rng, name=self.name, train=train, dropout=self._dropout_paths)
        if not check:
            return {} if state is None else state
        return contract.check_variables(params, state, self._expected(tuple(x.shape[1:])),
                                        name=self.name, classifier=self.classifier,
                                        native=self._native_variables)

    def _check_input(self, x):
        contract.check_input(x, name=self.name, channels=self.input_shape[-1], mean=self.mean,
                             std=self.std, example=self.default_input_shape())

    def _expected(self, hwc) -> contract.Expected:
        cache = self.__dict__.setdefault("_expected_by_size", {})
        if hwc not in cache:
            abstract, _ = self.abstract_init((1, *hwc))
            cache[hwc] = contract.Expected.of(abstract, "x".join(map(str, hwc)))
        return cache[hwc]

    def _native_variables(self):
        return self._expected(self.input_shape).abstract, "x".join(map(str, self.input_shape))

    def _dropout_paths(self) -> list[str]:
        return ["/".join(p) for p, layer in nn.leaf_layers(self.network)
                if layer.kind == "dropout" and layer.config["rate"] > 0]

    def _check_shape(self, shape):
        channels = self.input_shape[-1]
        if len(shape) != 4 or shape[-1] != channels:
            raise ValueError(f"{self.name} expects NHWC input with {channels} channel(s), "
                             f"e.g. {self.default_input_shape()}; got shape {shape}")


# ----------------------------------------------------------------------------------------
# Registering, listing, building.

_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, builder: Callable[..., nn.Layer], *, input_shape, num_classes: int,
             classifier, paper: str, year: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
             deviations: str = "", aux_loss_weight: float | None = None,
             weights: tuple[WeightSpec, ...] = (), torchvision: TorchvisionRules | None = None,
             features: tuple[str, ...] = (), **defaults) -> None:
    """Register ``builder(num_classes=..., **defaults) -> Layer`` under ``name`` with its
    metadata, its published ``weights`` and its ``torchvision`` key rules. ``classifier``:
    the path (or paths) of the layers that output classes; ``features``: the layers whose
    outputs are its stages (``features_only=True``), shallow to deep."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    meta = dict(name=name, input_shape=tuple(input_shape), mean=tuple(mean), std=tuple(std),
                classifier=(classifier,) if isinstance(classifier, str) else tuple(classifier),
                paper=paper, year=year, deviations=deviations, features=tuple(features))
    if aux_loss_weight is not None:
        meta["aux_loss_weight"] = float(aux_loss_weight)
    for w in weights:
        if w.model != name:
            raise ValueError(f"weights {w.tag} are for {w.model}, registered with {name}")
    _REGISTRY[name] = ModelSpec(name, builder, dict(defaults, num_classes=num_classes), meta,
                                tuple(weights), torchvision)


@functools.cache
def _load_families():
    from . import models  # noqa: F401  (registers every family)


def spec(name: str) -> ModelSpec:
    """Everything registered about ``name``; an unknown name lists the known ones."""
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(list_models())}")
    return _REGISTRY[name]


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Registered names matching an fnmatch ``pattern``, sorted; ``pretrained=True``: only
    those with published weights."""
    _load_families()
    return sorted(n for n, s in _REGISTRY.items()
                  if fnmatch.fnmatchcase(n, pattern) and (s.weights or not pretrained))


def all_weights() -> dict[str, WeightSpec]:
    """tag -> :class:`WeightSpec` of every registered model."""
    _load_families()
    return {w.tag: w for s in _REGISTRY.values() for w in s.weights}


def list_weights(pattern: str = "*") -> list[str]:
    """Weight tags matching an fnmatch ``pattern`` (``"resnet*"``), sorted."""
    return sorted(t for t in all_weights() if fnmatch.fnmatchcase(t, pattern))


def get_config(name: str) -> dict:
    """The registered defaults and metadata of ``name`` in one dict."""
    s = spec(name)
    return {**s.meta, **s.defaults}


def create(name: str, num_classes: int | None = None, *, conv_policy: ConvPolicy | None = None,
           features_only: bool = False, **config) -> Model:
    """Build a registered model. ``config`` overrides its builder's defaults (e.g.
    ``aux_logits=True``); ``conv_policy``: how its convolutions run (default
    ``ConvPolicy()``). ``num_classes=0``: headless, the features that fed the classifier;
    ``features_only=True``: the family's stage outputs (:mod:`zoo.features`)."""
    s = spec(name)
    if num_classes is not None:
        config["num_classes"] = num_classes
    unknown = set(config) - set(s.defaults)
    if unknown:
        raise ValueError(f"{name}: unknown config {sorted(unknown)}; known: {sorted(s.defaults)}")
    if not isinstance(features_only, (bool, np.bool_)):
        raise TypeError(f"{name}: features_only must be True or False, got {features_only!r}")
    classes = check_num_classes(name, config.get("num_classes", s.defaults["num_classes"]),
                                headless=True)
    if features_only and config.get("num_classes", 0) != 0:
        raise ValueError(f"{name}: features_only=True has no classifier; leave num_classes out")
    bare = features_only or classes == 0
    args = check_config(name, {**s.defaults, **config, **({"num_classes": 1} if bare else {})},
                        s.defaults)
    network, meta = s.builder(**args), s.meta
    if bare:
        if args.get("aux_logits"):
            raise ValueError(f"{name}: aux_logits=True needs classes; leave it out with "
                             f"num_classes=0 or features_only=True")
        network = (features.extractor(network, meta["features"], name) if features_only
                   else features.headless(network, meta["classifier"], name))
        args["num_classes"] = 0
        meta = {**meta, "classifier": (), **({"features_only": True} if features_only else {})}
    return Model(network, args, meta, conv_policy)


def from_metadata(meta: Mapping[str, Any], *, conv_policy: ConvPolicy | None = None) -> Model:
    """Rebuild the model a checkpoint or weights file was saved from: its ``model`` name,
    the builder arguments in its ``config`` and its ``num_classes``."""
    name = meta.get("model")
    if not name:
        raise ValueError("the metadata names no model (no 'model' key)")
    if not isinstance(name, str):
        raise ValueError(f"the metadata's 'model' must be a model name, got {name!r}")
    saved = dict(meta.get("config") or {})
    overrides = {k: v for k, v in saved.items() if k in spec(name).defaults}
    if saved.get("features_only") is True:
        overrides = {k: v for k, v in overrides.items() if k != "num_classes"}
        overrides["features_only"] = True
    if meta.get("num_classes"):
        overrides["num_classes"] = meta["num_classes"]
    if isinstance(overrides.get("num_classes"), str) and overrides["num_classes"].isdigit():
        overrides["num_classes"] = int(overrides["num_classes"])
    try:
        return create(name, conv_policy=conv_policy, **overrides)
    except TypeError as err:  # metadata is data: a wrong type is a bad file, not a bad call
        raise ValueError(f"the metadata's config does not build {name}: {err}") from None


jax.tree_util.register_static(Model)
