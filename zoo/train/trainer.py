"""The train state and :class:`Trainer`: the jitted train and eval steps as ONE SPMD program
over a device mesh with a ``'data'`` axis. The batch is sharded ``P('data')``; params, BN
state and optimizer state are replicated; XLA (GSPMD) inserts the gradient all-reduce, and
BatchNorm's batch statistics come out over the global batch. One Python call per step;
dropout keys are ``fold_in(rng, step)``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ..kernels import xla
from .config import DTYPES, ConfigError, TrainConfig
from .optim import cross_entropy, frozen_mask, frozen_state_mask, make_optimizer


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
        low = cfg.dtype != "float32"     # bfloat16 programs: the CPU's bfloat16 matmuls
        self._train_step = xla.jit(self._step, donate_argnums=0, low_precision=low,
                                   out_shardings=(self.replicated, self.replicated))
        self._eval_step = xla.jit(self._eval, low_precision=low,
                                  out_shardings=(self.replicated, self.batch_sharding))
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
