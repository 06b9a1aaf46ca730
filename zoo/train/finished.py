"""Evaluation of a finished run: its best checkpoint on its evaluation split or another
dataset's."""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import numpy as np

from .. import checkpoint as ckpt
from .. import paths, registry
from ..tuning import named_policy
from ..visualize import confusion_matrix, plot_confusion
from .config import DTYPES, ConfigError, as_config
from .loop import data_module, evaluate
from .run import _dataset_label, _split_name
from .trainer import Trainer


def load_run(run_dir: str, checkpoint: str | None = None):
    """``(model, variables, metadata)`` of a run's best checkpoint (or ``checkpoint``)."""
    path = checkpoint
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"--checkpoint {path}: " + ("a directory, not a checkpoint file"
                              if os.path.isdir(path) else "no such file"))
    elif not os.path.isdir(run_dir):
        raise ConfigError(f"--run {run_dir}: " + ("no such directory" if not
                          os.path.exists(run_dir) else "a file, not a run directory"))
    else:
        path = _summary_checkpoint(run_dir)
        if not path or not os.path.exists(path):
            path = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints")).best() or \
                ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints")).latest()
    if not path or not os.path.exists(path):
        raise ConfigError(f"no checkpoint found in {run_dir}; is it a run directory?")
    variables, meta = ckpt.load_weights(path)
    missing = [k for k in ("model", "input_shape", "num_classes", "mean", "std") if k not in meta]
    if missing:
        raise ConfigError(f"{path}: its metadata lacks {', '.join(missing)}: not a zoo "
                          f"training checkpoint or weights file that can be evaluated")
    try:
        model = registry.from_metadata(meta)
    except ValueError as e:
        raise ConfigError(f"{path}: cannot rebuild model {meta.get('model')!r}: {e}") from e
    abstract, _ = model.abstract_init((1, *meta["input_shape"]))
    variables = paths.load_into(abstract, variables, what=f"checkpoint {path}")
    meta["path"] = path
    return model, variables, meta


def _summary_checkpoint(run_dir) -> str | None:
    """The best checkpoint summary.json names, in the run's own directory (it may have been
    moved or copied); None when summary.json is absent or damaged (the manager decides)."""
    try:
        with open(os.path.join(run_dir, "summary.json"), "rb") as f:
            path = json.loads(f.read().decode("utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return os.path.join(run_dir, "checkpoints", os.path.basename(path)) \
        if isinstance(path, str) and path else None


def evaluate_run(run_dir: str, *, dataset=None, data_dir=None, checkpoint=None,
                 batch_size: int | None = None, devices=None, output: str | None = None,
                 policy: str = "tuned", log: Callable = print) -> dict:
    """Evaluate a run's best checkpoint on its evaluation split (or on ``dataset``'s):
    accuracy, per-class accuracy, confusion matrix written as a PNG into the run dir.
    ``policy``: the conv policy, 'tuned' (what ``zoo tune`` measured here), 'default' or
    'xla'; the report's ``policy`` says which ran."""
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    model, variables, meta = load_run(run_dir, checkpoint)
    settings = dict(meta.get("settings") or {})
    spec = dataset if dataset is not None else settings.get("dataset", "digits")
    if spec == "arrays":
        raise ConfigError("this run was trained on arrays through the API; pass --dataset")
    dmod = data_module()
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
    bs = 64 if batch_size is None else batch_size
    bs = -(-bs // len(devices)) * len(devices)
    cfg = as_config(model=meta["model"], batch_size=bs, dtype=settings.get("dtype", "float32"),
                    policy=policy, progress=False)
    chosen, policy_line = named_policy(policy, model, (bs, *meta["input_shape"]),
                                       dtype=DTYPES[cfg.dtype])
    model = model.with_policy(chosen)
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
            "confusion_png": png, "policy": policy_line}
