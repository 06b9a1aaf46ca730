"""Weight files: the download cache, downloads checked against their SHA-256, and the
package's own files. Nothing here is reached in tests or defaults without a cached file:
with ``ZOO_OFFLINE=1``, or when the server does not answer within seconds, a missing file
fails at once with the URL and the exact path to put it at."""
from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request

from .. import checkpoint as ckpt
from ..registry import WeightSpec
from .specs import ASSETS, get_weights

#: seconds allowed to resolve and reach the download server before giving up
CONNECT_TIMEOUT = 5.0


class WeightsNotFoundError(FileNotFoundError):
    """A weights file is neither cached nor downloadable here; the message says what to do."""


def cache_dir() -> str:
    """``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get("ZOO_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["ZOO_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zoo")


def _offline() -> bool:
    return os.environ.get("ZOO_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_hash(path: str, spec: WeightSpec, what: str) -> None:
    prefix = spec.sha256_prefix
    if not prefix:
        return
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise ValueError(
            f"{spec.tag}: {what} {path} has SHA-256 {digest}, but {spec.file} must start with "
            f"{prefix}: the file is corrupt or not {spec.origin}. Delete it and download "
            f"{spec.url} again")


def _unavailable(spec: WeightSpec, dest: str, why: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{spec.tag}: the weights file {spec.file} is not cached and {why}.\n"
        f"  Download {spec.url}\n"
        f"  and put it at {dest}\n"
        f"  (the cache is $ZOO_CACHE, default ~/.cache/zoo), or pass the file's path instead "
        f"of the tag (e.g. --weights /path/to/{spec.file}).")


def _reachable(url: str, timeout: float) -> str | None:
    """None when ``url``'s host resolves and accepts a connection within ``timeout``
    seconds (name resolution included, which socket timeouts do not bound); else why not."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    result: list = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host} cannot be reached ({e})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{host} did not answer within {timeout:g} s"


def _download(spec: WeightSpec, dest: str, progress: bool) -> None:
    why = _reachable(spec.url, CONNECT_TIMEOUT)
    if why:
        raise _unavailable(spec, dest, f"the download failed: {why}")
    h = hashlib.sha256()
    with ckpt.atomic_output(dest) as out:
        try:
            response = urllib.request.urlopen(spec.url, timeout=CONNECT_TIMEOUT * 4)
        except OSError as e:
            raise _unavailable(spec, dest, f"the download failed: {e}") from None
        with response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=total or None, unit="B", unit_scale=True,
                           desc=f"downloading {spec.file}", file=sys.stderr)
            while True:
                block = response.read(1 << 20)
                if not block:
                    break
                out.write(block)
                h.update(block)
                if bar:
                    bar.update(len(block))
            if bar:
                bar.close()
        digest = h.hexdigest()
        if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
            raise ValueError(f"{spec.tag}: downloaded {spec.url} has SHA-256 {digest}, "
                             f"expected a prefix {spec.sha256_prefix}; not saved")


def fetch(tag: str | WeightSpec, *, progress: bool = True, check_hash: bool = True) -> str:
    """The local path of the weights ``tag`` (or of a :class:`WeightSpec` not registered
    with a model): the package file for the zoo's own weights; for
    torchvision's, the cached file (``cache_dir()/<file>``), downloading it first when
    missing. The SHA-256 prefix in torchvision's file name is checked on download and on
    every cached read (``check_hash=False`` skips the latter). ``ZOO_OFFLINE=1`` never
    downloads: a missing file raises :class:`WeightsNotFoundError` at once, naming the URL
    and the exact path to put the file at."""
    spec = tag if isinstance(tag, WeightSpec) else get_weights(tag)
    if spec.source == "zoo":
        path = os.path.join(ASSETS, spec.file)
        if not os.path.exists(path):
            raise WeightsNotFoundError(f"{spec.tag}: the package file {path} is missing; reinstall zoo")
        return path
    dest = os.path.join(cache_dir(), spec.file)
    if os.path.exists(dest):
        if check_hash:
            _check_hash(dest, spec, "cached file")
        return dest
    if _offline():
        raise _unavailable(spec, dest, "downloads are off (ZOO_OFFLINE is set)")
    _download(spec, dest, progress)
    return dest
