"""Training: the train state, the optimizer, jitted steps, the fit loop and runs.

Layers of the API, each usable alone:

- :class:`TrainState`: a pytree ``(params, state, opt_state, step, rng)``.
- :func:`make_schedule`, :func:`make_optimizer`: optax SGD (momentum, Nesterov), Adam,
  AdamW; weight decay masked off biases and BatchNorm scales; constant / step / cosine /
  linear schedules with linear warmup; gradient clipping by global norm; freezing
  (``fnmatch`` patterns over param paths) and a smaller backbone learning rate.
- :class:`Trainer`: the jitted train and eval steps as ONE SPMD program over a device mesh
  with a ``'data'`` axis: the batch is sharded ``P('data')``, params, BN state and optimizer
  state replicated; XLA (GSPMD) inserts the gradient all-reduce, and BatchNorm's batch
  statistics come out over the global batch. One Python call per step (a ``lax.scan`` over
  CPU steps measured 4.7x slower). Dropout keys are ``fold_in(rng, step)``.
- :func:`fit`: epochs with a progress bar, per-epoch evaluation, ``metrics.jsonl``,
  checkpoints (last k and best), a NaN/inf guard and resume.
- :func:`run`: everything ``scripts/train.py`` does, from a :class:`TrainConfig` (or a
  dict): returns the summary dict. :func:`evaluate_run` is ``scripts/evaluate.py``.

Errors meant for the user (unknown model or dataset, batch too large, input that cannot
be fed to the model, ...) are :class:`ConfigError`; a loss that becomes NaN or infinite
raises :class:`NonFiniteLossError` naming the step, after keeping the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from . import checkpoint as ckpt
from . import paths
from . import registry
from .kernels import xla
from .nn import count_params

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


# ----------------------------------------------------------------------------------------
# Train state.

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes during training; a pytree (jit, shard, checkpoint)."""

    params: Any
    state: Any       # BatchNorm running statistics
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    rng: jax.Array   # uint32[2] base key; step s uses fold_in(rng, s)


# ----------------------------------------------------------------------------------------
# Paths, masks, optimizer.

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


# ----------------------------------------------------------------------------------------
# The jitted steps on a device mesh.

def _copy_tree(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


class Trainer:
    """The model's train and eval steps, jitted as one SPMD program over ``devices``
    (default: every device of every process) with the batch sharded on axis ``'data'``."""

    def __init__(self, model, cfg: TrainConfig, steps_per_epoch: int, *, devices=None,
                 params_template=None, state_template=None):
        self.model, self.cfg = model, cfg
        self.dtype = DTYPES[cfg.dtype]
        self.devices = list(devices) if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        if cfg.batch_size % len(self.devices):
            raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the "
                              f"{len(self.devices)} devices; use a multiple of {len(self.devices)}")
        self.process_count = len({d.process_index for d in self.devices})
        self.local_batch = cfg.batch_size // self.process_count
        self.steps_per_epoch = steps_per_epoch
        self.classifier = model.classifier
        self.aux_loss_weight = float(model.aux_loss_weight if cfg.aux_loss_weight is None
                                     else cfg.aux_loss_weight)
        params_template = params_template if params_template is not None else \
            model.abstract_init()[0]["params"]
        self.frozen = frozen_mask(params_template, cfg.freeze)
        self.frozen_state = (frozen_state_mask(state_template, params_template, cfg.freeze)
                             if cfg.freeze and state_template is not None else None)
        self.tx, self.schedule = make_optimizer(cfg, steps_per_epoch, params_template,
                                                classifier=self.classifier, frozen=self.frozen)
        self._train_step = xla.jit(self._step, donate_argnums=0,
                                   out_shardings=(self.replicated, self.replicated))
        self._eval_step = xla.jit(self._eval, out_shardings=(self.replicated, self.batch_sharding))
        self._init = xla.jit(self._make_state, out_shardings=self.replicated)

    # -- state
    def _make_state(self, params, state, rng):
        params, state = _copy_tree(params), _copy_tree(state)
        return TrainState(params, state, self.tx.init(params), jnp.zeros((), jnp.int32), rng)

    def init_state(self, variables: Mapping[str, Any], seed: int = 0) -> TrainState:
        """A fresh :class:`TrainState` from ``{"params", "state"}``, replicated on the mesh
        (the caller's arrays are copied, never donated)."""
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x7A00)
        put = lambda t: jax.device_put(t, self.replicated)  # noqa: E731
        return self._init(put(variables["params"]), put(variables.get("state", {})), put(rng))

    def state_template(self, variables) -> TrainState:
        """Shapes and dtypes of the train state (for restoring a checkpoint)."""
        return jax.eval_shape(self._make_state, variables["params"], variables.get("state", {}),
                              jax.random.PRNGKey(0))

    def place_state(self, ts: TrainState) -> TrainState:
        return self._init_copy(jax.device_put(ts, self.replicated))

    @staticmethod
    def _init_copy(ts):
        return xla.jit(_copy_tree)(ts)

    # -- batches
    def put_batch(self, *arrays):
        """Host arrays of this process's part of the global batch -> global sharded arrays."""
        if self.process_count == 1:
            return tuple(jax.device_put(a, self.batch_sharding) for a in arrays)
        return tuple(jax.make_array_from_process_local_data(self.batch_sharding, a) for a in arrays)

    # -- steps
    def _step(self, ts: TrainState, x, y):
        cfg = self.cfg
        rng = jax.random.fold_in(ts.rng, ts.step)

        def loss_fn(params):
            logits, aux, new_state = self.model.apply_with_aux(
                params, ts.state, x.astype(self.dtype), train=True, rng=rng)
            loss = jnp.mean(cross_entropy(logits, y, cfg.label_smoothing))
            total = loss
            for a in aux.values():
                total = total + self.aux_loss_weight * jnp.mean(
                    cross_entropy(a, y, cfg.label_smoothing))
            return total, (loss, logits, new_state)

        (_, (loss, logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ts.params)
        # Frozen params: zero gradients (XLA then drops their computation), no update.
        grads = jax.tree_util.tree_map(lambda g, f: jnp.zeros_like(g) if f else g, grads, self.frozen)
        updates, opt_state = self.tx.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        params = jax.tree_util.tree_map(lambda new, old, f: old if f else new,
                                        params, ts.params, self.frozen)
        if self.frozen_state is not None:
            new_state = jax.tree_util.tree_map(lambda new, old, f: old if f else new,
                                               new_state, ts.state, self.frozen_state)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "correct": jnp.sum(jnp.argmax(logits, -1) == y)}
        return TrainState(params, new_state, opt_state, ts.step + 1, ts.rng), metrics

    def _eval(self, params, state, x, y, mask):
        logits, _ = self.model.apply(params, state, x.astype(self.dtype), train=False)
        pred = jnp.argmax(logits, -1)
        sums = {"loss": jnp.sum(cross_entropy(logits, y) * mask),
                "correct": jnp.sum((pred == y) * mask), "count": jnp.sum(mask)}
        return sums, pred

    def train_step(self, ts: TrainState, x, y):
        """One optimizer step on a global batch (already placed by :meth:`put_batch`, or host
        arrays in a single-process run). ``ts`` is donated."""
        if not isinstance(x, jax.Array) or x.sharding != self.batch_sharding:
            x, y = self.put_batch(np.asarray(x), np.asarray(y))
        return self._train_step(ts, x, y)

    def eval_step(self, params, state, x, y, mask):
        return self._eval_step(params, state, x, y, mask)

    def lr_at(self, step: int) -> float:
        return float(self.schedule(max(step - 1, 0)))


# ----------------------------------------------------------------------------------------
# Data plumbing: per-process shards, padded eval batches.

def _data():
    from . import data
    return data


def _shard_args() -> dict:
    return dict(num_shards=jax.process_count(), shard_index=jax.process_index())


def eval_batches(trainer: Trainer, ds, *, mean, std):
    """Padded eval batches ``(x, y, mask)``: this process's rows of each global batch, the
    last one zero-padded (mask 0) so that shapes never change (one compilation)."""
    bs = trainer.local_batch
    for x, y in _data().batches(ds, trainer.cfg.batch_size, train=False, seed=0, epoch=0,
                                mean=mean, std=std, drop_remainder=False, **_shard_args()):
        n = len(y)
        if n < bs:
            x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((bs - n,), y.dtype)])
        yield x, y.astype(np.int32), (np.arange(bs) < n).astype(np.float32)


def evaluate(trainer: Trainer, params, state, ds, *, mean, std, predictions: bool = False) -> dict:
    """``{"loss", "accuracy", "count"}`` of ``ds`` (plus ``"predictions"`` and ``"labels"``
    when asked; single-process only)."""
    loss = correct = count = 0.0
    preds = []
    for x, y, mask in eval_batches(trainer, ds, mean=mean, std=std):
        xg, yg, mg = trainer.put_batch(x, y, mask)
        sums, pred = trainer.eval_step(params, state, xg, yg, mg)
        sums = jax.device_get(sums)
        loss += float(sums["loss"])
        correct += float(sums["correct"])
        count += float(sums["count"])
        if predictions:
            preds.append(np.asarray(pred)[mask > 0])
    out = {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1), "count": int(count)}
    if predictions:
        out["predictions"] = np.concatenate(preds) if preds else np.zeros((0,), np.int32)
        out["labels"] = np.asarray(ds.labels)
    return out


# ----------------------------------------------------------------------------------------
# The fit loop.

def _is_main() -> bool:
    return jax.process_index() == 0


def _write_jsonl(path, rows):
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


TIMING_KEYS = ("images_per_second", "seconds")


def fit(trainer: Trainer, ts: TrainState, train_ds, eval_ds, *, mean, std,
        start_epoch: int = 0, history: list | None = None, run_dir: str | None = None,
        manager: ckpt.CheckpointManager | None = None, metadata: Mapping | None = None,
        stop_after_epoch: int | None = None, log: Callable = print):
    """Train ``trainer.cfg.epochs`` epochs from ``start_epoch``; returns ``(ts, history)``.

    Each epoch: shuffled batches from ``(seed, epoch)``, one jitted call per step, a host
    sync every ``log_every`` steps (progress bar, NaN/inf check), evaluation, a line in
    ``run_dir/metrics.jsonl`` and a checkpoint (``manager``). A non-finite loss or gradient
    raises :class:`NonFiniteLossError` before anything is saved, so the last checkpoint
    on disk is the last good one. ``stop_after_epoch`` stops early (as an interruption
    would) after that many epochs in total."""
    from tqdm.auto import tqdm

    cfg = trainer.cfg
    data = _data()
    history = list(history or [])
    spe = trainer.steps_per_epoch
    total_steps = cfg.epochs * spe
    step = int(jax.device_get(ts.step))
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not (cfg.progress and _is_main()), smoothing=0.1, leave=False)
    metrics_path = os.path.join(run_dir, "metrics.jsonl") if run_dir else None
    say = (lambda msg: bar.write(msg, file=sys.stdout)) if not bar.disable and log is not _quiet \
        else log
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                log(f"stopping after epoch {epoch} as asked; continue with --resume {run_dir}")
                break
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            t0 = time.perf_counter()
            pending, loss_sum, correct, seen, n_steps = [], 0.0, 0, 0, 0
            last_rate_t, last_rate_seen = t0, 0

            def flush():
                nonlocal loss_sum, correct, seen, last_rate_t, last_rate_seen
                values = jax.device_get([m for _, m in pending])
                for (s, _), v in zip(pending, values):
                    bad = [k for k in ("loss", "grad_norm") if not np.isfinite(v[k])]
                    if bad:
                        last = manager.latest() if manager else None
                        where = (f"the last good checkpoint is {last}" if last else
                                 "no checkpoint was written yet (this was the first epoch)")
                        raise NonFiniteLossError(
                            f"the {bad[0].replace('_', ' ')} became {v[bad[0]]} at step {s} "
                            f"(epoch {epoch + 1}, batch {s - epoch * spe}); training stopped and "
                            f"nothing after it was saved: {where}. Try a smaller --lr, "
                            f"--clip-norm, or check the data.", step=s, epoch=epoch + 1,
                            checkpoint=last)
                    loss_sum += float(v["loss"]) * cfg.batch_size
                    correct += int(v["correct"])
                    seen += cfg.batch_size
                now = time.perf_counter()
                rate = (seen - last_rate_seen) / max(now - last_rate_t, 1e-9)
                last_rate_t, last_rate_seen = now, seen
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{rate:,.0f}", refresh=False)
                pending.clear()

            batches = data.batches(train_ds, cfg.batch_size, train=True, seed=cfg.seed,
                                   epoch=epoch, mean=mean, std=std, drop_remainder=True,
                                   **_shard_args())
            for x, y in batches:
                xg, yg = trainer.put_batch(x, y.astype(np.int32))
                ts, m = trainer.train_step(ts, xg, yg)
                step += 1
                n_steps += 1
                pending.append((step, m))
                bar.update(1)
                if len(pending) >= cfg.log_every:
                    flush()
            if pending:
                flush()
            if n_steps != spe:
                raise RuntimeError(f"epoch {epoch + 1} had {n_steps} steps, expected {spe}")
            train_seconds = time.perf_counter() - t0
            ev = evaluate(trainer, ts.params, ts.state, eval_ds, mean=mean, std=std)
            row = {"epoch": epoch + 1, "step": step,
                   "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"],
                   "lr": trainer.lr_at(step),
                   "images_per_second": seen / max(train_seconds, 1e-9),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, train acc "
                f"{row['train_accuracy']:.4f}, eval acc {row['eval_accuracy']:.4f}, lr "
                f"{row['lr']:.3g}, {row['images_per_second']:,.0f} img/s, {row['seconds']:.1f} s")
            if manager is not None:
                meta = dict(metadata or {}, epoch=epoch + 1, step=step, metrics=history,
                            eval_accuracy=row["eval_accuracy"])
                manager.save(step, {"params": ts.params, "state": ts.state,
                                    "opt_state": ts.opt_state, "step": ts.step, "rng": ts.rng}, meta)
            if metrics_path and _is_main():
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        bar.close()
    return ts, history


def _quiet(*args, **kwargs):
    pass


# ----------------------------------------------------------------------------------------
# Plots.

def plot_curves(history: Sequence[Mapping], path) -> str | None:
    """Loss and accuracy against epoch (matplotlib, Agg) into ``path``."""
    if not history:
        return None
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["eval_loss"] for r in history], "o-", label="eval")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax2.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    ax2.plot(epochs, [r["eval_accuracy"] for r in history], "o-", label="eval")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return os.fspath(path)


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return m


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path, title="") -> str:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(matrix)
    size = min(max(4.0, 0.45 * k + 2), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(1, keepdims=True)
    ax.imshow(matrix / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 * max(rows[i, 0], 1) else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.fspath(path)


# ----------------------------------------------------------------------------------------
# Runs.

def init_distributed(cfg: TrainConfig) -> None:
    """``jax.distributed.initialize`` (once) with the configured coordinator, or the
    cluster's autodetection (SLURM, Open MPI, TPU) when none is given."""
    if jax.distributed.is_initialized():
        return
    kwargs = {k: v for k, v in (("coordinator_address", cfg.coordinator),
                                ("num_processes", cfg.num_processes),
                                ("process_id", cfg.process_id)) if v is not None}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--distributed: jax.distributed.initialize() failed: {e}. Give "
                          "--coordinator HOST:PORT --num-processes N --process-id I, or launch "
                          "under SLURM / Open MPI (see docs/training.md)") from e


def _dataset_label(spec) -> str:
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec).rstrip("/\\")
        return os.path.basename(s) if os.sep in s or "/" in s else s.replace("tfds:", "")
    return "arrays"


def _default_output_dir(cfg: TrainConfig) -> str:
    stamp = int(time.time())
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        stamp = int(multihost_utils.broadcast_one_to_all(np.int64(stamp)))
    when = datetime.datetime.fromtimestamp(stamp).strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{cfg.model}-{_dataset_label(cfg.dataset)}-{when}")


#: settings that may change when resuming a run (anything else must match its config.json)
RESUME_OVERRIDES = ("epochs", "keep", "distributed", "coordinator", "num_processes",
                    "process_id", "data_dir", "progress", "log_every")


def _resume_config(cfg: TrainConfig, given: Iterable[str] = ()) -> TrainConfig:
    run_dir = cfg.resume
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"--resume {run_dir}: no config.json there; is it a run directory?")
    with open(path) as f:
        saved = json.load(f)["settings"]
    changed = sorted(k for k in given if k not in RESUME_OVERRIDES and k not in ("resume", "output_dir")
                     and ckpt.jsonable(getattr(cfg, k)) != saved.get(k))
    if changed:
        raise ConfigError(f"--resume {run_dir}: cannot change {', '.join(changed)} of a run; "
                          f"only {', '.join(RESUME_OVERRIDES)} may change")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    if values.get("dataset") == "arrays":
        values["dataset"] = cfg.dataset
    for k in given:
        if k in RESUME_OVERRIDES:
            values[k] = getattr(cfg, k)
    values.update(resume=run_dir, output_dir=run_dir)
    return as_config(values)


def _as_classes(ds) -> int:
    return len(ds.class_names)


def _load_pretrained(cfg, model, variables, log):
    from . import weights as pretrained
    try:
        result, info = pretrained.load_for_finetuning(cfg.pretrained, model=model, variables=variables)
    except (ImportError, ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise ConfigError(f"--pretrained {cfg.pretrained}: {e}") from e
    log(info["message"])
    return result, info


def prepare(cfg: TrainConfig, *, model=None, data=None, log: Callable = print) -> dict:
    """Resolve model, data, classes and input shape; every failure is a :class:`ConfigError`."""
    dmod = _data()
    if model is not None:
        model_cfg = model.metadata()
    else:
        try:
            model_cfg = registry.get_config(cfg.model)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    h, w, c = model_cfg["input_shape"]
    if cfg.image_size:
        h = w = int(cfg.image_size)
    image_shape = (h, w, c)
    if data is not None:
        train_ds, eval_ds = data
    else:
        try:
            train_ds, eval_ds = dmod.load(cfg.dataset, image_shape=image_shape,
                                          val_dataset=cfg.val_dataset,
                                          val_fraction=cfg.val_fraction,
                                          data_dir=cfg.data_dir, seed=cfg.seed)
        except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
            raise ConfigError(str(e)) from e
    if tuple(train_ds.images.shape[1:]) != image_shape:
        raise ConfigError(f"the data's images are {tuple(train_ds.images.shape[1:])}, the model "
                          f"needs {image_shape}")
    classes = _as_classes(train_ds)
    num_classes = int(cfg.num_classes or classes)
    top = int(max(np.max(train_ds.labels), np.max(eval_ds.labels) if len(eval_ds) else 0))
    if top >= num_classes:
        raise ConfigError(f"--num-classes {num_classes} is too small: the data has label {top} "
                          f"({classes} classes)")
    if model is None:
        extra = {}
        if cfg.aux_logits is not None:
            if "aux_logits" not in model_cfg:
                raise ConfigError(f"--aux-logits: {cfg.model} has no auxiliary classifiers")
            extra["aux_logits"] = bool(cfg.aux_logits)
        try:
            model = registry.create(cfg.model, num_classes=num_classes, **extra)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    elif model.num_classes < classes:
        raise ConfigError(f"the model has {model.num_classes} outputs, the data "
                          f"{classes} classes")
    try:
        dmod.check_batch_size(train_ds, cfg.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if cfg.batch_size % jax.process_count():
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by the "
                          f"{jax.process_count()} processes")
    try:
        abstract, out_shape = model.abstract_init((1, *image_shape))
    except ValueError as e:
        raise ConfigError(f"{image_shape[0]}x{image_shape[1]}x{image_shape[2]} images cannot be "
                          f"fed to {model.name}: {e}") from e
    return dict(model=model, train_ds=train_ds, eval_ds=eval_ds, image_shape=image_shape,
                num_classes=num_classes, abstract=abstract)


def run(config=None, *, model=None, data=None, devices=None, stop_after_epoch: int | None = None,
        verbose: bool = True, **overrides) -> dict:
    """Train as ``scripts/train.py`` does and return the summary dict.

    ``config``: a :class:`TrainConfig`, a dict of its fields, or None (defaults);
    ``overrides``: fields to change. ``model``: a :class:`zoo.Model` to use instead of
    ``config.model``; ``data``: ``(train_ds, eval_ds)`` :class:`zoo.data.Dataset` s instead
    of loading ``config.dataset``; ``devices``: the mesh (default all).
    """
    given = set(overrides) | (set(config) if isinstance(config, Mapping) else set())
    cfg = as_config(config, **overrides)
    if cfg.resume:
        cfg = _resume_config(cfg, given)
    if cfg.distributed:
        init_distributed(cfg)
    log = print if verbose and _is_main() else _quiet
    t_start = time.perf_counter()

    setup = prepare(cfg, model=model, data=data, log=log)
    model, train_all, eval_all = setup["model"], setup["train_ds"], setup["eval_ds"]
    run_dir = cfg.output_dir or _default_output_dir(cfg)
    manager = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints"), keep=cfg.keep)
    if not cfg.resume and manager.steps():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --output-dir")

    spe = _data().steps_per_epoch(train_all, cfg.batch_size, train=True)
    devices = list(devices) if devices is not None else jax.devices()
    variables = model.init(jax.random.PRNGKey(cfg.seed), (1, *setup["image_shape"]))
    pre_info = {}
    if cfg.pretrained and not cfg.resume:
        variables, pre_info = _load_pretrained(cfg, model, variables, log)
    trainer = Trainer(model, cfg, spe, devices=devices, params_template=variables["params"],
                      state_template=variables["state"])

    if cfg.pretrained or "mean" in pre_info:
        mean = tuple(pre_info.get("mean", model.mean))
        std = tuple(pre_info.get("std", model.std))
    else:
        mean, std = tuple(train_all.mean), tuple(train_all.std)

    num_params = count_params(variables["params"])
    device_kinds = sorted({d.platform for d in devices})
    log(f"model {model.name}: {num_params:,} params, input {'x'.join(map(str, setup['image_shape']))}, "
        f"{setup['num_classes']} classes")
    log(f"data {train_all.name}: {len(train_all):,} train / {len(eval_all):,} eval images "
        f"({_split_name(eval_all)}), {len(train_all.class_names)} classes, augment {train_all.augment}")
    log(f"devices: {len(devices)} x {'/'.join(device_kinds)} in {jax.process_count()} process(es); "
        f"batch {cfg.batch_size} ({cfg.batch_size // len(devices)} per device), {spe} steps/epoch, "
        f"{cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, {cfg.dtype}")
    if cfg.freeze:
        n_frozen = sum(int(np.prod(np.shape(x))) for x, f in zip(
            jax.tree_util.tree_leaves(variables["params"]), jax.tree_util.tree_leaves(trainer.frozen)) if f)
        log(f"frozen: {n_frozen:,} of {num_params:,} params ({', '.join(cfg.freeze)})")

    meta_common = {
        "model": model.name, "config": model.metadata(), "num_classes": setup["num_classes"],
        "input_shape": list(setup["image_shape"]), "mean": list(mean), "std": list(std),
        "class_names": list(train_all.class_names), "dataset": _dataset_label(cfg.dataset),
        "settings": cfg.to_json()}
    history, start_epoch = [], 0
    if cfg.resume:
        latest = manager.latest()
        if latest is None:
            raise ConfigError(f"--resume {run_dir}: no checkpoint in {manager.directory}")
        template = _state_dict(trainer.state_template(variables))
        restored, meta = manager.restore(template, latest)
        ts = trainer.place_state(TrainState(**restored))
        history, start_epoch = list(meta.get("metrics", [])), int(meta["epoch"])
        log(f"resumed {latest}: epoch {start_epoch}, step {int(restored['step'])}")
        if _is_main():
            _write_jsonl(os.path.join(run_dir, "metrics.jsonl"), history)
    else:
        ts = trainer.init_state(variables, cfg.seed)
        if _is_main():
            os.makedirs(run_dir, exist_ok=True)
            _write_jsonl(os.path.join(run_dir, "metrics.jsonl"), [])
    if _is_main():
        resolved = {"settings": cfg.to_json(), "model_config": ckpt.jsonable(model.metadata()),
                    "resolved": ckpt.jsonable({
                        "output_dir": run_dir, "image_shape": setup["image_shape"],
                        "num_classes": setup["num_classes"], "class_names": train_all.class_names,
                        "mean": mean, "std": std, "train_size": len(train_all),
                        "eval_size": len(eval_all), "eval_split": _split_name(eval_all),
                        "steps_per_epoch": spe, "num_params": num_params,
                        "devices": [str(d) for d in devices], "process_count": jax.process_count(),
                        "jax_version": jax.__version__, "zoo_version": _zoo_version()})}
        ckpt.atomic_write_bytes(os.path.join(run_dir, "config.json"),
                                json.dumps(resolved, indent=2).encode())
    log(f"output: {run_dir}")

    try:
        ts, history = fit(trainer, ts, train_all, eval_all, mean=mean, std=std,
                          start_epoch=start_epoch, history=history, run_dir=run_dir,
                          manager=manager, metadata=meta_common, stop_after_epoch=stop_after_epoch,
                          log=log)
    except KeyboardInterrupt:
        log(f"\ninterrupted; the last checkpoint is kept: continue with --resume {run_dir}")
        raise
    return finalize(run_dir, cfg, history, manager, eval_all, t_start,
                    num_params=num_params, completed=len(history) >= cfg.epochs)


def _state_dict(ts: TrainState) -> dict:
    return {f.name: getattr(ts, f.name) for f in dataclasses.fields(TrainState)}


def _split_name(ds) -> str:
    return str(getattr(ds, "split", None) or ds.name)


def _zoo_version() -> str:
    from . import __version__
    return __version__


def finalize(run_dir, cfg, history, manager, eval_ds, t_start, *, num_params, completed) -> dict:
    best = manager.best()
    best_row = max(history, key=lambda r: r["eval_accuracy"]) if history else None
    summary = {
        "model": cfg.model, "dataset": _dataset_label(cfg.dataset), "epochs": cfg.epochs,
        "epochs_completed": len(history), "completed": bool(completed),
        "eval_split": _split_name(eval_ds), "eval_size": len(eval_ds),
        "eval_accuracy": history[-1]["eval_accuracy"] if history else None,
        "best_eval_accuracy": best_row["eval_accuracy"] if best_row else None,
        "best_epoch": best_row["epoch"] if best_row else None,
        "checkpoint": best, "output_dir": run_dir, "num_params": num_params,
        "seconds": time.perf_counter() - t_start,
        "images_per_second": (sum(r["images_per_second"] for r in history[1:]) / (len(history) - 1)
                              if len(history) > 1 else
                              (history[0]["images_per_second"] if history else None)),
    }
    if _is_main():
        plot_curves(history, os.path.join(run_dir, "curves.png"))
        ckpt.atomic_write_bytes(os.path.join(run_dir, "summary.json"),
                                json.dumps(summary, indent=2).encode())
    return summary


# ----------------------------------------------------------------------------------------
# Evaluation of a finished run.

def load_run(run_dir: str, checkpoint: str | None = None):
    """``(model, variables, metadata)`` of a run's best checkpoint (or ``checkpoint``)."""
    path = checkpoint
    if path is None:
        summary_path = os.path.join(run_dir, "summary.json")
        if os.path.exists(summary_path):
            with open(summary_path) as f:
                path = json.load(f).get("checkpoint")
            if path:  # the run's own copy: the directory may have been moved or copied
                path = os.path.join(run_dir, "checkpoints", os.path.basename(path))
        if not path or not os.path.exists(path):
            path = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints")).best() or \
                ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()
    if not path or not os.path.exists(path):
        raise ConfigError(f"no checkpoint found in {run_dir}; is it a run directory?")
    variables, meta = ckpt.load_weights(path)
    try:
        model = registry.from_metadata(meta)
    except ValueError as e:
        raise ConfigError(f"{path}: cannot rebuild model {meta.get('model')!r}: {e}") from e
    abstract, _ = model.abstract_init((1, *meta["input_shape"]))
    variables = paths.load_into(abstract, variables, what=f"checkpoint {path}")
    meta["path"] = path
    return model, variables, meta


def evaluate_run(run_dir: str, *, dataset=None, data_dir=None, checkpoint=None,
                 batch_size: int | None = None, devices=None, output: str | None = None,
                 log: Callable = print) -> dict:
    """Evaluate a run's best checkpoint on its evaluation split (or on ``dataset``'s):
    accuracy, per-class accuracy, confusion matrix written as a PNG into the run dir."""
    model, variables, meta = load_run(run_dir, checkpoint)
    settings = dict(meta.get("settings") or {})
    spec = dataset if dataset is not None else settings.get("dataset", "digits")
    if spec == "arrays":
        raise ConfigError("this run was trained on arrays through the API; pass --dataset")
    dmod = _data()
    try:
        _, eval_ds = dmod.load(spec, image_shape=tuple(meta["input_shape"]),
                               val_dataset=settings.get("val_dataset") if dataset is None else None,
                               val_fraction=settings.get("val_fraction") if dataset is None else None,
                               data_dir=data_dir or settings.get("data_dir"),
                               seed=int(settings.get("seed", 0)))
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
        raise ConfigError(str(e)) from e
    class_names = list(meta.get("class_names") or eval_ds.class_names)
    k = int(meta["num_classes"])
    if len(eval_ds) and int(np.max(eval_ds.labels)) >= k:
        raise ConfigError(f"{spec} has {len(eval_ds.class_names)} classes, the model {k}")
    if list(eval_ds.class_names) != class_names[:len(eval_ds.class_names)]:
        log(f"warning: class names differ from training's: {eval_ds.class_names} vs {class_names}")
    devices = list(devices) if devices is not None else jax.devices()[:1]
    bs = batch_size or 64
    bs = -(-bs // len(devices)) * len(devices)
    cfg = as_config(model=meta["model"], batch_size=bs, dtype=settings.get("dtype", "float32"),
                    progress=False)
    trainer = Trainer(model, cfg, 1, devices=devices, params_template=variables["params"])
    put = lambda t: jax.device_put(t, trainer.replicated)  # noqa: E731
    res = evaluate(trainer, put(variables["params"]), put(variables["state"]), eval_ds,
                   mean=tuple(meta["mean"]), std=tuple(meta["std"]), predictions=True)
    names = class_names if len(class_names) == k else [str(i) for i in range(k)]
    matrix = confusion_matrix(res["labels"], res["predictions"], k)
    per_class = {names[i]: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None)
                 for i in range(k)}
    label = "" if dataset is None else "-" + _dataset_label(dataset)
    png = output or os.path.join(run_dir, f"confusion_matrix{label}.png")
    plot_confusion(matrix, names, png,
                   title=f"{meta['model']} on {eval_ds.name} ({_split_name(eval_ds)}): "
                         f"accuracy {res['accuracy']:.4f}")
    return {"accuracy": res["accuracy"], "loss": res["loss"], "count": res["count"],
            "per_class_accuracy": per_class, "confusion_matrix": matrix.tolist(),
            "class_names": names, "checkpoint": meta["path"], "eval_split": _split_name(eval_ds),
            "confusion_png": png}
