"""Saving and restoring: the zoo's weight format and training checkpoints, written atomically
and sealed with a content hash.

**Format.** One safetensors file. Tensors are named by their flattened ``/`` path in the
variables pytree: ``params/conv1/kernel``, ``state/bn1/mean``; a training checkpoint adds
``opt_state/...``, ``rng`` and ``step``. The header's string metadata holds
``format`` (``zoo-weights/1`` or ``zoo-train/1``), ``zoo``: a JSON object with the model
name, its config, ``num_classes``, ``input_shape``, ``mean``/``std``, the zoo version and,
for training checkpoints, the epoch, the metrics so far and the run's settings, and
``zoo-sha256``, the content hash. A training checkpoint is therefore also a weights file:
:func:`load_weights` reads the ``params``/``state`` groups of either.

**Integrity.** ``zoo-sha256`` is the SHA-256 of the whole file as written, with the 64 hex
digits of the hash itself read as ``0`` (:mod:`zoo.integrity`): it covers the tensors'
bytes, names, dtypes, shapes and the metadata. Every load (:func:`load_flat`,
:func:`load_weights`, :meth:`CheckpointManager.restore`, ``zoo.weights.load``) checks it
and fails with "corrupt: content hash mismatch" naming the file. Files written before the
hash existed have no ``zoo-sha256`` and load unchecked. The header is checked before any
tensor is read, so a missing, empty, truncated, text or garbage file is a
``FileNotFoundError``/``IsADirectoryError``/``ValueError`` naming the path and the fault.
Weights holding NaN or inf are refused (``allow_nonfinite=True`` loads them anyway).
``--resume`` falls back to the newest checkpoint that verifies
(:meth:`CheckpointManager.restore_latest_valid`).

**Atomicity.** Every write goes to a temporary file in the target's directory, is flushed
and fsync'ed, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows) and the directory is fsync'ed. A save interrupted at any point leaves the previous
file intact; stray ``.tmp-*`` files are ignored and cleaned up by :class:`CheckpointManager`.

**Loading into a model.** :func:`zoo.paths.load_into` matches a loaded flat dict against a
template pytree (e.g. ``model.init(...)`` or ``jax.eval_shape`` of it) path by path, and
fails with a ``ValueError`` listing every missing, unexpected and mis-shaped path.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np

from .integrity import (HASH_KEY, Header, check_file, check_finite, read_header,  # noqa: F401
                        read_safetensors, seal, verify)
from .paths import flatten, load_into, unflatten

WEIGHTS_FORMAT = "zoo-weights/1"
TRAIN_FORMAT = "zoo-train/1"
SUFFIX = ".safetensors"


# ----------------------------------------------------------------------------------------
# Files.

def _to_numpy(x) -> np.ndarray:
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:  # replicated over several hosts: any local copy
            x = x.addressable_data(0)
    return np.asarray(jax.device_get(x), order="C")


def jsonable(obj):
    """``obj`` with NumPy scalars and arrays, tuples and other values made JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """An open binary file that replaces ``path`` only when the block ends without an
    exception: readers see the old file or the new, never a mix, and a failed or killed
    write leaves the old one intact."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; saved weights are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as f:
        _write_view(f, memoryview(data))


def _write_view(f, view: memoryview) -> None:
    for start in range(0, len(view), 1 << 24):
        f.write(view[start:start + (1 << 24)])


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_flat(path, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
              *, fmt: str = WEIGHTS_FORMAT) -> str:
    """Atomically write ``path -> array`` and JSON ``metadata`` as one safetensors file,
    sealed with its content hash."""
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}
    header = {"format": fmt, "zoo": json.dumps(jsonable(dict(metadata or {})), sort_keys=True)}
    write_sealed(path, arrays, header)
    return os.fspath(path)


def write_sealed(path, arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> None:
    """Atomically write ``arrays`` with the string metadata ``header`` and the content hash
    (:func:`zoo.integrity.seal`)."""
    with atomic_output(path) as f:
        for part in seal(arrays, header):
            _write_view(f, memoryview(part))


def _zoo_metadata(path: str, header: Header) -> dict:
    try:
        meta = json.loads(header.metadata.get("zoo", "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt: its zoo metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt: its zoo metadata is a {type(meta).__name__}, "
                         f"not a JSON object")
    meta["format"] = header.metadata.get("format", "unknown")
    return meta


def read_metadata(path) -> dict:
    """The JSON metadata of a zoo safetensors file, without reading its tensors (plus
    ``"format"``). A file that is not safetensors raises ``ValueError`` naming it."""
    path = os.fspath(path)
    return _zoo_metadata(path, read_header(path, "weights file"))


def is_zoo_file(path) -> bool:
    """Whether ``path`` is a zoo safetensors file (weights or a training checkpoint)."""
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        return False
    try:
        return read_metadata(path).get("format", "").startswith("zoo-")
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False


def load_flat(path, *, allow_nonfinite: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """``(path -> numpy array, metadata)`` of a zoo safetensors file, its content hash and
    header checked, its ``params``/``state`` finite unless ``allow_nonfinite``. A file that
    is not the zoo's (e.g. a torchvision state dict) raises ``ValueError``."""
    path = os.fspath(path)
    header = read_header(path, "zoo weights file or checkpoint")
    meta = _zoo_metadata(path, header)
    if not meta["format"].startswith("zoo-"):
        raise ValueError(
            f"{path} is not a zoo weights file or checkpoint (its format is {meta['format']!r}): "
            f"a torchvision state dict loads with zoo.weights.load(path, model=NAME) or "
            f"zoo.weights.load_torchvision(NAME, path)")
    flat, _ = read_safetensors(path, "zoo weights file or checkpoint")
    if not allow_nonfinite:
        check_finite(flat, path, ("params/", "state/"))
    return flat, meta


def save_weights(variables: Mapping[str, Any], path, metadata: Mapping[str, Any] | None = None) -> str:
    """Save ``{"params", "state"}`` (any nested dicts) and ``metadata`` (model name, config,
    num_classes, input_shape, mean/std, ...; the zoo version is added) atomically."""
    from . import __version__

    meta = dict(metadata or {})
    meta.setdefault("zoo_version", __version__)
    return save_flat(path, flatten(dict(variables)), meta, fmt=WEIGHTS_FORMAT)


def load_weights(path, groups=("params", "state"), *,
                 allow_nonfinite: bool = False) -> tuple[dict, dict]:
    """``(variables, metadata)`` from a zoo weights file or training checkpoint: the
    ``params`` and ``state`` groups as nested dicts of numpy arrays (always both keys).
    Checked as :func:`load_flat` checks."""
    flat, meta = load_flat(path, allow_nonfinite=allow_nonfinite)
    variables = {g: {} for g in groups}
    tree = unflatten({k: v for k, v in flat.items() if k.split("/", 1)[0] in groups})
    variables.update(tree)
    return variables, meta


# ----------------------------------------------------------------------------------------
# Training checkpoints.

_CKPT_RE = re.compile(r"^ckpt-(\d+)" + re.escape(SUFFIX) + "$")


class CheckpointManager:
    """Training checkpoints in ``directory``: ``ckpt-<step>.safetensors``, each holding a
    whole train state (params, BN state, optimizer state, step, rng) plus the epoch and the
    metrics so far. Keeps the newest ``keep`` and the best by ``metadata[best_key]``
    (highest wins; ties keep the earlier one). Only process 0 writes in multi-host runs.
    Listing, :meth:`best` and :meth:`prune` read headers only, never tensors: a checkpoint
    whose header cannot be read is never the best, and is removed once older than the kept
    ones. :meth:`restore_latest_valid` resumes from the newest checkpoint that verifies."""

    def __init__(self, directory, keep: int = 2, best_key: str = "eval_accuracy"):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.fspath(directory)
        self.keep = keep
        self.best_key = best_key

    # -- listing
    def steps(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        found = (_CKPT_RE.match(n) for n in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt-{step:08d}{SUFFIX}")

    def latest(self) -> str | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def best(self) -> str | None:
        best, best_value = None, None
        for step in self.steps():
            try:
                value = read_metadata(self.path(step)).get(self.best_key)
            except (ValueError, OSError):
                continue  # unreadable: never the best
            if (isinstance(value, (int, float)) and not isinstance(value, bool)
                    and math.isfinite(value) and (best_value is None or value > best_value)):
                best, best_value = self.path(step), value
        return best

    # -- writing
    def save(self, step: int, tree: Mapping[str, Any], metadata: Mapping[str, Any]) -> str:
        """Write ``tree`` (e.g. ``{"params", "state", "opt_state", "rng", "step"}``) as the
        checkpoint of ``step``, then prune all but the newest ``keep`` and the best."""
        if jax.process_index() != 0:
            return self.path(step)
        os.makedirs(self.directory, exist_ok=True)
        self.clean_temporaries()
        from . import __version__

        meta = dict(metadata)
        meta.setdefault("zoo_version", __version__)
        path = save_flat(self.path(step), flatten(dict(tree)), meta, fmt=TRAIN_FORMAT)
        self.prune()
        return path

    def prune(self) -> None:
        steps = self.steps()
        best = self.best()
        for step in steps[:-self.keep]:
            p = self.path(step)
            if p != best:
                try:
                    os.unlink(p)
                except OSError:  # gone already, or a directory of that name: left alone
                    pass

    def clean_temporaries(self) -> None:
        if os.path.isdir(self.directory):
            for n in os.listdir(self.directory):
                if n.startswith(".tmp-"):
                    try:
                        os.unlink(os.path.join(self.directory, n))
                    except OSError:
                        pass

    # -- reading
    def restore(self, template: Mapping[str, Any], path: str | None = None, *,
                allow_nonfinite: bool = False) -> tuple[dict, dict]:
        """``(tree in template's structure, metadata)`` of ``path`` (default: the latest),
        checked as :func:`load_flat` checks."""
        path = path or self.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat, meta = load_flat(path, allow_nonfinite=allow_nonfinite)
        return load_into(dict(template), flat, what=f"checkpoint {path}"), meta

    def restore_latest_valid(self, template: Mapping[str, Any],
                             log: Callable[[str], None] | None = None,
                             check: Callable[[dict], None] | None = None):
        """``(tree, metadata, path, skipped)`` of the newest checkpoint that restores into
        ``template``: one that is unreadable, truncated, corrupt (content hash), non-finite,
        of another structure, or whose metadata ``check`` rejects (``ValueError``) is
        skipped, with one line to ``log`` saying which and why. ``skipped`` lists
        ``(path, reason)``. None restores: ``ValueError`` listing each file and its fault;
        no checkpoint at all: ``FileNotFoundError``."""
        steps = self.steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        skipped = []
        for step in reversed(steps):
            path = self.path(step)
            try:
                tree, meta = self.restore(template, path)
                if check is not None:
                    check(meta)
            except (ValueError, OSError) as e:
                reason = str(e).removeprefix(f"{path}: ").removeprefix(path + " ")
                skipped.append((path, reason))
                if log is not None:
                    log(f"skipped checkpoint {path}: {reason.splitlines()[0]}")
                continue
            return tree, meta, path, skipped
        lines = []
        for path, reason in skipped:
            rows = reason.splitlines()
            lines.append(f"  {os.path.basename(path)}: " + "\n    ".join(rows[:6])
                         + (f"\n    ... ({len(rows) - 6} more lines)" if len(rows) > 6 else ""))
        raise ValueError(f"none of the {len(skipped)} checkpoints in {self.directory} can be "
                         f"restored:\n" + "\n".join(lines))
