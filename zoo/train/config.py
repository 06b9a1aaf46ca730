"""A run's settings (:class:`TrainConfig`) and the errors meant for the user."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax.numpy as jnp

from .. import checkpoint as ckpt


OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "linear")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: leaf names never weight-decayed: biases and BatchNorm scales (any 0/1-D leaf neither)
NO_DECAY_NAMES = ("bias", "scale")


class ConfigError(ValueError):
    """A bad setting or input, reported to the user without a traceback."""


class NonFiniteLossError(RuntimeError):
    """The training loss (or gradient) became NaN or infinite."""

    def __init__(self, message, *, step=None, epoch=None, checkpoint=None):
        super().__init__(message)
        self.step, self.epoch, self.checkpoint = step, epoch, checkpoint


# ----------------------------------------------------------------------------------------
# Configuration.

@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run. The defaults train lenet5 on the digits to ~98% in seconds."""

    model: str = "lenet5"
    dataset: Any = "digits"            # name, folder path, or (images, labels) via the API
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
    seed: int = 0
    output_dir: str | None = None
    resume: str | None = None
    keep: int = 2
    distributed: bool = False
    coordinator: str | None = None     # jax.distributed.initialize arguments (else autodetect)
    num_processes: int | None = None
    process_id: int | None = None
    pretrained: str | None = None
    freeze: tuple = ()
    backbone_lr_scale: float = 1.0
    aux_logits: bool | None = None     # build the model with aux classifiers (GoogLeNet)
    aux_loss_weight: float | None = None  # side heads' loss weight; default: the model's
    log_every: int = 10                # steps between host syncs (progress bar, NaN check)
    progress: bool = True

    def validate(self) -> "TrainConfig":
        def choose(name, value, choices):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose from: {', '.join(choices)}")

        choose("optimizer", self.optimizer, OPTIMIZERS)
        choose("schedule", self.schedule, SCHEDULES)
        choose("dtype", self.dtype, tuple(DTYPES))
        for name in ("epochs", "batch_size", "keep", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.backbone_lr_scale < 0:
            raise ConfigError("weight_decay, warmup_epochs and backbone_lr_scale must be >= 0")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if self.image_size is not None and int(self.image_size) < 1:
            raise ConfigError(f"image_size must be >= 1, got {self.image_size}")
        self.freeze = tuple(self.freeze or ())
        self.lr_milestones = tuple(self.lr_milestones or ())
        return self

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if not isinstance(d["dataset"], (str, os.PathLike)):
            d["dataset"] = "arrays"
        return ckpt.jsonable(d)


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
        config = dataclasses.replace(config, **overrides)
    return config.validate()
