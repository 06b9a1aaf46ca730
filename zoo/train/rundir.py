"""The run directory: checked before any work, read back on resume, written with errors
that say which file failed and what is still intact.

- :func:`check_output_dir`: a directory the run can create and write (not a file, not
  read-only), checked before the data loads;
- :func:`resume_config`: the settings of ``--resume DIR`` from its ``config.json`` (a
  damaged or incomplete file is a :class:`ConfigError` naming it), the flags that may
  change, and checkpoints that belong to another run;
- :func:`writing`: an ``OSError`` while writing (a full disk, a directory gone read-only)
  becomes one naming the file and what is intact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Iterable

from .. import checkpoint as ckpt
from .config import ConfigError, TrainConfig, as_config, flag

#: settings that may change when resuming a run (anything else must match its config.json)
RESUME_OVERRIDES = ("epochs", "keep", "distributed", "coordinator", "num_processes",
                    "process_id", "distributed_timeout", "data_dir", "progress", "log_every",
                    "workers")
#: settings a run's config.json must hold: without them it cannot be the record of a run
REQUIRED_SETTINGS = ("model", "dataset", "epochs", "batch_size", "optimizer", "lr",
                     "schedule", "seed")


def check_output_dir(path, what: str = "--output-dir") -> None:
    """A run directory ``path`` that exists as a directory or can be created, and can be
    written (checked on the nearest existing ancestor); else a :class:`ConfigError`."""
    text = os.fspath(path)
    probe = os.path.abspath(text)
    if os.path.lexists(probe) and not os.path.exists(probe):
        raise ConfigError(f"{what} {text} is a broken symbolic link")
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError(f"{what} {text} is a file, not a directory: choose another {what}")
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} {text}: {probe} is a file, not a directory, so the run "
                          f"directory cannot be created")
    for d in (probe, os.path.join(probe, "checkpoints")) if probe == os.path.abspath(text) \
            else (probe,):
        if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {text}: cannot write in {d} (no permission, or a "
                              f"read-only file system)")


@contextlib.contextmanager
def writing(path, what: str, intact: str = ""):
    """Turn an ``OSError`` raised in the block into one naming ``what`` (``path``) and,
    after it, ``intact``: what the failure left untouched and how to go on."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        err = OSError(f"could not write the {what} {os.fspath(path)}: {reason}"
                      + (f"; {intact}" if intact else ""))
        err.errno = e.errno
        raise err from e


def read_run_config(run_dir) -> dict:
    """The ``settings`` of ``run_dir/config.json``; a missing, unreadable, damaged or
    incomplete file is a :class:`ConfigError` naming it."""
    where = f"--resume {run_dir}"
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{where}: no such directory" if not os.path.exists(run_dir)
                          else f"{where}: not a directory")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(f"{where}: no config.json there; is it a run directory?")
    hint = ("restore it, or rebuild it from a checkpoint's metadata "
            "(zoo.checkpoint.read_metadata(path)['settings'] holds the same settings)")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: {path} is damaged (not valid JSON: {e}); {hint}") from None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: {path} has no 'settings' object (a run's config.json "
                          f"holds settings, model_config and resolved); {hint}")
    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    if missing:
        raise ConfigError(f"{where}: {path} lacks the settings {', '.join(missing)}; {hint}")
    return settings


def _check_checkpoints_belong(run_dir, saved: dict) -> None:
    """Every readable checkpoint of ``run_dir`` was written by the run config.json
    describes (unreadable ones are left to the restore, which skips them)."""
    manager = ckpt.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    ignore = set(RESUME_OVERRIDES) | {"resume", "output_dir"}
    for step in manager.steps():
        path = manager.path(step)
        try:
            theirs = ckpt.read_metadata(path).get("settings")
        except (ValueError, OSError):
            continue
        if not isinstance(theirs, dict):
            continue
        diff = [k for k in sorted(set(saved) & set(theirs) - ignore) if saved[k] != theirs[k]]
        if diff:
            shown = "; ".join(f"{k}: config.json {saved[k]!r}, checkpoint {theirs[k]!r}"
                              for k in diff[:4])
            raise ConfigError(f"--resume {run_dir}: {path} was written by another run than "
                              f"its config.json describes ({shown}): the directory mixes two "
                              f"runs; resume a directory whose config.json and checkpoints "
                              f"belong together")


def resume_config(cfg: TrainConfig, given: Iterable[str] = ()) -> TrainConfig:
    """The settings of the run in ``cfg.resume`` with the flags in ``given`` that may
    change (:data:`RESUME_OVERRIDES`); any other given flag must equal the run's."""
    run_dir = cfg.resume
    saved = read_run_config(run_dir)
    path = os.path.join(run_dir, "config.json")
    changed = sorted(k for k in given if k not in RESUME_OVERRIDES and k not in ("resume", "output_dir")
                     and ckpt.jsonable(getattr(cfg, k)) != saved.get(k))
    if changed:
        shown = ", ".join(f"{k} (run: {saved.get(k)!r}, given: {ckpt.jsonable(getattr(cfg, k))!r})"
                          for k in changed)
        raise ConfigError(f"--resume {run_dir}: cannot change {shown} of a run; only "
                          f"{', '.join(flag(k).split(' ')[0] for k in RESUME_OVERRIDES)} may "
                          f"change")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    if values.get("dataset") == "arrays":
        values["dataset"] = cfg.dataset
    for k in given:
        if k in RESUME_OVERRIDES:
            values[k] = getattr(cfg, k)
    values.update(resume=run_dir, output_dir=run_dir)
    try:
        resumed = as_config(values)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"--resume {run_dir}: the settings in {path} are not valid: {e}") from None
    _check_checkpoints_belong(run_dir, saved)
    return resumed
