"""A run's settings (:class:`TrainConfig`), their validation, and the errors meant for the user.

Every setting is checked in one place, :meth:`TrainConfig.validate`, before any data is
read or anything is compiled: types, finiteness (NaN and infinity are never a setting),
ranges, and the settings that contradict each other by value (``nesterov`` with Adam,
``lr_milestones`` without the step schedule, multi-host settings without ``distributed``).
:func:`check_given` adds the contradictions only the flags the user gave can show (a
``--momentum`` with Adam: the field always has a default). Messages name the flag.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Iterable, Mapping

import jax.numpy as jnp

from .. import checkpoint as ckpt
from ..data import AUGMENTATIONS, DATA_MODES
from ..registry import MAX_CLASSES
from ..tuning import POLICIES


OPTIMIZERS = ("sgd", "adam", "adamw")
#: --augment: "auto" picks by the data's channels and the input size (zoo.data.augment)
AUGMENT_CHOICES = ("auto", *AUGMENTATIONS)
SCHEDULES = ("constant", "step", "cosine", "linear")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: leaf names never weight-decayed: biases and BatchNorm scales (any 0/1-D leaf neither)
NO_DECAY_NAMES = ("bias", "scale")
#: settings that only mean something with ``distributed`` (whose defaults are None)
MULTI_HOST = ("coordinator", "num_processes", "process_id")


class ConfigError(ValueError):
    """A bad setting or input, reported to the user without a traceback."""


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient) became NaN or infinite."""

    def __init__(self, message, *, step=None, epoch=None, checkpoint=None):
        super().__init__(message)
        self.step, self.epoch, self.checkpoint = step, epoch, checkpoint


def flag(name: str) -> str:
    """The command-line flag of a setting, with the field's name where they differ."""
    text = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
    return f"{text} ({name})" if "_" in name else text


# ----------------------------------------------------------------------------------------
# Configuration.

@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run. The defaults train lenet5 on the digits to ~98% in seconds."""

    model: str = "lenet5"
    dataset: Any = "digits"            # name, folder path, or (images, labels) via the API
    augment: str = "auto"              # training augmentation; auto: by channels and size
    strict_images: bool = False        # an unreadable image in a folder: error, not skipped
    data_mode: str = "auto"            # memory, stream, or auto: memory when it fits
    workers: int | None = None         # streaming worker processes; default the CPUs
    data_dir: str | None = None
    val_dataset: str | None = None
    val_fraction: float | None = None
    image_size: int | None = None      # square input side; default: the model's
    num_classes: int | None = None     # default: the dataset's
    epochs: int = 10
    batch_size: int = 64               # global: over all devices and hosts
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9              # sgd only
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    lr_milestones: tuple = ()          # step schedule: epochs where lr *= lr_gamma (default 50%, 75%)
    lr_gamma: float = 0.1
    label_smoothing: float = 0.1       # the digits default; 0 disables
    clip_norm: float | None = None
    dtype: str = "float32"
    policy: str = "tuned"              # conv policy: tuned (zoo tune's cache), default, xla
    seed: int = 0
    output_dir: str | None = None
    resume: str | None = None
    keep: int = 2
    distributed: bool = False
    coordinator: str | None = None     # jax.distributed.initialize arguments (else autodetect)
    num_processes: int | None = None
    process_id: int | None = None
    distributed_timeout: float = 300.0  # seconds to wait for every process to arrive
    pretrained: str | None = None
    freeze: tuple = ()
    backbone_lr_scale: float = 1.0
    aux_logits: bool | None = None     # build the model with aux classifiers (GoogLeNet)
    aux_loss_weight: float | None = None  # side heads' loss weight; default: the model's
    log_every: int = 10                # steps between host syncs (progress bar, NaN check)
    progress: bool = True

    def validate(self) -> "TrainConfig":
        """Check every setting (types, finite values, ranges, contradictions by value);
        raises :class:`ConfigError` naming the flag, the value and what is accepted."""
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("dtype", tuple(DTYPES)), ("policy", POLICIES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose from: "
                                  f"{', '.join(choices)}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"--model must be a model name, got {self.model!r}")
        for name in ("data_dir", "val_dataset", "output_dir", "resume", "coordinator",
                     "pretrained"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
                raise ConfigError(f"{flag(name)} must be a non-empty path or name, got {value!r}")
        if self.data_mode not in DATA_MODES:
            raise ConfigError(f"--data-mode {self.data_mode!r} is not a data mode; choose from: "
                              f"{', '.join(DATA_MODES)}")
        if self.augment not in AUGMENT_CHOICES:
            raise ConfigError(f"--augment {self.augment!r} is not an augmentation; choose from: "
                              f"{', '.join(AUGMENT_CHOICES)}")
        for name in ("nesterov", "distributed", "progress", "strict_images"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{flag(name)} is a switch (True/False), got {getattr(self, name)!r}")
        if self.aux_logits is not None and not isinstance(self.aux_logits, bool):
            raise ConfigError(f"{flag('aux_logits')} is a switch, got {self.aux_logits!r}")
        for name in ("epochs", "batch_size", "keep", "log_every"):
            _integer(name, getattr(self, name), 1)
        _integer("seed", self.seed, 0, 2**32 - 1)
        _integer("image_size", self.image_size, 1, 1 << 16, optional=True)
        _integer("workers", self.workers, 0, 1024, optional=True)
        _integer("num_classes", self.num_classes, 1, MAX_CLASSES, optional=True)
        _integer("num_processes", self.num_processes, 1, optional=True)
        _integer("process_id", self.process_id, 0, optional=True)
        _real("lr", self.lr, 0, None, low_open=True)
        _real("momentum", self.momentum, 0, 1, high_open=True)
        _real("weight_decay", self.weight_decay, 0, None)
        _real("warmup_epochs", self.warmup_epochs, 0, None)
        _real("lr_gamma", self.lr_gamma, 0, 1, low_open=True)
        _real("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        _real("clip_norm", self.clip_norm, 0, None, low_open=True, optional=True)
        _real("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True,
              optional=True)
        _real("backbone_lr_scale", self.backbone_lr_scale, 0, None)
        _real("aux_loss_weight", self.aux_loss_weight, 0, None, optional=True)
        _real("distributed_timeout", self.distributed_timeout, 0, 7 * 86400, low_open=True)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"{flag('warmup_epochs')} {self.warmup_epochs:g} must be less than "
                              f"--epochs {self.epochs}: the warmup would never end")
        self.freeze = _strings("freeze", self.freeze)
        self.lr_milestones = self._milestones()
        self._contradictions()
        return self

    def _milestones(self) -> tuple:
        values = self.lr_milestones
        if values is None:
            return ()
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"{flag('lr_milestones')} must be a list of epochs, got {values!r}")
        values = tuple(values)
        if values and self.schedule != "step":
            raise ConfigError(f"--lr-milestones applies to --schedule step only, not "
                              f"{self.schedule}: drop it or use --schedule step")
        for m in values:
            if isinstance(m, bool) or not isinstance(m, numbers.Real) or not math.isfinite(m) \
                    or not 0 < m < self.epochs:
                raise ConfigError(f"{flag('lr_milestones')}: milestone {m!r} must be an epoch "
                                  f"strictly between 0 and --epochs {self.epochs}")
            if m <= self.warmup_epochs:
                raise ConfigError(f"{flag('lr_milestones')}: milestone {m:g} falls inside the "
                                  f"warmup of {self.warmup_epochs:g} epochs (--warmup-epochs), "
                                  f"where it would be ignored")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ConfigError(f"{flag('lr_milestones')} must increase strictly, got "
                              f"{','.join(f'{m:g}' for m in values)}")
        return values

    def _contradictions(self) -> None:
        if self.val_dataset is not None and self.val_fraction is not None:
            raise ConfigError(f"{flag('val_dataset')} and {flag('val_fraction')} both choose the "
                              f"evaluation data: give one of them")
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError(f"--nesterov applies to --optimizer sgd only, not {self.optimizer}: "
                              f"drop --nesterov or use --optimizer sgd")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("--nesterov needs --momentum > 0 (Nesterov momentum without "
                              "momentum is plain SGD)")
        if not self.distributed:
            given = [flag(k) for k in MULTI_HOST if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)}: multi-host settings apply only with "
                                  f"--distributed (add it, or drop them for a one-process run)")
        if (self.process_id is not None and self.num_processes is not None
                and self.process_id >= self.num_processes):
            raise ConfigError(f"{flag('process_id')} {self.process_id} must be less than "
                              f"{flag('num_processes')} {self.num_processes} (ids run from 0 to "
                              f"{self.num_processes - 1})")
        if self.coordinator is not None:
            host, _, port = str(self.coordinator).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"--coordinator {self.coordinator!r} must be HOST:PORT with a "
                                  f"port from 1 to 65535 (e.g. 10.0.0.1:1234)")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if not isinstance(d["dataset"], (str, os.PathLike)):
            d["dataset"] = "arrays"
        return ckpt.jsonable(d)


def _integer(name, value, low, high=None, *, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{flag(name)} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"from {low} to {high:,}"
        raise ConfigError(f"{flag(name)} must be {bound}, got {value}")


def _real(name, value, low, high, *, low_open=False, high_open=False, optional=False):
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{flag(name)} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{flag(name)} must be a finite number, got {value}")
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        what = (f"{'>' if low_open else '>='} {low:g}" if high is None else
                f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        raise ConfigError(f"{flag(name)} must be {what}, got {value:g}")


def _strings(name, values) -> tuple:
    if values is None:
        return ()
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    if not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{flag(name)} takes non-empty patterns, got {values!r}")
    return values


def given_settings(config, overrides: Mapping[str, Any] = ()) -> set:
    """The settings the caller chose: the keys of a dict (``zoo train`` passes only the
    flags typed) and of ``overrides``; of a :class:`TrainConfig`, the fields off their
    defaults."""
    given = set(overrides)
    if isinstance(config, Mapping):
        given |= {k for k, v in config.items() if v is not None}
    elif isinstance(config, TrainConfig):
        defaults = TrainConfig()
        given |= {f.name for f in dataclasses.fields(TrainConfig)
                  if getattr(config, f.name) != getattr(defaults, f.name)}
    return given


def check_given(cfg: TrainConfig, given: Iterable[str]) -> list[str]:
    """Contradictions among the settings the user gave (:func:`given_settings`): a
    :class:`ConfigError` for a flag that would be silently ignored, or the warnings (one
    line each) for a flag that is harmless to ignore."""
    given = set(given)
    if "momentum" in given and cfg.optimizer != "sgd":
        raise ConfigError(f"--momentum applies to --optimizer sgd only, not {cfg.optimizer} "
                          f"(Adam keeps its own moment estimates): drop --momentum")
    if "lr_gamma" in given and cfg.schedule != "step":
        raise ConfigError(f"--lr-gamma applies to --schedule step only, not {cfg.schedule}: "
                          f"drop it or use --schedule step")
    if "distributed_timeout" in given and not cfg.distributed:
        raise ConfigError(f"{flag('distributed_timeout')} applies only with --distributed")
    if "output_dir" in given and cfg.resume is not None and \
            os.path.realpath(os.fspath(cfg.output_dir)) != os.path.realpath(os.fspath(cfg.resume)):
        raise ConfigError(f"--resume {cfg.resume} continues the run in {cfg.resume}, and "
                          f"--output-dir {cfg.output_dir} names another directory: drop "
                          f"--output-dir (or copy the run there and resume that copy)")
    warnings = []
    if "data_dir" in given and cfg.dataset == "digits" and "val_dataset" not in given:
        warnings.append("--data-dir is ignored: the digits ship with scikit-learn, not TFDS")
    if "workers" in given and cfg.data_mode == "memory":
        warnings.append("--workers is ignored with --data-mode memory: only streamed data "
                        "uses worker processes")
    return warnings


def as_config(config=None, **overrides) -> TrainConfig:
    if config is None:
        config = TrainConfig()
    elif isinstance(config, Mapping):
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(config) - fields
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}")
        config = TrainConfig(**{k: v for k, v in config.items() if v is not None})
    else:
        config = dataclasses.replace(config)
    if overrides:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = set(overrides) - fields
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}")
        config = dataclasses.replace(config, **overrides)
    return config.validate()
