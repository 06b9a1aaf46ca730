"""The optimizer: optax SGD (momentum, Nesterov), Adam, AdamW; weight decay masked off
biases and BatchNorm scales; constant, step, cosine and linear schedules with linear warmup;
clipping by global norm; frozen params and a backbone learning-rate factor; the loss."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from .. import paths
from .config import NO_DECAY_NAMES, SCHEDULES, ConfigError, TrainConfig


def frozen_mask(params, patterns: Sequence[str]):
    """Pytree of Python bools: which params the ``--freeze`` patterns select
    (:func:`zoo.paths.mask`). A pattern that selects nothing is a :class:`ConfigError`."""
    try:
        return paths.mask(params, patterns, what="--freeze", noun="parameter")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def frozen_state_mask(state, params, patterns: Sequence[str]):
    """BN statistics frozen with their layer: a state leaf ``L/mean`` is frozen when every
    param of layer ``L`` is frozen (or, for a layer without params, when ``L`` matches)."""
    frozen = {p for p, f in paths.flatten(frozen_mask(params, patterns)).items() if f}
    all_params = list(paths.flatten(params))

    def is_frozen(path, _):
        layer = path.rsplit("/", 1)[0] if "/" in path else path
        own = [p for p in all_params if p.startswith(layer + "/")]
        return all(p in frozen for p in own) if own else paths.matches(path, patterns)

    return paths.map_with_paths(state, is_frozen)


def decay_mask(params):
    """Weight decay on kernels only: not on leaves named ``bias``/``scale`` (biases, BN),
    nor on any 0/1-D leaf (per-channel gains such as LeNet-5's subsampling coefficients)."""
    return paths.map_with_paths(params, lambda p, x: p.rsplit("/", 1)[-1] not in NO_DECAY_NAMES
                    and len(getattr(x, "shape", ())) > 1)


def make_schedule(cfg: TrainConfig, steps_per_epoch: int, scale: float = 1.0) -> optax.Schedule:
    """Learning rate per optimizer step: ``cfg.schedule`` after ``cfg.warmup_epochs`` of
    linear warmup."""
    lr = cfg.lr * scale
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    main = max(total - warm, 1)
    if cfg.schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, main)
    elif cfg.schedule == "linear":
        sched = optax.linear_schedule(lr, 0.0, main)
    elif cfg.schedule == "step":
        milestones = cfg.lr_milestones or (0.5 * cfg.epochs, 0.75 * cfg.epochs)
        bounds = {}
        for m in milestones:
            b = int(round(float(m) * steps_per_epoch)) - warm
            if b > 0:
                bounds[b] = bounds.get(b, 1.0) * cfg.lr_gamma
        sched = optax.piecewise_constant_schedule(lr, bounds)
    else:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose from: {', '.join(SCHEDULES)}")
    if warm:
        sched = optax.join_schedules([optax.linear_schedule(lr / warm, lr, warm), sched], [warm])
    return sched


def _base_optimizer(cfg: TrainConfig, schedule) -> optax.GradientTransformation:
    mask = decay_mask
    if cfg.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask)
    parts = []
    if cfg.weight_decay:  # coupled L2, as torch.optim.SGD/Adam's weight_decay
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    if cfg.optimizer == "sgd":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    else:
        parts.append(optax.adam(schedule))
    return optax.chain(*parts)


def param_labels(params, classifier: Sequence[str] | str | None, frozen) -> Any:
    """``"frozen"``, ``"head"`` (under one of the model's classifier paths) or
    ``"backbone"`` per param."""
    flat_frozen = paths.flatten(frozen)
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())

    def label(path, _):
        if flat_frozen.get(path):
            return "frozen"
        if paths.matches(path, heads):
            return "head"
        return "backbone"

    return paths.map_with_paths(params, label)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, params=None, *,
                   classifier: str | None = None, frozen=None):
    """``(optax transformation, learning-rate schedule of the head)``.

    Clipping by global norm comes first (frozen params contribute zero gradients). With
    frozen params or ``backbone_lr_scale != 1`` the params are split by
    :func:`param_labels` with ``optax.multi_transform``; frozen ones get
    ``set_to_zero`` (no optimizer state)."""
    schedule = make_schedule(cfg, steps_per_epoch)
    tx = _base_optimizer(cfg, schedule)
    any_frozen = frozen is not None and any(jax.tree_util.tree_leaves(frozen))
    if params is not None and (any_frozen or cfg.backbone_lr_scale != 1.0):
        if frozen is None:
            frozen = jax.tree_util.tree_map(lambda _: False, params)
        backbone = (tx if cfg.backbone_lr_scale == 1.0 else
                    _base_optimizer(cfg, make_schedule(cfg, steps_per_epoch, cfg.backbone_lr_scale)))
        tx = optax.multi_transform({"head": tx, "backbone": backbone, "frozen": optax.set_to_zero()},
                                   param_labels(params, classifier, frozen))
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedule


# ----------------------------------------------------------------------------------------
# Losses and outputs.

def cross_entropy(logits, labels, smoothing: float = 0.0):
    """Per-example cross-entropy in float32, with label smoothing ``smoothing`` (the target
    is ``(1 - s) one_hot + s / K``)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if smoothing:
        nll = (1.0 - smoothing) * nll - smoothing * jnp.mean(logp, axis=-1)
    return nll
