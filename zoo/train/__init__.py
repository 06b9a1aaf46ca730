"""Training: the train state, the optimizer, jitted steps, the fit loop and runs.

Layers of the API, each usable alone:

- :mod:`.config`: :class:`TrainConfig`, every setting of a run, and the user errors;
- :mod:`.optim`: :func:`make_schedule`, :func:`make_optimizer`, the masks (``--freeze``,
  weight decay, head and backbone), :func:`cross_entropy`;
- :mod:`.trainer`: :class:`TrainState` (a pytree ``(params, state, opt_state, step, rng)``)
  and :class:`Trainer`, the jitted steps as one SPMD program over a device mesh;
- :mod:`.loop`: :func:`fit` (epochs, evaluation, ``metrics.jsonl``, checkpoints, a NaN/inf
  guard) and :func:`evaluate`;
- :mod:`.run`: :func:`run`, everything ``zoo train`` does, from a :class:`TrainConfig` (or
  a dict), and :func:`evaluate_run`, ``zoo evaluate``.

Errors meant for the user (unknown model or dataset, batch too large, input that cannot
be fed to the model, ...) are :class:`ConfigError`; a loss that becomes NaN or infinite
raises :class:`NonFiniteLossError` naming the step, after keeping the last good checkpoint.
"""
from .config import (DTYPES, OPTIMIZERS, SCHEDULES, ConfigError, NonFiniteLossError,
                     TrainConfig, as_config)
from .loop import TIMING_KEYS, eval_batches, evaluate, fit
from .optim import (cross_entropy, decay_mask, frozen_mask, frozen_state_mask, make_optimizer,
                    make_schedule, param_labels)
from .finished import evaluate_run, load_run
from .run import RESUME_OVERRIDES, init_distributed, prepare, run
from .trainer import Trainer, TrainState

__all__ = ["ConfigError", "DTYPES", "NonFiniteLossError", "OPTIMIZERS", "RESUME_OVERRIDES",
           "SCHEDULES", "TIMING_KEYS", "TrainConfig", "TrainState", "Trainer", "as_config", "cross_entropy",
           "decay_mask", "eval_batches", "evaluate", "evaluate_run", "fit", "frozen_mask",
           "frozen_state_mask", "init_distributed", "load_run", "make_optimizer",
           "make_schedule", "param_labels", "prepare", "run"]
