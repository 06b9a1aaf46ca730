"""zoo's compiled CPU kernels, XLA FFI calls on XLA's own thread pool:

- ``conv.cc``: the convolution's forward, the same tile the other way round (6 output
  positions of the whole batch's grid by 64 channels down the window), the padding read in
  place, W packed in blocks that stay in L2; faster than XLA's on image convs and on maps
  up to 112x112, from 7x7 up, where the policy gives it the custom convs' forward and
  stride-1 input gradient; an inference BatchNorm and ReLU after it are applied in its
  store;
- ``wgrad.cc``: the convolution weight gradient. XLA:CPU transposes the input and the output
  gradient and runs a general contraction over every output position: 62-104 GFLOP/s on
  ResNet-18's big maps, where this direct form, the patches read in place (the padding
  never built) and a tile of the gradient in registers, reaches the matmul peak;
- ``bnsums.cc``: training BatchNorm's sums over N*H*W (the batch statistics; the two sums
  of its backward), each input read once, where XLA writes out ``(x - mean)^2`` and
  ``g * xhat`` for its products with a ones vector;
- ``maxpool.cc``: max pooling and its gradient, each window read once (and ``dx`` written
  once), where XLA runs a slower reduce-window and the gradient's XLA form pads the input
  and accumulates one plane per window offset;
- ``amxconv.cc``: the bfloat16 convolution's forward on Intel's AMX tiles, on CPUs that have
  them (:func:`amx_available`), where XLA:CPU converts bfloat16 convolutions to float32.

Each gives the same bits on every run and thread count (docs/benchmarks.md, "The weight
gradient, BatchNorm's sums and the max-pool gradient in C++").

The library is built once per machine, the first time a program that needs it is traced,
with the C++ compiler at hand (``$CXX``, else ``c++``/``g++``/``clang++``) for this
CPU (``-march=native``), against the FFI headers jaxlib ships, and kept in
``$ZOO_CACHE/native`` (default ``~/.cache/zoo/native``) under a name that hashes the
sources, the compiler, the flags, jaxlib and the CPU. It is written atomically. Where it
cannot be built, :func:`available` says why and the XLA forms run (one warning says so).
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

_HERE = os.path.dirname(__file__)
SOURCES = tuple(os.path.join(_HERE, f)
                for f in ("conv.cc", "wgrad.cc", "bnsums.cc", "maxpool.cc", "amxconv.cc"))
HEADERS = (os.path.join(_HERE, "common.h"),)
#: FFI target name -> the handler's symbol in the library.
TARGETS = {"zoo_conv": "ZooConvForward", "zoo_conv_weight_grad": "ZooConvWeightGrad",
           "zoo_batch_stats": "ZooBatchStats", "zoo_grad_sums": "ZooGradSums",
           "zoo_max_pool": "ZooMaxPool", "zoo_max_pool_grad": "ZooMaxPoolGrad",
           "zoo_amx_conv": "ZooAmxConvForward", "zoo_pooled_conv": "ZooPooledConvForward"}
TARGET = "zoo_conv_weight_grad"   # the weight gradient's
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
#: The dtypes the kernels take.
DTYPES = (jnp.dtype(jnp.float32),)
#: The weight gradient's output channels come in vectors of 16; others are padded with zeros.
LANES = 16
_COMPILE_TIMEOUT_S = 300


class NativeUnavailable(RuntimeError):
    """The kernels' library could not be built or loaded here; the message says why."""


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
    """Where the library for these sources, compiler, flags, jaxlib and CPU is kept."""
    import jaxlib

    info = cpuinfo()
    h = hashlib.sha256()
    for source in SOURCES + HEADERS:
        with open(source, "rb") as f:
            h.update(f.read())
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"the C++ compiler {cxx} does not run: {e}") from None
    for part in (cxx, *version, *FLAGS, jaxlib.__version__, info.get("model name", ""),
                 info.get("flags", "")):
        h.update(part.encode() + b"\0")
    return os.path.join(cache_directory(), f"kernels-{h.hexdigest()[:16]}.so")


def build(cxx: str, out: str, stream=None) -> None:
    """Compile :data:`SOURCES` into ``out`` (atomically: a failed or interrupted build
    leaves no file there)."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    print(f"zoo: compiling its CPU kernels (convolution, its weight gradient, BatchNorm's "
          f"sums, max pooling and its gradient, bfloat16 convolution on AMX) for this CPU, "
          f"once "
          f"per machine -> {out}",
          file=stream or sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".kernels-", suffix=".so")
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), *SOURCES, "-o", tmp]
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


_registered: list = []   # the library whose handlers this process registered
_amx: list = []          # whether the loaded library runs AMX tiles in this process


@functools.lru_cache(maxsize=1)
def _load() -> str | None:
    """Build (if needed), load and register the kernels once per process: None, or why
    not."""
    try:
        cxx = compiler()
        path = library_path(cxx)
        if not os.path.exists(path):
            build(cxx, path)
        try:
            lib = ctypes.cdll.LoadLibrary(path)
            handlers = {name: getattr(lib, symbol) for name, symbol in TARGETS.items()}
        except (OSError, AttributeError) as e:
            raise NativeUnavailable(f"{path} does not load ({e}); delete it to rebuild") from None
        _amx[:] = [bool(lib.ZooAmxReady())]
        if not _registered:   # XLA takes a target's handler once per process
            for name, handler in handlers.items():
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
            _registered.append(path)
    except NativeUnavailable as e:
        return str(e)
    return None


def available() -> bool:
    """Whether the kernels run here (built and loaded on the first call); :func:`why_not`
    says why not."""
    return _load() is None


def why_not() -> str | None:
    return _load()


#: /proc/cpuinfo flags the AMX convolution needs.
AMX_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def amx_here() -> bool:
    """Whether this CPU has AMX's bfloat16 tiles (its flags; builds nothing)."""
    flags = set(cpuinfo().get("flags", "").split())
    return all(f in flags for f in AMX_FLAGS)


def amx_available() -> bool:
    """Whether the bfloat16 AMX convolution runs here: the CPU has the tiles, the library
    was built with them and the kernel was given the tile state (Linux's
    ``ARCH_REQ_XCOMP_PERM``)."""
    return amx_here() and available() and bool(_amx and _amx[0])


_warned = []


def warn_unavailable() -> None:
    """One warning per process that XLA's forms run instead, and why."""
    if not _warned:
        _warned.append(True)
        warnings.warn(f"zoo's compiled CPU kernels are not available ({why_not()}); "
                      f"conv weight gradients, BatchNorm's sums and max pooling "
                      f"use XLA's forms (slower). ConvPolicy(native=False) asks for XLA's "
                      f"without this warning", stacklevel=3)


def usable() -> bool:
    """:func:`available`, with :func:`warn_unavailable` when not: what a caller that asked
    for a kernel checks before taking XLA's form instead."""
    if available():
        return True
    warn_unavailable()
    return False


def _ready() -> None:
    reason = _load()
    if reason is not None:
        raise NativeUnavailable(reason)


def _cropped(x, pads):
    """``x`` without the rows and columns a negative top or left pad puts before every
    window."""
    (top, _), (left, _) = pads
    return x[:, max(0, -top):, max(0, -left):, :] if top < 0 or left < 0 else x


def _whole_vectors(w, dtype):
    """HWIO ``w`` as ``dtype``, its output channels padded with zeros to whole vectors of
    :data:`LANES`."""
    k = w.shape[3]
    kp = -(-k // LANES) * LANES
    w = w.astype(dtype)
    return jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, kp - k))) if kp != k else w


def conv(x, w, stride, pads, out_hw, scale=None, shift=None, relu=False):
    """The NHWC x HWIO convolution (float32) with ``stride``, per-side ``pads`` (zeros read
    in place, never built; a negative pad: a border no window reads) and output map
    ``out_hw``, then ``* scale + shift`` per output channel (default 1 and 0) and
    ``max(., 0)`` where ``relu``, in the store (no pass of their own)."""
    return _conv_call("zoo_conv", out_hw, x, w, stride, pads, scale, shift, relu)


def pooled_conv(x, w, stride, pads, out_hw, scale, shift, relu, pool):
    """:func:`conv` (its map ``out_hw``) followed by a max pool, the conv's output never
    written out: ``pool`` is ``(window, strides, (top, left) padding, pooled map)``; the
    padding and any border no window reaches are never read (-inf), a NaN in a window gives
    NaN."""
    (ph, pw), (psh, psw), (ppt, ppl), pooled_hw = pool
    return _conv_call("zoo_pooled_conv", pooled_hw, x, w, stride, pads, scale, shift, relu,
                      ho=out_hw[0], wo=out_hw[1], ph=ph, pw=pw, psh=psh, psw=psw, ppt=ppt,
                      ppl=ppl)


def _conv_call(target, out_hw, x, w, stride, pads, scale, shift, relu, **sizes):
    """The float32 forward ``target`` with an ``out_hw`` result: the input cropped where a
    pad is negative, the channels padded to whole vectors, ``sizes`` as int64 attributes."""
    _ready()
    (top, _), (left, _) = pads
    x = _cropped(x, pads)
    k = w.shape[3]
    w = _whole_vectors(w, jnp.float32)
    kp = w.shape[3]
    scale, shift = _terms(scale, shift, k, kp)
    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kp), jnp.float32)
    y = jax.ffi.ffi_call(target, out, vmap_method="sequential")(
        x.astype(jnp.float32), w, scale, shift, sh=np.int64(stride[0]),
        sw=np.int64(stride[1]), pt=np.int64(max(0, top)), pl=np.int64(max(0, left)),
        relu=bool(relu), **{name: np.int64(v) for name, v in sizes.items()})
    return y[..., :k] if kp != k else y


def _terms(scale, shift, k, kp):
    """Per-channel ``scale`` and ``shift`` (float32; None: 1 and 0) for ``k`` channels,
    padded to ``kp`` with 1 and 0."""
    scale = jnp.ones((k,), jnp.float32) if scale is None else scale.astype(jnp.float32)
    shift = jnp.zeros((k,), jnp.float32) if shift is None else shift.astype(jnp.float32)
    return (jnp.pad(scale, (0, kp - k), constant_values=1.0), jnp.pad(shift, (0, kp - k)))


def amx_conv(x, w, stride, pads, out_hw, scale=None, shift=None, relu=False):
    """The NHWC x HWIO convolution in bfloat16 on AMX tiles with ``stride``, per-side
    ``pads`` (a negative bottom or right: a border the floor rule never reads) and output map
    ``out_hw``: accumulated in float32, then ``* scale + shift`` per output channel (float32;
    default 1 and 0) and ``max(., 0)`` where ``relu``, rounded once."""
    _ready()
    if not amx_available():
        raise NativeUnavailable("the AMX convolution does not run here (no AMX tiles on this "
                                "CPU, or the tile state was refused)")
    if pads[0][0] < 0 or pads[1][0] < 0:
        raise ValueError(f"amx_conv: the top and left padding must be >= 0, got {pads}")
    k = w.shape[3]
    w = _whole_vectors(w, jnp.bfloat16)
    kp = w.shape[3]
    scale, shift = _terms(scale, shift, k, kp)
    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kp), jnp.bfloat16)
    y = jax.ffi.ffi_call("zoo_amx_conv", out, vmap_method="sequential")(
        x.astype(jnp.bfloat16), w, scale, shift, sh=np.int64(stride[0]),
        sw=np.int64(stride[1]), pt=np.int64(pads[0][0]), pl=np.int64(pads[1][0]),
        relu=bool(relu))
    return y[..., :k] if kp != k else y


def input_grad(dy, w, pads, in_hw, tiles=False):
    """``dL/dx`` of a stride-1 :func:`conv` (``tiles``: :func:`amx_conv`) with per-side
    ``pads``: the convolution of ``dy`` with the flipped kernel, inputs and outputs
    swapped."""
    kh, kw = w.shape[:2]
    w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    back = tuple((k - 1 - lo, size - o + lo) for (lo, _), k, o, size
                 in zip(pads, (kh, kw), dy.shape[1:3], in_hw))
    return (amx_conv if tiles else conv)(dy, w_t, (1, 1), back, tuple(in_hw))


def weight_grad(x, dy, kernel_hw, stride, pads):
    """``dL/dW`` (HWIO, float32) of the NHWC convolution of ``x`` with a ``kernel_hw``
    kernel, ``stride`` and per-side ``pads`` ((top, bottom), (left, right); a negative
    bottom or right is a border the floor rule never reads), given ``dy``. Raises
    :class:`NativeUnavailable` where the kernel cannot run."""
    _ready()
    (kh, kw), (sh, sw) = kernel_hw, stride
    x = _cropped(x, pads)
    c = x.shape[3]
    k = dy.shape[3]
    kp = -(-k // LANES) * LANES
    g = dy.astype(jnp.float32)
    if kp != k:
        g = jnp.pad(g, ((0, 0), (0, 0), (0, 0), (0, kp - k)))
    out = jax.ShapeDtypeStruct((kh, kw, c, kp), jnp.float32)
    (top, _), (left, _) = pads
    dw = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        x.astype(jnp.float32), g, sh=np.int64(sh), sw=np.int64(sw), pt=np.int64(max(0, top)),
        pl=np.int64(max(0, left)))
    return dw[..., :k] if kp != k else dw


def _rows(a):
    return a.reshape(-1, a.shape[-1])


def batch_stats(x):
    """``(mean, biased variance)`` of float32 ``x`` over every axis but the last."""
    _ready()
    c = x.shape[-1]
    out = (jax.ShapeDtypeStruct((c,), jnp.float32),) * 2
    return jax.ffi.ffi_call("zoo_batch_stats", out, vmap_method="sequential")(_rows(x))


def grad_sums(g, x, mean):
    """``(sum g, sum g * (x - mean))`` of float32 ``g`` and ``x`` over every axis but the
    last."""
    _ready()
    c = x.shape[-1]
    out = (jax.ShapeDtypeStruct((c,), jnp.float32),) * 2
    return jax.ffi.ffi_call("zoo_grad_sums", out, vmap_method="sequential")(
        _rows(g), _rows(x), mean)


def max_pool(x, window, strides, pads, out_hw):
    """The max pool of float32 NHWC ``x`` (``window``, ``strides``, the top and left of
    ``pads``; -inf padding, never read) with output map ``out_hw``."""
    _ready()
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = window, strides, pads
    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, x.shape[3]), jnp.float32)
    return jax.ffi.ffi_call("zoo_max_pool", out, vmap_method="sequential")(
        x, kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh), sw=np.int64(sw),
        pt=np.int64(pt), pl=np.int64(pl))


def max_pool_grad(x, y, g, window, strides, pads):
    """``dL/dx`` of the max pool ``y`` of float32 NHWC ``x`` (``window``, ``strides``, the
    top and left of ``pads``) given ``g``: each output's gradient to the first input of its
    window equal to it, in row-major window order."""
    _ready()
    (kh, kw), (sh, sw), ((pt, _), (pl, _)) = window, strides, pads
    return jax.ffi.ffi_call("zoo_max_pool_grad", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="sequential")(
        x, y, g, kh=np.int64(kh), kw=np.int64(kw), sh=np.int64(sh), sw=np.int64(sw),
        pt=np.int64(pt), pl=np.int64(pl))
