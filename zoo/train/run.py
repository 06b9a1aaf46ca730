"""Runs: everything ``zoo train`` does from a :class:`TrainConfig`, and resume (a finished
run is evaluated by :mod:`zoo.train.finished`)."""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time

import jax
import numpy as np

from .. import checkpoint as ckpt
from .. import registry
from ..nn import count_params
from ..visualize import plot_curves
from ..tuning import named_policy
from .config import DTYPES, ConfigError, TrainConfig, as_config, check_given, given_settings
from .distributed import init_distributed
from .loop import data_module, fit, is_main, quiet, write_jsonl
from .rundir import RESUME_OVERRIDES, check_output_dir, resume_config, writing  # noqa: F401
from .trainer import Trainer, TrainState


# ----------------------------------------------------------------------------------------
# Runs.

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


def _as_classes(ds) -> int:
    return len(ds.class_names)


def _load_pretrained(cfg, model, variables, log):
    from .. import weights
    try:
        result, info = weights.load_for_finetuning(cfg.pretrained, model=model, variables=variables)
    except (ImportError, ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise ConfigError(f"--pretrained {cfg.pretrained}: {e}") from e
    log(info["message"])
    return result, info


def prepare(cfg: TrainConfig, *, model=None, data=None) -> dict:
    """Resolve model, data, classes and input shape; every failure is a :class:`ConfigError`."""
    dmod = data_module()
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
    plan = dmod.DataPlan("memory", "Datasets given through the API")
    if data is not None:
        train_ds, eval_ds = data
        if isinstance(train_ds, dmod.StreamSet):
            plan = dmod.DataPlan("stream", "StreamSets given through the API")
        if cfg.augment != "auto":      # a setting given overrides the Dataset's own
            train_ds = dataclasses.replace(train_ds, augment=cfg.augment,
                                           augment_reason="chosen with --augment")
    else:
        try:
            plan = dmod.plan_data(_data_mode(cfg), cfg.dataset, image_shape=image_shape,
                                  val_dataset=cfg.val_dataset, val_fraction=cfg.val_fraction,
                                  data_dir=cfg.data_dir, seed=cfg.seed, augment=cfg.augment,
                                  strict_images=cfg.strict_images,
                                  memory_bytes=_first_process_memory(dmod))
            train_ds, eval_ds = plan.sets or dmod.load(cfg.dataset, image_shape=image_shape,
                                          val_dataset=cfg.val_dataset,
                                          val_fraction=cfg.val_fraction,
                                          data_dir=cfg.data_dir, seed=cfg.seed,
                                          augment=cfg.augment, strict_images=cfg.strict_images)
        except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
            raise ConfigError(str(e)) from e
    if tuple(train_ds.image_shape) != image_shape:
        raise ConfigError(f"the data's images are {tuple(train_ds.image_shape)}, the model "
                          f"needs {image_shape}")
    classes = _as_classes(train_ds)
    num_classes = classes if cfg.num_classes is None else int(cfg.num_classes)
    if num_classes < classes:
        names = ", ".join(map(str, train_ds.class_names[:12])) + (", ..." if classes > 12 else "")
        raise ConfigError(f"--num-classes {num_classes} is smaller than the {classes} classes of "
                          f"the data ({names}): drop it, or give at least {classes}")
    top = max(_top_label(train_ds), _top_label(eval_ds))   # streamed TFDS: unknown, -1
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
                num_classes=num_classes, abstract=abstract, plan=plan)


def _top_label(ds) -> int:
    labels = ds.labels
    return int(np.max(labels)) if labels is not None and len(labels) else -1


def _first_process_memory(dmod) -> int | None:
    """Process 0's memory in a multi-host run (None in one process): ``auto`` then picks
    the same data path on every host, as the two paths prepare images differently."""
    if jax.process_count() == 1:
        return None
    from jax.experimental import multihost_utils
    mine = dmod.memory_bytes() or 0
    return int(multihost_utils.broadcast_one_to_all(np.int64(mine))) or None


def _data_mode(cfg: TrainConfig) -> str:
    """``cfg.data_mode``; for a resumed ``auto`` run, the mode its first part resolved (the
    two paths normalise and augment differently, so a resume never switches)."""
    if cfg.resume and cfg.data_mode == "auto":
        try:
            with open(os.path.join(cfg.resume, "config.json"), "rb") as f:
                mode = json.loads(f.read().decode("utf-8"))["resolved"]["data_mode"]
        except (OSError, ValueError, KeyError, TypeError):
            return cfg.data_mode    # a run from before the choice existed: in memory
        if mode in ("memory", "stream"):
            return mode
    return cfg.data_mode


def run(config=None, *, model=None, data=None, devices=None, stop_after_epoch: int | None = None,
        verbose: bool = True, **overrides) -> dict:
    """Train as ``zoo train`` does and return the summary dict.

    ``config``: a :class:`TrainConfig`, a dict of its fields, or None (defaults);
    ``overrides``: fields to change. ``model``: a :class:`zoo.Model` to use instead of
    ``config.model``; ``data``: ``(train_ds, eval_ds)`` :class:`zoo.data.Dataset` s instead
    of loading ``config.dataset``; ``devices``: the mesh (default all).
    """
    # Every setting, and every contradiction among the flags given, is checked before
    # anything is read, initialised or compiled.
    given = given_settings(config, overrides)
    cfg = as_config(config, **overrides)
    warnings = check_given(cfg, given)
    if cfg.resume:
        cfg = resume_config(cfg, given)
    if cfg.distributed:
        init_distributed(cfg, log=(lambda m: print(m, flush=True)) if verbose else quiet)
    log = print if verbose and is_main() else quiet
    for note in warnings if is_main() else ():
        print(f"warning: {note}", file=sys.stderr)
    t_start = time.perf_counter()

    run_dir = cfg.output_dir or _default_output_dir(cfg)
    if is_main():
        check_output_dir(run_dir, "--resume" if cfg.resume else "--output-dir")
    manager = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints"), keep=cfg.keep)
    if not cfg.resume and manager.steps():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                          f"or choose another --output-dir")
    setup = prepare(cfg, model=model, data=data)
    model, train_all, eval_all = setup["model"], setup["train_ds"], setup["eval_ds"]

    policy, policy_line = named_policy(cfg.policy, model, (cfg.batch_size, *setup["image_shape"]),
                                       train=True, dtype=DTYPES[cfg.dtype])
    model = model.with_policy(policy)
    spe = data_module().steps_per_epoch(train_all, cfg.batch_size, train=True)
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
        f"({_split_name(eval_all)}), {len(train_all.class_names)} classes, augment "
        f"{train_all.augment}" + (f" ({train_all.augment_reason})"
                                  if getattr(train_all, "augment_reason", "") else ""))
    log(f"devices: {len(devices)} x {'/'.join(device_kinds)} in {jax.process_count()} process(es); "
        f"batch {cfg.batch_size} ({cfg.batch_size // len(devices)} per device), {spe} steps/epoch, "
        f"{cfg.epochs} epochs, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, {cfg.dtype}")
    log(policy_line)
    plan = setup["plan"]
    log(f"input: {plan.mode}" + (f" with {_workers(cfg)} worker process(es)"
                                 if plan.mode == "stream" else "") + f" ({plan.reason})")
    if cfg.freeze:
        n_frozen = sum(int(np.prod(np.shape(x))) for x, f in zip(
            jax.tree_util.tree_leaves(variables["params"]), jax.tree_util.tree_leaves(trainer.frozen)) if f)
        log(f"frozen: {n_frozen:,} of {num_params:,} params ({', '.join(cfg.freeze)})")

    meta_common = {
        "model": model.name, "config": model.metadata(), "num_classes": setup["num_classes"],
        "input_shape": list(setup["image_shape"]), "mean": list(mean), "std": list(std),
        "class_names": list(train_all.class_names), "dataset": _dataset_label(cfg.dataset),
        "settings": cfg.to_json(),
        # the input's position is (seed, epoch, batch): epoch and step are saved beside it
        "data": {"mode": plan.mode, "seed": cfg.seed, "batch_in_epoch": 0}}
    history, start_epoch = [], 0
    if cfg.resume:
        template = _state_dict(trainer.state_template(variables))
        try:  # the newest checkpoint that verifies; each one skipped is logged with why
            restored, meta, latest, _ = manager.restore_latest_valid(
                template, log=log, check=_check_resumable)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--resume {run_dir}: {e}") from None
        ts = trainer.place_state(TrainState(**restored))
        history, start_epoch = list(meta.get("metrics", [])), int(meta["epoch"])
        if int(restored["step"]) != start_epoch * spe:
            raise ConfigError(f"--resume {run_dir}: {latest} ends epoch {start_epoch} at step "
                              f"{int(restored['step'])}, not at {start_epoch} x {spe} steps: "
                              f"the data would not continue where it stopped")
        log(f"resumed {latest}: epoch {start_epoch}, step {int(restored['step'])}")
        if is_main():
            write_jsonl(os.path.join(run_dir, "metrics.jsonl"), history)
    else:
        ts = trainer.init_state(variables, cfg.seed)
        if is_main():
            os.makedirs(run_dir, exist_ok=True)
            write_jsonl(os.path.join(run_dir, "metrics.jsonl"), [])
    if cfg.resume and start_epoch >= cfg.epochs:
        raise ConfigError(f"--resume {run_dir}: nothing to do: the run already completed "
                          f"{start_epoch} epochs and --epochs is {cfg.epochs}; give --epochs "
                          f"N > {start_epoch} to train further (zoo evaluate --run {run_dir} "
                          f"reports the result)")
    if is_main():
        resolved = {"settings": cfg.to_json(), "model_config": ckpt.jsonable(model.metadata()),
                    "resolved": ckpt.jsonable({
                        "output_dir": run_dir, "image_shape": setup["image_shape"],
                        "num_classes": setup["num_classes"], "class_names": train_all.class_names,
                        "mean": mean, "std": std, "train_size": len(train_all),
                        "augment": train_all.augment,
                        "data_mode": plan.mode, "decoded_bytes": plan.decoded_bytes,
                        "eval_size": len(eval_all), "eval_split": _split_name(eval_all),
                        "steps_per_epoch": spe, "num_params": num_params,
                        "devices": [str(d) for d in devices], "process_count": jax.process_count(),
                        "jax_version": jax.__version__, "zoo_version": _zoo_version()})}
        with writing(os.path.join(run_dir, "config.json"), "run settings",
                     "the checkpoints are intact" if cfg.resume else "nothing was trained"):
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


def _workers(cfg: TrainConfig) -> int:
    return data_module().stream.default_workers() if cfg.workers is None else cfg.workers


def _check_resumable(meta: dict) -> None:
    """A checkpoint to resume from names the epoch it ended and the metrics so far."""
    epoch, metrics = meta.get("epoch"), meta.get("metrics", [])
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"its metadata has no valid epoch (got {epoch!r})")
    if not isinstance(metrics, list):
        raise ValueError(f"its metadata's metrics are a {type(metrics).__name__}, not a list")


def _state_dict(ts: TrainState) -> dict:
    return {f.name: getattr(ts, f.name) for f in dataclasses.fields(TrainState)}


def _split_name(ds) -> str:
    return str(getattr(ds, "split", None) or ds.name)


def _zoo_version() -> str:
    from .. import __version__
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
    if is_main():
        intact = f"the checkpoints are intact (zoo evaluate --run {run_dir} still works)"
        with writing(os.path.join(run_dir, "curves.png"), "training curves", intact):
            plot_curves(history, os.path.join(run_dir, "curves.png"))
        with writing(os.path.join(run_dir, "summary.json"), "run summary", intact):
            ckpt.atomic_write_bytes(os.path.join(run_dir, "summary.json"),
                                    json.dumps(summary, indent=2).encode())
    return summary
