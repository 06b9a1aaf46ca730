"""Saving and restoring: the zoo's weight format and training checkpoints, written atomically.

**Format.** One safetensors file. Tensors are named by their flattened ``/`` path in the
variables pytree: ``params/conv1/kernel``, ``state/bn1/mean``; a training checkpoint adds
``opt_state/...``, ``rng`` and ``step``. The header's string metadata holds
``format`` (``zoo-weights/1`` or ``zoo-train/1``) and ``zoo``: a JSON object with the model
name, its config, ``num_classes``, ``input_shape``, ``mean``/``std``, the zoo version and,
for training checkpoints, the epoch, the metrics so far and the run's settings.
A training checkpoint is therefore also a weights file: :func:`load_weights` reads the
``params``/``state`` groups of either.

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
import os
import re
import tempfile
from typing import Any, Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy

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
        view = memoryview(data)
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
    """Atomically write ``path -> array`` and JSON ``metadata`` as one safetensors file."""
    arrays = {k: _to_numpy(v) for k, v in tensors.items()}
    header = {"format": fmt, "zoo": json.dumps(jsonable(dict(metadata or {})), sort_keys=True)}
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=header))
    return os.fspath(path)


def read_metadata(path) -> dict:
    """The JSON metadata of a zoo safetensors file, without reading its tensors (plus
    ``"format"``)."""
    with safetensors.safe_open(os.fspath(path), framework="numpy") as f:
        header = f.metadata() or {}
    meta = json.loads(header.get("zoo", "{}"))
    meta["format"] = header.get("format", "unknown")
    return meta


def is_zoo_file(path) -> bool:
    """Whether ``path`` is a zoo safetensors file (weights or a training checkpoint)."""
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        return False
    try:
        return read_metadata(path).get("format", "").startswith("zoo-")
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False


def load_flat(path) -> tuple[dict[str, np.ndarray], dict]:
    """``(path -> numpy array, metadata)`` of a zoo safetensors file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return safetensors.numpy.load_file(path), read_metadata(path)


def save_weights(variables: Mapping[str, Any], path, metadata: Mapping[str, Any] | None = None) -> str:
    """Save ``{"params", "state"}`` (any nested dicts) and ``metadata`` (model name, config,
    num_classes, input_shape, mean/std, ...; the zoo version is added) atomically."""
    from . import __version__

    meta = dict(metadata or {})
    meta.setdefault("zoo_version", __version__)
    return save_flat(path, flatten(dict(variables)), meta, fmt=WEIGHTS_FORMAT)


def load_weights(path, groups=("params", "state")) -> tuple[dict, dict]:
    """``(variables, metadata)`` from a zoo weights file or training checkpoint: the
    ``params`` and ``state`` groups as nested dicts of numpy arrays (always both keys)."""
    flat, meta = load_flat(path)
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
    (highest wins; ties keep the earlier one). Only process 0 writes in multi-host runs."""

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
            value = read_metadata(self.path(step)).get(self.best_key)
            if value is not None and (best_value is None or value > best_value):
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
                os.unlink(p)

    def clean_temporaries(self) -> None:
        if os.path.isdir(self.directory):
            for n in os.listdir(self.directory):
                if n.startswith(".tmp-"):
                    try:
                        os.unlink(os.path.join(self.directory, n))
                    except OSError:
                        pass

    # -- reading
    def restore(self, template: Mapping[str, Any], path: str | None = None) -> tuple[dict, dict]:
        """``(tree in template's structure, metadata)`` of ``path`` (default: the latest)."""
        path = path or self.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        flat, meta = load_flat(path)
        return load_into(dict(template), flat, what=f"checkpoint {path}"), meta
