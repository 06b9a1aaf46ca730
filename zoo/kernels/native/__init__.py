"""zoo's compiled CPU kernel: the convolution weight gradient (``wgrad.cc``).

XLA:CPU computes a convolution's weight gradient by transposing the input and the output
gradient and running a general contraction over every output position: 62-104 GFLOP/s on
ResNet-18's big maps, where the direct form reaches the matmul peak (docs/benchmarks.md,
"The weight gradient in C++"). ``wgrad.cc`` reads the patches in place and keeps a tile of
the gradient in registers; it runs as an XLA FFI custom call on XLA's own thread pool.

The library is built once per machine, the first time a program needs it, with the C++
compiler at hand (``$CXX``, else ``c++``/``g++``/``clang++``) for this CPU (``-march=native``),
against the FFI headers jaxlib ships, and kept in ``$ZOO_CACHE/native`` (default
``~/.cache/zoo/native``) under a name that hashes the source, the compiler, the flags,
jaxlib and the CPU. It is written atomically. Where it cannot be built, :func:`available`
says why and the convolutions keep XLA's weight gradient (one warning says so).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ...machine import cpuinfo

SOURCE = os.path.join(os.path.dirname(__file__), "wgrad.cc")
TARGET = "zoo_conv_weight_grad"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
#: The dtypes the kernel takes.
DTYPES = (jnp.dtype(jnp.float32),)
#: The kernel's output channels come in vectors of 16; others are padded with zeros.
LANES = 16
_COMPILE_TIMEOUT_S = 300


class NativeUnavailable(RuntimeError):
    """The kernel library could not be built or loaded here; the message says why."""


def cache_directory() -> str:
    """``$ZOO_CACHE/native``, else ``$XDG_CACHE_HOME/zoo/native``, else
    ``~/.cache/zoo/native``."""
    if os.environ.get("ZOO_CACHE"):
        return os.path.join(os.path.abspath(os.path.expanduser(os.environ["ZOO_CACHE"])),
                            "native")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zoo", "native")


def compiler() -> str:
    """The C++ compiler's path: ``$CXX``, else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        found = shutil.which(os.environ["CXX"])
        if not found:
            raise NativeUnavailable(f"$CXX={os.environ['CXX']!r} is not an executable")
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeUnavailable("no C++ compiler (c++, g++ or clang++) on PATH; set $CXX")


def library_path(cxx: str) -> str:
    """Where the library for this source, compiler, flags, jaxlib and CPU is kept."""
    import jaxlib

    info = cpuinfo()
    h = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        h.update(f.read())
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"the C++ compiler {cxx} does not run: {e}") from None
    for part in (cxx, *version, *FLAGS, jaxlib.__version__, info.get("model name", ""),
                 info.get("flags", "")):
        h.update(part.encode() + b"\0")
    return os.path.join(cache_directory(), f"wgrad-{h.hexdigest()[:16]}.so")


def build(cxx: str, out: str, stream=None) -> None:
    """Compile :data:`SOURCE` into ``out`` (atomically: a failed or interrupted build leaves
    no file there)."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    print(f"zoo: compiling the convolution weight-gradient kernel for this CPU "
          f"(once per machine) -> {out}", file=stream or sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".wgrad-", suffix=".so")
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), SOURCE, "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=_COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailable(f"{' '.join(cmd)} did not run: {e}") from None
        if done.returncode != 0:
            raise NativeUnavailable(f"{' '.join(cmd)} failed (exit {done.returncode}):\n"
                                    f"{done.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@functools.lru_cache(maxsize=1)
def _load() -> str | None:
    """Build (if needed), load and register the kernel once per process: None, or why not."""
    try:
        cxx = compiler()
        path = library_path(cxx)
        if not os.path.exists(path):
            build(cxx, path)
        try:
            lib = ctypes.cdll.LoadLibrary(path)
            handler = lib.ZooConvWeightGrad
        except (OSError, AttributeError) as e:
            raise NativeUnavailable(f"{path} does not load ({e}); delete it to rebuild") from None
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    except NativeUnavailable as e:
        return str(e)
    return None


def available() -> bool:
    """Whether the kernel runs here (built and loaded on first call); :func:`why_not` says
    why not."""
    return _load() is None


def why_not() -> str | None:
    return _load()


_warned = []


def warn_unavailable() -> None:
    """One warning per process that convolutions keep XLA's weight gradient, and why."""
    if not _warned:
        _warned.append(True)
        warnings.warn(f"zoo's weight-gradient kernel is not available ({why_not()}); "
                      f"convolutions use XLA's (slower on big maps). "
                      f"ConvPolicy(native_grad_min_map=0) says so without this warning",
                      stacklevel=3)


def weight_grad(x, dy, kernel_hw, stride, pads):
    """``dL/dW`` (HWIO, float32) of the NHWC convolution of ``x`` with a ``kernel_hw``
    kernel, ``stride`` and per-side ``pads`` ((top, bottom), (left, right); a negative
    bottom or right is a border the floor rule never reads), given ``dy``. Raises
    :class:`NativeUnavailable` where the kernel cannot run."""
    reason = _load()
    if reason is not None:
        raise NativeUnavailable(reason)
    (kh, kw), (sh, sw) = kernel_hw, stride
    n, h, w, c = x.shape
    ho, wo, k = dy.shape[1:]
    # exactly the rows and columns the windows read: (out - 1) * stride + kernel
    pad_cfg = [(0, 0, 0)] + [(lo, (o - 1) * s + kk - size - lo, 0) for (lo, _), o, s, kk, size
                             in zip(pads, (ho, wo), (sh, sw), (kh, kw), (h, w))] + [(0, 0, 0)]
    xp = jax.lax.pad(x.astype(jnp.float32), jnp.float32(0), pad_cfg)
    kp = -(-k // LANES) * LANES
    g = dy.astype(jnp.float32)
    if kp != k:
        g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, kp - k)))
    out = jax.ShapeDtypeStruct((kh, kw, c, kp), jnp.float32)
    dw = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        xp, g, sh=np.int64(sh), sw=np.int64(sw))
    return dw[..., :k] if kp != k else dw
