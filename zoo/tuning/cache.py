"""The measurements ``zoo.tune`` keeps on disk: one JSON file per machine
(:func:`zoo.machine.fingerprint`: CPU model and flags, cores, jax/jaxlib, backend) in
``$ZOO_TUNE_CACHE`` (default ``~/.cache/zoo/tune``), one entry per conv geometry and mode
(:meth:`zoo.ConvPolicy`'s ``ConvGeometry.key``: dtype, train or infer, shapes). Written
atomically, merged with what is on disk at the time, so concurrent tunings keep each
other's entries."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings

from .. import machine
from ..kernels.policy import IMPLS

FORMAT = 1


def directory() -> str:
    """``$ZOO_TUNE_CACHE``, else ``tune`` in the zoo's cache (``$ZOO_CACHE``, default
    ``~/.cache/zoo``)."""
    if os.environ.get("ZOO_TUNE_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["ZOO_TUNE_CACHE"]))
    from ..weights.hub import cache_dir   # here: zoo.weights imports this package's users
    return os.path.join(cache_dir(), "tune")


def machine_key(fp: dict | None = None) -> str:
    """A short name for a fingerprint: the same machine gives the same name."""
    fp = machine.fingerprint() if fp is None else fp
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def path(fp: dict | None = None) -> str:
    """The cache file for this machine (or for fingerprint ``fp``)."""
    return os.path.join(directory(), f"conv-{machine_key(fp)}.json")


def load(fp: dict | None = None) -> dict:
    """``{geometry key: entry}`` measured on this machine; ``{}`` when nothing is. A file
    that cannot be read, or that belongs to another machine, is named in a warning and
    left out (the next save replaces it); an entry naming an unknown implementation is
    dropped with a warning."""
    fp = machine.fingerprint() if fp is None else fp
    file = path(fp)
    if not os.path.exists(file):
        return {}
    try:
        with open(file) as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("no 'entries' table")
    except (OSError, ValueError) as e:
        warnings.warn(f"the tuning cache {file} cannot be read ({e}); its measurements are "
                      f"ignored and the next `zoo tune` rewrites it", stacklevel=2)
        return {}
    if data.get("machine") != fp:
        warnings.warn(f"the tuning cache {file} was written for another machine "
                      f"({data.get('machine')}); its measurements are ignored", stacklevel=2)
        return {}
    out = {}
    for key, entry in data["entries"].items():
        if isinstance(entry, dict) and entry.get("impl") in IMPLS:
            out[key] = entry
        else:
            warnings.warn(f"the tuning cache {file}: entry {key!r} names no implementation "
                          f"of {IMPLS}; it is ignored", stacklevel=2)
    return out


def save(entries: dict, fp: dict | None = None) -> str:
    """Merge ``entries`` into this machine's cache file (newer entries win) and return its
    path. The file is replaced atomically: a reader sees the old file or the new one."""
    fp = machine.fingerprint() if fp is None else fp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # a damaged file is replaced, said on load
        merged = dict(load(fp))
    merged.update(entries)
    file = path(fp)
    os.makedirs(os.path.dirname(file), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file), prefix=".conv-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dict(format=FORMAT, machine=fp, entries=dict(sorted(merged.items()))),
                      f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return file
