"""Exporting a model with its weights, to run where zoo is not installed.

Three formats, each a program of the model's inference (``train=False``) from float32 NHWC
images, normalised as the model expects (``(x / 255 - model.mean) / model.std``), to logits:

- :func:`stablehlo`: ``jax.export`` of the jitted function, serialized to bytes. The weights
  are constants inside it, so ``jax.export.deserialize(data).call(x)`` is all a consumer
  runs (JAX alone, no zoo; any later JAX reads it, within ``jax.export``'s compatibility
  window).
- :func:`saved_model`: a TensorFlow SavedModel (``jax2tf``) whose ``serving_default``
  signature takes ``images`` and returns ``{"logits": ...}``; the weights are TF variables.
  Needs TensorFlow (the optional ``data`` extra).
- :func:`onnx`: an ONNX model (``jax2onnx``) with input ``images`` and output ``logits``,
  for ONNX Runtime and the like. Needs ``jax2onnx``.

The batch dimension is symbolic by default (``batch="symbolic"``: one program for every
batch size) or fixed (``batch=N``); height, width and channels are fixed, the size the
weights were made for (``input_shape``, default the model's own).

Exported programs run under ``ConvPolicy.xla()``, every convolution XLA's own: the default
policy's choices (im2col, taps, Winograd) were tuned on and for the local CPU, and the
compiler options ``zoo.jit`` passes are not part of an exported module, so a portable
program gives each conv to whatever compiles it. StableHLO and SavedModel programs are
lowered for ``platforms`` (default CPU and CUDA) and run on any of them.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import numbers
import os
import shutil
import tempfile
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import atomic_write_bytes
from .kernels import ConvPolicy
from .registry import Model

__all__ = ["DEFAULT_PLATFORMS", "FORMATS", "ONNX_OPSET", "check_output", "onnx", "saved_model",
           "signature", "stablehlo"]

#: the formats this module writes (the values of ``zoo export --format``)
FORMATS = ("stablehlo", "savedmodel", "onnx")
#: where a StableHLO or SavedModel program runs unless ``platforms`` says otherwise
DEFAULT_PLATFORMS = ("cpu", "cuda")
#: ONNX opset of :func:`onnx` (ONNX Runtime 1.14 and later read it)
ONNX_OPSET = 18


# ----------------------------------------------------------------------------------------
# What every format shares: the checked arguments, the portable model, the shapes.

def _image_shape(model: Model, input_shape) -> tuple[int, int, int]:
    if input_shape is None:
        return model.input_shape
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                  and d >= 1 for d in shape):
        raise ValueError(f"input_shape must be one image's (H, W, C), e.g. {model.input_shape}; "
                         f"got {input_shape!r} (the batch is the batch= argument)")
    if shape[-1] != model.input_shape[-1]:
        raise ValueError(f"{model.name} takes {model.input_shape[-1]} channel(s); input_shape "
                         f"{shape} has {shape[-1]}")
    return tuple(int(d) for d in shape)


def _check_batch(batch):
    if batch == "symbolic":
        return batch
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be 'symbolic' or an int >= 1, got {batch!r}")
    return int(batch)


def _split(model: Model, variables) -> tuple:
    if not isinstance(model, Model):
        raise TypeError(f"model must be a zoo.Model (zoo.create or zoo.weights.load), got "
                        f"{type(model).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(f"variables must be {{'params': ..., 'state': ...}} as {model.name}.init "
                        f"or zoo.weights.load returns, got {type(variables).__name__}")
    return variables["params"], variables.get("state") or {}


def _prepare(model: Model, variables, input_shape, batch):
    """``(portable model, params, state, input ShapeDtypeStruct)``, every argument checked."""
    params, state = _split(model, variables)
    h, w, c = _image_shape(model, input_shape)
    batch = _check_batch(batch)
    if batch == "symbolic":
        shape = jax.export.symbolic_shape(f"b, {h}, {w}, {c}")
    else:
        shape = (batch, h, w, c)
    return (model.with_policy(ConvPolicy.xla()), params, state,
            jax.ShapeDtypeStruct(shape, jnp.float32))


def signature(model: Model, input_shape=None, batch="symbolic") -> tuple[tuple, tuple]:
    """``(input shape, output shape)`` of an exported program, the batch written ``"b"``
    when symbolic: ``(("b", 32, 32, 1), ("b", 10))`` for lenet5."""
    h, w, c = _image_shape(model, input_shape)
    batch = _check_batch(batch)
    out = model.output_shape((1, h, w, c))
    b = "b" if batch == "symbolic" else batch
    return (b, h, w, c), (b, *out[1:])


def check_output(path, format: str) -> str:
    """``path`` as an absolute path where ``format`` can be written, checked before any
    work: its directory exists and is writable; a file format's path is not a directory;
    a SavedModel's is absent or an earlier SavedModel (see :func:`saved_model`)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from: {', '.join(FORMATS)}")
    full = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(full)
    if os.path.lexists(parent) and not os.path.isdir(parent):
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a directory")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path}: {parent} does not exist; create the "
                                f"directory first or give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {parent} is not writable")
    if format == "savedmodel":
        _check_target_dir(full)
    elif os.path.isdir(full):
        raise IsADirectoryError(f"{path} is a directory; a {format} export is one file: give "
                                f"a file path")
    return full


def _platforms(platforms) -> tuple[str, ...]:
    names = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    if not names or not all(isinstance(p, str) and p for p in names):
        raise ValueError(f"platforms must name at least one JAX platform (cpu, cuda, rocm, tpu), "
                         f"got {platforms!r}")
    return names


# ----------------------------------------------------------------------------------------
# StableHLO.

def stablehlo(model: Model, variables, input_shape=None, *, batch="symbolic",
              platforms: Sequence[str] = DEFAULT_PLATFORMS) -> bytes:
    """The model's inference with its weights as a serialized ``jax.export.Exported``.

    ``input_shape``: one image's (H, W, C), default ``model.input_shape``; ``batch``:
    ``"symbolic"`` (any batch size) or a fixed int. Run it without zoo::

        exported = jax.export.deserialize(data)
        logits = exported.call(images)      # float32 (N, H, W, C), normalised
    """
    portable, params, state, spec = _prepare(model, variables, input_shape, batch)
    platforms = _platforms(platforms)
    # The weights are closed over as constants: the artifact is then self-contained and
    # call(images) needs nothing else, which is what running it without zoo asks for.
    params, state = jax.tree.map(jnp.asarray, (params, state))

    def logits(x):
        return portable.apply(params, state, x, train=False)[0]

    exported = jax.export.export(jax.jit(logits), platforms=platforms)(spec)
    return bytes(exported.serialize())


# ----------------------------------------------------------------------------------------
# TensorFlow SavedModel.

def _import_tensorflow():
    """TensorFlow and jax2tf, on the CPU (JAX owns any accelerator), or an ImportError that
    says how to install them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")  # imported after TensorFlow, it crashes the process
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as e:
        raise ImportError(f"SavedModel export needs TensorFlow ({e}); install it with: "
                          f"pip install -e '.[data]'") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # TensorFlow already initialised: keep its devices
        pass
    return tf, jax2tf


def _check_target_dir(path: str) -> None:
    """``path`` may be absent or a SavedModel directory (which is replaced), nothing else."""
    if os.path.isdir(path):
        if os.listdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"{path} is a directory that holds no SavedModel; it is not "
                             f"replaced: give a new path or an earlier export's directory")
    elif os.path.lexists(path):
        raise ValueError(f"{path} exists and is not a directory; a SavedModel is a directory: "
                         f"give another path")


def _replace_dir(new: str, path: str) -> None:
    """Move the finished directory ``new`` to ``path``; a directory there is renamed aside
    first and deleted after, so ``path`` holds the old export or the new, never a mix (and
    between the two renames, nothing: a process killed then leaves the old one aside)."""
    old = None
    if os.path.isdir(path):
        old = f"{new}.old"
        os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def saved_model(model: Model, variables, input_shape, path, *, batch="symbolic",
                platforms: Sequence[str] = DEFAULT_PLATFORMS) -> str:
    """Write the model's inference as a TensorFlow SavedModel directory at ``path``; returns
    ``path``. Its ``serving_default`` signature takes ``images`` (float32 NHWC, normalised;
    any batch size unless ``batch`` fixes one) and returns ``{"logits": ...}``::

        loaded = tf.saved_model.load(path)
        logits = loaded.signatures["serving_default"](images=x)["logits"]

    The directory is written next to ``path`` and renamed into place when complete; an
    earlier SavedModel at ``path`` is replaced, any other existing file or directory is
    an error. ``input_shape``: (H, W, C) or None for the model's own."""
    portable, params, state, spec = _prepare(model, variables, input_shape, batch)
    platforms = _platforms(platforms)
    path = os.path.abspath(os.fspath(path))
    _check_target_dir(path)
    tf, jax2tf = _import_tensorflow()
    leaves, tree = jax.tree.flatten({"params": params, "state": state})

    def logits(weights, x):
        v = jax.tree.unflatten(tree, weights)
        return portable.apply(v["params"], v["state"], x, train=False)[0]

    # The weights are arguments, saved as TF variables: TensorFlow stores them beside the
    # graph (a graph holding them as constants is limited to 2 GB).
    poly = "(b, " + ", ".join(map(str, spec.shape[1:])) + ")"
    converted = jax2tf.convert(logits, with_gradient=False,
                               polymorphic_shapes=[None, poly if batch == "symbolic" else None],
                               native_serialization_platforms=platforms)
    module = tf.Module()
    module.weights = [tf.Variable(np.asarray(a), trainable=False) for a in leaves]
    fixed = None if batch == "symbolic" else spec.shape[0]

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((fixed, *spec.shape[1:]), tf.float32, name="images")])
    def serve(images):
        return {"logits": converted(list(module.weights), images)}

    module.serve = serve
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; an export is an ordinary directory
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------------------
# ONNX.

def _import_onnx():
    try:
        import jax2onnx
        import onnx as onnx_lib
    except ImportError as e:
        raise ImportError(f"ONNX export needs jax2onnx ({e}); install it with: pip install "
                          f"-e '.[onnx]'") from None
    return jax2onnx, onnx_lib


def _attrs(node, onnx_lib) -> dict:
    return {a.name: onnx_lib.helper.get_attribute_value(a) for a in node.attribute}


def _nhwc_max_pool(node, onnx_lib, axes: str) -> list | None:
    """The nodes for a max pool jax2onnx wrote over all four NHWC axes of a tensor it
    unsqueezed to 6-D (ONNX Runtime pools 1 to 3 spatial axes): squeeze, NCHW, a 2-D
    MaxPool, NHWC, unsqueeze. None when ``node`` is not such a pool."""
    a = _attrs(node, onnx_lib)
    k, s = list(a.get("kernel_shape", ())), list(a.get("strides", [1] * 4))
    p = list(a.get("pads", [0] * 8))
    if (len(k) != 4 or k[0] != 1 or k[3] != 1 or s[0] != 1 or s[3] != 1 or len(p) != 8
            or p[0] or p[3] or p[4] or p[7] or any(d != 1 for d in a.get("dilations", ()))):
        return None
    name, make = node.output[0], onnx_lib.helper.make_node
    keep = {key: a[key] for key in ("ceil_mode",) if key in a}
    return [make("Squeeze", [node.input[0], axes], [name + "/nhwc"]),
            make("Transpose", [name + "/nhwc"], [name + "/nchw"], perm=[0, 3, 1, 2]),
            make("MaxPool", [name + "/nchw"], [name + "/pooled"], kernel_shape=k[1:3],
                 strides=s[1:3], pads=[p[1], p[2], p[5], p[6]], **keep),
            make("Transpose", [name + "/pooled"], [name + "/pooled_nhwc"], perm=[0, 2, 3, 1]),
            make("Unsqueeze", [name + "/pooled_nhwc", axes], [name])]


def _conv_pads(node, onnx_lib) -> None:
    """Clear a conv's negative end padding (zoo's floor rule drops the last rows a stride
    cannot reach; ONNX pads are >= 0): with fewer than ``stride`` rows dropped, padding 0
    gives the same outputs, the dropped rows never being read."""
    a = _attrs(node, onnx_lib)
    pads = list(a.get("pads", ()))
    if not pads or min(pads) >= 0:
        return
    n = len(pads) // 2
    strides = list(a.get("strides", [1] * n))
    fixed = pads[:n] + [0 if -s < e < 0 else e for e, s in zip(pads[n:], strides)]
    if min(fixed) < 0:
        raise NotImplementedError(f"conv {node.name} has padding {pads} (strides {strides}), "
                                  f"which ONNX cannot express")
    for attr in node.attribute:
        if attr.name == "pads":
            attr.ints[:] = fixed


def _for_runtimes(graph, onnx_lib, axes: str) -> int:
    """Make jax2onnx's output valid for ONNX runtimes, in ``graph`` and its subgraphs:
    4-D max pools as 2-D ones (:func:`_nhwc_max_pool`), negative conv padding cleared
    (:func:`_conv_pads`). Returns how many pools were rewritten."""
    nodes, count = [], 0
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                count += _for_runtimes(sub, onnx_lib, axes)
        if node.op_type == "Conv":
            _conv_pads(node, onnx_lib)
        new = _nhwc_max_pool(node, onnx_lib, axes) if node.op_type == "MaxPool" else None
        nodes.extend(new or [node])
        count += new is not None
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def onnx(model: Model, variables, input_shape, path, *, batch="symbolic",
         opset: int = ONNX_OPSET) -> str:
    """Write the model's inference as an ONNX file at ``path`` (atomically); returns
    ``path``. Input ``images`` (float32 NHWC, normalised; batch dimension ``b`` unless
    ``batch`` fixes it), output ``logits``::

        session = onnxruntime.InferenceSession(path)
        logits = session.run(["logits"], {"images": x})[0]

    Converted by jax2onnx from the jaxpr of ``model.apply``, then made valid for ONNX
    runtimes (:func:`_for_runtimes`). A model it cannot convert raises
    ``NotImplementedError`` with the converter's reason; some convert only with a fixed
    ``batch``."""
    portable, params, state, spec = _prepare(model, variables, input_shape, batch)
    jax2onnx, onnx_lib = _import_onnx()
    params, state = jax.tree.map(jnp.asarray, (params, state))

    def logits(x):  # the weights become the ONNX model's initializers
        return portable.apply(params, state, x, train=False)[0]

    dims = ("b", *spec.shape[1:]) if batch == "symbolic" else spec.shape
    quiet = logging.getLogger("onnx_ir")  # its notes on untyped shape constants are noise
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        proto = jax2onnx.to_onnx(logits, [dims], model_name=model.name, opset=opset,
                                 input_names=["images"], output_names=["logits"])
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        hint = ("a fixed batch (batch=N, zoo export --batch N) may convert; "
                if batch == "symbolic" else "")
        raise NotImplementedError(
            f"jax2onnx {importlib.metadata.version('jax2onnx')} cannot convert {model.name}: "
            f"{type(e).__name__}: {reason}; {hint}or export it as StableHLO or a SavedModel "
            f"instead") from e
    finally:
        quiet.setLevel(level)
    axes = "zoo_axes_0_1"
    if _for_runtimes(proto.graph, onnx_lib, axes):
        proto.graph.initializer.append(onnx_lib.numpy_helper.from_array(
            np.array([0, 1], np.int64), axes))
    path = os.fspath(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
