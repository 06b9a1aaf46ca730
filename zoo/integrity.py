"""Safetensors files read with checks, and the content hash that seals the zoo's own.

**The content hash.** A zoo file's header metadata holds ``zoo-sha256``: the SHA-256 of the
whole file as written, with the 64 hex digits of the hash itself read as ``0``. It covers
the tensors' bytes, names, dtypes, shapes and offsets and all the metadata. :func:`seal`
writes it (the file is serialised once with zeros in the entry, hashed, and the digest put
in their place: same length, same header); :func:`verify` recomputes it in one pass over
the file. A file without the entry (written before hashes existed) verifies as unsealed.

**Checked reading.** :func:`check_file` and :func:`read_header` diagnose, before any tensor
is read, a missing file, a directory, a pipe, an empty, text, garbage or truncated file,
a broken header, trailing bytes and dtypes NumPy cannot read; :func:`read_safetensors` is
the one place that calls safetensors and re-raises its errors with the path.
:func:`check_finite` lists weight tensors holding NaN or inf. Every error is a
``ValueError`` (``FileNotFoundError``/``IsADirectoryError`` for a missing path or a
directory) whose message starts with the path and says what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping, NamedTuple

import numpy as np
import safetensors
import safetensors.numpy

#: the header metadata key of the content hash
HASH_KEY = "zoo-sha256"
_ZEROS = "0" * 64
#: safetensors dtypes that safetensors.numpy reads (it has no bfloat16)
_NUMPY_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
                           "F16", "F32", "F64"})
#: the largest header safetensors accepts; a larger length means the file is not one
_MAX_HEADER = 100 << 20

__all__ = ["HASH_KEY", "Header", "check_file", "check_finite", "read_header",
           "read_safetensors", "seal", "verify"]


def _hash_token(digest: str) -> bytes:
    """The hash entry as it appears in the header JSON: inside a JSON string value quotes
    are escaped, so this byte sequence can only be the entry itself."""
    return f'"{HASH_KEY}":"{digest}"'.encode()


def seal(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> list:
    """The bytes of a safetensors file holding ``arrays`` and the string ``metadata`` plus
    its content hash, as a list of buffers to write in order (no copy of the tensors)."""
    data = safetensors.numpy.save(dict(arrays), metadata={**metadata, HASH_KEY: _ZEROS})
    end = 8 + int.from_bytes(data[:8], "little")
    token = _hash_token(_ZEROS)
    at = data.find(token, 8, end)
    if at < 0 or data.find(token, at + 1, end) >= 0:
        raise RuntimeError("safetensors wrote a header the content hash cannot be placed in")
    at += len(token) - 65
    view = memoryview(data)
    return [view[:at], hashlib.sha256(data).hexdigest().encode(), view[at + 64:]]


# ----------------------------------------------------------------------------------------
# Reading, checked: every way a file can be bad is an error naming the path and the fault.

class Header(NamedTuple):
    """A safetensors header as stored: the tensor table, the string metadata, the raw JSON
    bytes (for the content hash) and the file's size."""

    tensors: dict
    metadata: dict
    raw: bytes
    size: int


def check_file(path, what: str = "weights file") -> str:
    """``path`` (a string) once it names a non-empty regular file; else a
    ``FileNotFoundError``, ``IsADirectoryError`` or ``ValueError`` naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")
    if os.path.isdir(path):
        runs = os.path.join(path, "checkpoints")
        hint = f"; a training run's checkpoints are in {runs}" if os.path.isdir(runs) else ""
        raise IsADirectoryError(f"{path} is a directory, not a {what}{hint}")
    if not os.path.isfile(path):  # a pipe or a device: reading it could block forever
        raise ValueError(f"{path} is not a regular file (a pipe or a device?); expected a {what}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes), not a {what}: an interrupted copy or "
                         f"download? Use another copy")
    return path


def _is_text(head: bytes) -> bool:
    return bool(head) and all(32 <= b < 127 or b in b"\t\n\r" for b in head)


def read_header(path, what: str = "weights file") -> Header:
    """The header of a safetensors file, checked against the file without reading a tensor:
    a text or garbage file, a truncated one, broken JSON, offsets past the end, trailing
    bytes and dtypes NumPy cannot read are each a ``ValueError`` naming ``path``."""
    path = check_file(path, what)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if _is_text(head):
            raise ValueError(f"{path} is a text file (it starts with {head.decode()!r}), not a "
                             f"{what} in the safetensors format")
        if len(head) < 8:
            raise ValueError(f"{path}: truncated: {size} bytes, less than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER:
            other = (" It is a PyTorch file (zip or pickle): read it with zoo.weights.load"
                     if head[:2] == b"PK" or head[:1] == b"\x80" else "")
            raise ValueError(f"{path} is not a safetensors file: its first 8 bytes give a header "
                             f"of {n} bytes (corrupt, or another format).{other}")
        if 8 + n > size:
            raise ValueError(f"{path}: truncated: its header alone needs {8 + n} bytes, the "
                             f"file has {size} (an interrupted copy or download?)")
        raw = f.read(n)
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt: its safetensors header is not valid JSON ({e})") from None
    meta = table.pop("__metadata__", None) if isinstance(table, dict) else None
    end = 0
    for name, entry in (table.items() if isinstance(table, dict) else [(None, table)]):
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{path}: corrupt: its safetensors header is malformed "
                             f"(tensor {name!r}: {str(entry)[:80]})")
        if entry.get("dtype") not in _NUMPY_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry.get('dtype')!r}, which "
                             f"NumPy cannot read (known: {', '.join(sorted(_NUMPY_DTYPES))})")
        end = max(end, offsets[1])
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path}: corrupt: its safetensors metadata is not a string mapping")
    expected = 8 + n + end
    if size < expected:
        raise ValueError(f"{path}: truncated: {size} bytes, its header describes {expected} "
                         f"(an interrupted copy or download?)")
    if size > expected:
        raise ValueError(f"{path}: corrupt: {size - expected} bytes after the data its header "
                         f"describes")
    return Header(table, dict(meta or {}), raw, size)


def verify(path, header: Header | None = None) -> bool:
    """Check the content hash of ``path``: True when it matches, False when the file has none
    (written before hashes existed); a mismatch raises ``ValueError`` ("corrupt: content
    hash mismatch"). Reads the file once, in blocks."""
    path = os.fspath(path)
    header = header or read_header(path)
    digest = header.metadata.get(HASH_KEY)
    if digest is None:
        return False
    token = _hash_token(digest)
    if not re.fullmatch(r"[0-9a-f]{64}", digest) or header.raw.count(token) != 1:
        raise ValueError(f"{path}: corrupt: its {HASH_KEY} entry is malformed")
    h = hashlib.sha256(len(header.raw).to_bytes(8, "little"))
    h.update(header.raw.replace(token, _hash_token(_ZEROS)))
    with open(path, "rb") as f:
        f.seek(8 + len(header.raw))
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    actual = h.hexdigest()
    if actual != digest:
        raise ValueError(f"{path}: corrupt: content hash mismatch (its header records SHA-256 "
                         f"{digest[:16]}..., its content hashes to {actual[:16]}...): it changed "
                         f"after it was written; use another copy or checkpoint")
    return True


def read_safetensors(path, what: str = "weights file") -> tuple[dict[str, np.ndarray], Header]:
    """``(name -> array, header)`` of any safetensors file, checked (:func:`read_header`,
    :func:`verify`); safetensors' own errors are re-raised here, naming ``path``."""
    path = os.fspath(path)
    header = read_header(path, what)
    verify(path, header)
    try:
        return dict(safetensors.numpy.load_file(path)), header
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def check_finite(tensors: Mapping[str, Any], path, prefixes: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` listing the floating tensors (under ``prefixes``, default all)
    that hold NaN or inf: a model with such weights outputs NaN for every input."""
    bad = []
    for name, value in tensors.items():
        value = np.asarray(value)
        if (prefixes and not name.startswith(prefixes)) or value.dtype.kind not in "fc":
            continue
        finite = np.isfinite(value)
        if not finite.all():
            nan = int(np.count_nonzero(np.isnan(value)))
            bad.append(f"{name} ({nan} NaN, {value.size - int(finite.sum()) - nan} inf "
                       f"of {value.size})")
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise ValueError(f"{os.fspath(path)}: {len(bad)} weight tensor(s) hold NaN or inf, so "
                         f"every output would be NaN: {', '.join(bad[:8])}{more}. They come from "
                         f"a diverged run or a damaged file (allow_nonfinite=True loads them)")
