"""Pretrained weights: torchvision import, a weight registry with a download cache, the
zoo's own shipped weights, and loading for fine-tuning.

Three kinds of weights are accepted wherever a ``tag_or_path`` is:

- a **tag** of :data:`WEIGHTS`: ``"resnet50.tv_in1k"`` (torchvision's ``IMAGENET1K_V1``),
  ``"resnet50.tv2_in1k"`` (``IMAGENET1K_V2``), ... or ``"lenet5.digits"`` (shipped in the
  package, trained by ``scripts/train.py``);
- a **torchvision state dict**, ``.pth`` (read with ``torch.load(weights_only=True)``:
  never unpickles arbitrary objects; needs torch) or ``.safetensors`` (read with NumPy
  alone);
- a **zoo weights file** (:func:`zoo.checkpoint.save_weights`, or a training checkpoint).

**Conversion** (:func:`load_torchvision`) happens once, on the weights: conv kernels OIHW
-> HWIO, Linear weights transposed, the first fully-connected layer after a flatten
re-ordered from torch's (C, H, W) flatten to the zoo's (H, W, C) one, BatchNorm
``weight``/``bias`` -> ``scale``/``bias`` and ``running_mean``/``running_var`` -> the
``mean``/``var`` state; ``num_batches_tracked`` is ignored. The key map is derived from
the model's parameter tree and a per-family rule table (:data:`FAMILY_RULES`): every
source key must be used exactly once and every leaf filled with the right shape, else a
``ValueError`` lists the missing, unexpected and mis-shaped keys.

**Downloads** (:func:`fetch`) go to ``$ZOO_CACHE`` (default ``~/.cache/zoo``) and are
checked against the SHA-256 prefix in torchvision's file name. With ``ZOO_OFFLINE=1`` (or
when the server cannot be reached within seconds) a missing file fails at once with an
error naming the URL and the exact path to put the file at.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import os
import pickle
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import checkpoint as ckpt
from . import nn, paths, registry
from .images import Transforms
from .registry import Model, TorchvisionRules, WeightSpec, create, get_config

__all__ = [
    "Transforms", "WeightSpec", "WeightsNotFoundError", "torchvision_rules",
    "cache_dir", "fetch", "get_weights", "imagenet_classes", "list_weights", "load",
    "convert_state_dict", "load_for_finetuning", "load_torchvision", "package_run",
    "read_state_dict", "to_torchvision_state_dict", "torchvision_key_map",
]

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
#: seconds allowed to resolve and reach the download server before giving up
CONNECT_TIMEOUT = 5.0


# ----------------------------------------------------------------------------------------
# Weight specs (registered by each family with its models).

def list_weights(pattern: str = "*") -> list[str]:
    """Known weight tags matching an fnmatch ``pattern`` (e.g. ``"resnet*"``), sorted."""
    return registry.list_weights(pattern)


def get_weights(tag: str) -> WeightSpec:
    known = registry.all_weights()
    if tag not in known:
        close = [t for t in known if t.split(".")[0] == tag.split(".")[0]]
        hint = f" (for {tag.split('.')[0]}: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown weights {tag!r}{hint}; known tags: {', '.join(list_weights())}")
    return known[tag]


@functools.cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    with open(os.path.join(ASSETS, "imagenet_classes.txt"), encoding="utf-8") as f:
        return tuple(tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip())


def imagenet_classes(wnids: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's index order (sorted WordNet ids);
    ``wnids=True`` gives the WordNet ids instead. Shipped with the package
    (``zoo/assets/imagenet_classes.txt``: ``wnid<TAB>name`` per line)."""
    return [w if wnids else n for w, n in _imagenet_table()]


# ----------------------------------------------------------------------------------------
# Cache and download.

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


# ----------------------------------------------------------------------------------------
# Reading torchvision state dicts.

def _is_torch_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torchvision state dict as ``key -> numpy array``: ``.safetensors`` with NumPy alone,
    ``.pth``/``.pt`` with ``torch.load(weights_only=True)`` (torch needed)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    if path.endswith(".safetensors"):
        import safetensors.numpy

        return dict(safetensors.numpy.load_file(path))
    if not _is_torch_file(path):
        raise ValueError(f"{path}: unknown weights format; expected .safetensors or .pth/.pt")
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs PyTorch (pip install 'zoo[torch]'); or convert "
                          f"it to .safetensors, which NumPy reads alone") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        raise ValueError(f"{path}: torch.load(weights_only=True) refused it (it holds more than "
                         f"tensors, and arbitrary objects are never unpickled): {e}") from None
    if isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model"):  # common training-checkpoint wrappers
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    out = {}
    for k, v in obj.items():
        v = v.detach().cpu()
        out[k] = (v.float() if v.is_floating_point() else v).numpy()
    return out


# ----------------------------------------------------------------------------------------
# The key map: zoo param paths <-> torchvision keys.

#: (group, zoo leaf name) -> torchvision parameter/buffer name
LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
              ("params", "bias"): "bias", ("state", "mean"): "running_mean",
              ("state", "var"): "running_var"}
#: torchvision buffers with no zoo counterpart, accepted and ignored
IGNORED_SUFFIXES = (".num_batches_tracked",)


def torchvision_rules(model_name: str) -> TorchvisionRules:
    """The registered torchvision key rules of ``model_name``; an error lists the models
    that have some."""
    rules = registry.spec(model_name).torchvision
    if rules is None:
        known = [m for m in registry.list_models() if registry.spec(m).torchvision]
        raise ValueError(f"{model_name} has no torchvision counterpart; torchvision weights "
                         f"load into: {', '.join(known)}")
    return rules


def _top_level_names(model: Model) -> list[str]:
    return [name for name, _ in model.network.children]


def _module_name(module: str, rules: TorchvisionRules, top: Sequence[str]) -> str:
    if rules.segments:
        head, _, rest = module.partition("/")
        start = 0
        for prefix, end in rules.segments:
            stop = top.index(end) if end is not None else len(top)
            if head in top[start:stop]:
                module = f"{prefix}/{top.index(head) - start}" + (f"/{rest}" if rest else "")
                break
            start = stop + 1
        else:
            raise ValueError(f"layer {head!r} lies in no segment of {rules.segments}")
    for pattern, repl in rules.rename:
        module = re.sub(pattern, repl, module)
    return module.replace("/", ".")


def _flatten_channels(rows) -> dict[str, int]:
    """Dense layers fed by a flatten of an H x W x C map (H*W > 1) -> C, from the model's
    own geometry: the rows :func:`zoo.nn.recording` collects at init, one per layer that
    changes or records a shape, in order (those that do not record keep the shape)."""
    out, pending, prev = {}, None, None
    for row in rows:
        if row["kind"] == "flatten" and prev is not None and len(prev["output_shape"]) == 4:
            _, h, w, c = prev["output_shape"]
            if h * w * c != row["output_shape"][-1]:
                raise RuntimeError(f"cannot tell the map flattened at {row['name']}")
            pending = c if h * w > 1 else None
        elif row["kind"] == "dense" and pending is not None:
            out[row["name"]] = pending
            pending = None
        prev = row
    return out


def _torch_shape(shape: tuple) -> tuple:
    if len(shape) == 4:   # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:   # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _out_last(value: np.ndarray, axes: tuple, block: int = 64) -> np.ndarray:
    """``value.transpose(axes)`` made contiguous, where ``axes`` ends with 0 (torch's
    output axis becomes the last one). Copied in blocks of output rows: a single strided
    copy of VGG's 400 MB fc6 is several times slower (cache misses)."""
    out = np.empty(tuple(value.shape[a] for a in axes), value.dtype)
    inner = tuple(a - 1 for a in axes[:-1]) + (len(axes) - 1,)
    for start in range(0, value.shape[0], block):
        chunk = value[start:start + block]
        out[..., start:start + chunk.shape[0]] = np.moveaxis(chunk, 0, -1).transpose(inner)
    return out


def _convert(value: np.ndarray, ndim: int, channels: int | None) -> np.ndarray:
    """One torchvision tensor -> the zoo's layout: OIHW -> HWIO; Linear (out, in) -> (in,
    out), with a flatten-fed layer's input reordered from torch's (C, H*W) to (H*W, C)."""
    if ndim == 4:
        return _out_last(value, (2, 3, 1, 0))
    if ndim == 2:
        n_out, features = value.shape
        c = channels or features
        return _out_last(value.reshape(n_out, c, features // c), (2, 1, 0)).reshape(features, n_out)
    return np.asarray(value)


@dataclasses.dataclass
class _Mapping:
    keys: dict[str, str]               # zoo path ("params/conv1/kernel") -> torchvision key
    shapes: dict[str, tuple]           # zoo path -> zoo shape
    dtypes: dict[str, Any]
    channels: dict[str, int]           # zoo path of a flatten-fed dense kernel -> C
    optional: tuple[str, ...]
    template: Any                      # abstract {"params", "state"}


def _build_mapping(model: Model, input_shape=None) -> _Mapping:
    rules = torchvision_rules(model.name)
    shape = tuple(input_shape) if input_shape is not None else model.default_input_shape()
    with nn.recording() as rec:
        abstract, _ = model.abstract_init(shape)
    flat = paths.flatten(abstract)
    top = _top_level_names(model)
    dense_channels = _flatten_channels(rec.rows)
    keys, shapes, dtypes, channels = {}, {}, {}, {}
    for path, leaf in flat.items():
        group, rest = path.split("/", 1)
        module, _, leaf_name = rest.rpartition("/")
        if (group, leaf_name) not in LEAF_NAMES:
            raise ValueError(f"{model.name}: no torchvision name for {path}")
        keys[path] = f"{_module_name(module, rules, top)}.{LEAF_NAMES[group, leaf_name]}"
        shapes[path], dtypes[path] = tuple(leaf.shape), leaf.dtype
        if module in dense_channels and leaf_name == "kernel":
            channels[path] = dense_channels[module]
    dup = [k for k in set(keys.values()) if list(keys.values()).count(k) > 1]
    if dup:
        raise RuntimeError(f"{model.name}: several zoo leaves map to {sorted(dup)}")
    return _Mapping(keys, shapes, dtypes, channels, rules.optional, abstract)


def torchvision_key_map(model: Model | str, input_shape=None) -> dict[str, str]:
    """``{"params/conv1/kernel": "features.0.weight", "state/bn1/mean": "bn1.running_mean",
    ...}`` for a torchvision-compatible model (a name or a :class:`Model`)."""
    model = create(model) if isinstance(model, str) else model
    return dict(_build_mapping(model, input_shape).keys)


def to_torchvision_state_dict(model: Model | str, variables: Mapping, *,
                              input_shape=None) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert_state_dict`: a torchvision state dict (NumPy arrays,
    ``num_batches_tracked`` included) from zoo ``{"params", "state"}``, for exporting to
    PyTorch (``torch.from_numpy``) or writing with ``safetensors.numpy.save_file``."""
    model = create(model) if isinstance(model, str) else model
    m = _build_mapping(model, input_shape)
    flat = paths.flatten({"params": variables["params"], "state": variables.get("state", {})})
    out = {}
    for path, key in m.keys.items():
        value = np.asarray(flat[path], np.float32)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            c = m.channels.get(path)
            if c:
                features, n_out = value.shape
                value = value.reshape(features // c, c, n_out).transpose(2, 1, 0).reshape(n_out, features)
            else:
                value = value.T
        out[key] = np.ascontiguousarray(value)
        if key.endswith(".running_mean"):
            out[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out


def convert_state_dict(model: Model, state_dict: Mapping[str, np.ndarray], *, input_shape=None,
                       what: str = "torchvision weights") -> dict:
    """``{"params", "state"}`` (NumPy) for ``model`` from a torchvision state dict, checked:
    every source key used exactly once (``num_batches_tracked`` ignored, GoogLeNet's aux
    heads dropped when the model has none), every leaf filled with the right shape."""
    m = _build_mapping(model, input_shape)
    used = set(m.keys.values())
    missing = [(p, k) for p, k in m.keys.items() if k not in state_dict]
    misshaped = [(p, k, tuple(state_dict[k].shape), _torch_shape(m.shapes[p]))
                 for p, k in m.keys.items()
                 if k in state_dict and tuple(state_dict[k].shape) != _torch_shape(m.shapes[p])]
    unexpected, dropped = [], []
    for k in state_dict:
        if k in used or k.endswith(IGNORED_SUFFIXES):
            continue
        (dropped if any(re.search(p, k) for p in m.optional) else unexpected).append(k)
    if missing or unexpected or misshaped:
        lines = [f"{what} do not fit {model.name} ({len(missing)} missing, {len(unexpected)} "
                 f"unexpected, {len(misshaped)} mis-shaped keys):"]
        lines += [f"  missing     {k} (for {p}, torch shape {_torch_shape(m.shapes[p])})"
                  for p, k in missing]
        lines += [f"  unexpected  {k} {tuple(state_dict[k].shape)}" for k in sorted(unexpected)]
        lines += [f"  mis-shaped  {k}: file {got}, {model.name} needs {need} (for {p})"
                  for p, k, got, need in misshaped]
        raise ValueError("\n".join(lines))
    flat = {}
    for path, key in m.keys.items():
        value = _convert(np.asarray(state_dict[key]), len(m.shapes[path]), m.channels.get(path))
        flat[path] = value.astype(m.dtypes[path], copy=False)
    return paths.load_into(m.template, flat, what=what)


def load_torchvision(name: str | Model, path: str, *, input_shape=None, **config) -> dict:
    """``{"params", "state"}`` for ``zoo.create(name, **config)`` from a torchvision state
    dict file (``.pth`` needs torch, ``.safetensors`` NumPy only). ``name`` may also be a
    built :class:`Model` (e.g. ``googlenet`` with ``aux_logits=True``). Leaves are JAX
    arrays. Raises ``ValueError`` listing missing, unexpected and mis-shaped keys."""
    import jax

    model = create(name, **config) if isinstance(name, str) else name
    path = os.fspath(path)
    if path.endswith(".safetensors") and _zoo_format(path):
        raise ValueError(f"{path} is a zoo weights file, not a torchvision state dict: use "
                         f"zoo.pretrained.load({path!r}) or zoo.checkpoint.load_weights")
    variables = convert_state_dict(model, read_state_dict(path), input_shape=input_shape,
                                   what=f"torchvision weights {os.path.basename(path)}")
    return jax.device_put(variables)


# ----------------------------------------------------------------------------------------
# Loading by tag or path.

def _zoo_format(path: str) -> bool:
    if not path.endswith(".safetensors"):
        return False
    try:
        return ckpt.read_metadata(path).get("format", "").startswith("zoo-")
    except Exception:
        return False


def _spec_for_file(path: str) -> WeightSpec | None:
    base = os.path.basename(path)
    for spec in registry.all_weights().values():
        if spec.source == "torchvision" and os.path.splitext(spec.file)[0] == os.path.splitext(base)[0]:
            return spec
    return None


def _model_name(model) -> str | None:
    return model.name if isinstance(model, Model) else model


@dataclasses.dataclass
class _Source:
    """Resolved weights: a file, its kind, the model it belongs to, how to prepare inputs."""

    path: str
    kind: str                          # "torchvision" or "zoo"
    model: str
    num_classes: int | None
    transforms: Transforms
    class_names: list[str] | None
    spec: WeightSpec | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    label: str = ""


def _resolve(tag_or_path: str, model=None, *, progress: bool = True) -> _Source:
    name = _model_name(model)
    if isinstance(tag_or_path, WeightSpec):
        spec, target = tag_or_path, tag_or_path.tag
    else:
        target = os.fspath(tag_or_path)
        spec = registry.all_weights().get(target)
    if spec is not None:
        if name is not None and name != spec.model:
            raise ValueError(f"weights {target} are for {spec.model}, not {name}")
        path = fetch(spec, progress=progress)
        label = target
    elif os.path.exists(target):
        spec, path, label = None, target, target
    else:
        if os.sep not in target and os.path.splitext(target)[1] not in (
                ".pth", ".pt", ".bin", ".safetensors"):
            get_weights(target)  # not a file, so a tag: raises naming the known tags
        raise FileNotFoundError(f"no weights file at {target} (and it is not a known tag: "
                                f"{', '.join(list_weights())})")
    if _zoo_format(path):
        meta = ckpt.read_metadata(path)
        defaults = get_config(meta["model"])
        input_shape = tuple(meta.get("input_shape") or defaults["input_shape"])
        mean = tuple(meta.get("mean") or defaults["mean"])
        std = tuple(meta.get("std") or defaults["std"])
        if name is not None and name != meta.get("model"):
            raise ValueError(f"{target} holds {meta.get('model')} weights, not {name}")
        transforms = Transforms(resize=input_shape[0], crop=input_shape[0], mean=mean, std=std,
                                fit=True)
        return _Source(path, "zoo", meta["model"], int(meta.get("num_classes") or 0) or None,
                       transforms, meta.get("class_names"), spec, meta, label)
    spec = spec or _spec_for_file(path)
    if spec is not None and name is not None and name != spec.model:
        raise ValueError(f"{os.path.basename(path)} is torchvision's {spec.model} file, not {name}")
    model_name = name or (spec.model if spec else None)
    if model_name is None:
        raise ValueError(f"{target}: a torchvision state dict does not say which model it is for; "
                         f"pass the model name (e.g. load(path, model='resnet50') or --model)")
    transforms = spec.transforms if spec else Transforms()
    return _Source(path, "torchvision", model_name, spec.num_classes if spec else None,
                   transforms, imagenet_classes() if (spec is None or spec.classes == "imagenet")
                   else None, spec, {}, label)


def _torchvision_classes(model_name: str, state_dict) -> int | None:
    """The class count of a torchvision state dict: its classifier's output rows."""
    probe = create(model_name)
    key = _module_name(probe.classifier[0], torchvision_rules(model_name),
                       _top_level_names(probe)) + ".weight"
    return int(state_dict[key].shape[0]) if key in state_dict else None


def _load_source(source: _Source, model: Model | None = None, input_shape=None,
                 config: Mapping | None = None) -> tuple[Model, dict]:
    """``(model, NumPy variables)``. Without ``model`` it is built with the source's own class
    count (and ``config``, e.g. ``aux_logits``, for torchvision files; zoo files say theirs)."""
    if source.kind == "zoo":
        variables, meta = ckpt.load_weights(source.path)
        if model is None:
            model = registry.from_metadata(meta)
        shape = input_shape or (1, *meta.get("input_shape", model.input_shape))
        abstract, _ = model.abstract_init(tuple(shape))
        return model, paths.load_into(abstract, variables, what=f"weights {source.path}")
    state_dict = read_state_dict(source.path)
    if model is None:
        classes = _torchvision_classes(source.model, state_dict) or source.num_classes
        model = create(source.model, **dict(config or {}, **({"num_classes": classes} if classes else {})))
    variables = convert_state_dict(model, state_dict, input_shape=input_shape,
                                   what=f"torchvision weights {os.path.basename(source.path)}")
    return model, variables


def load(tag_or_path: str, model: str | Model | None = None, *, input_shape=None,
         with_info: bool = False, progress: bool = True):
    """``(model, variables)`` ready to apply, from a weight tag (``"lenet5.digits"`` works
    offline; ``"resnet50.tv_in1k"`` once its file is cached or downloadable), a zoo weights
    file, or a torchvision state dict (``model`` names the architecture when the file name
    does not; a built :class:`Model` is used as is). ``with_info=True`` adds a third item:
    ``{"transforms", "class_names", "source", "path", "tag", "metadata"}``."""
    import jax

    source = _resolve(tag_or_path, model, progress=progress)
    built, variables = _load_source(source, model if isinstance(model, Model) else None,
                                    input_shape)
    variables = jax.device_put(variables)
    if not with_info:
        return built, variables
    classes = source.class_names
    k = built.num_classes
    if not classes or len(classes) != k:
        classes = [str(i) for i in range(k)]
    info = {"transforms": source.transforms, "class_names": list(classes), "source": source.kind,
            "path": source.path, "tag": source.spec.tag if source.spec else None,
            "metadata": source.metadata}
    return built, variables, info


def load_for_finetuning(tag_or_path: str, model: str | Model | None = None,
                        num_classes: int | None = None, *, variables: Mapping | None = None,
                        seed: int = 0, log: Callable[[str], None] | None = None):
    """Pretrained weights for fine-tuning ``model`` (a name or a :class:`Model`).

    Returns ``(variables, info)``. ``variables`` has the structure and shapes of the
    template ``variables`` (the model's fresh init at the training input size; default
    ``model.init(PRNGKey(seed))`` at its native size). Every leaf comes from the weights,
    except the classifier's (``model.classifier``: GoogLeNet's aux heads' ``fc2`` too)
    when the class counts differ: those keep the template's fresh initialisation and
    ``info["message"]`` says so (also passed to ``log`` when given; ``scripts/train.py``
    prints it). Any other mismatch raises ``ValueError`` listing the paths (e.g. VGG's fc6
    when fine-tuning at another input size). ``info`` also has ``mean``/``std`` (the
    weights' input normalisation, to use for the new data), ``class_names`` (the
    source's), ``reinitialised`` (paths), ``num_source_classes``, ``source`` and ``path``.

    ``zoo.train`` (``scripts/train.py --pretrained``) calls
    ``load_for_finetuning(tag_or_path, model=model, variables=variables)``.
    """
    import jax

    if model is None:
        raise ValueError("load_for_finetuning needs the model to fine-tune (a name or a Model)")
    if isinstance(model, str):
        model = create(model, **({} if num_classes is None else {"num_classes": num_classes}))
    elif num_classes is not None and model.num_classes != int(num_classes):
        raise ValueError(f"the model has {model.num_classes} classes, "
                         f"num_classes={num_classes}")
    if variables is None:
        variables = model.init(jax.random.PRNGKey(seed))
    template = {"params": variables["params"], "state": variables.get("state", {})}
    source = _resolve(tag_or_path, model.name)
    extra = {k: v for k, v in model.config.items()
             if k != "num_classes"}
    source_model, loaded = _load_source(source, None, None, extra)

    src_classes, dst_classes = source_model.num_classes, model.num_classes
    label = source.spec.tag if source.spec else os.path.basename(source.path)
    merged, reinit = paths.merge(loaded, template, what=f"pretrained {label} for {model.name}",
                                 skip=_classifier_paths(model) if src_classes != dst_classes else ())
    merged = jax.device_put(merged)
    total = len(paths.flatten(template))
    if reinit:
        layers = sorted({p.split("/", 1)[1].rsplit("/", 1)[0] for p in reinit})
        message = (f"pretrained {label}: {src_classes} classes, the model {dst_classes}: "
                   f"re-initialised the classifier ({', '.join(layers)}); all other "
                   f"{total - len(reinit)} tensors loaded")
    else:
        message = f"pretrained {label}: all {total} tensors loaded"
    if log is not None:
        log(message)
    return merged, {"message": message, "mean": tuple(source.transforms.mean),
                    "std": tuple(source.transforms.std), "class_names": source.class_names,
                    "reinitialised": reinit, "num_source_classes": src_classes,
                    "source": source.kind, "path": source.path}


def package_run(checkpoint: str, path: str, *, command: str | None = None,
                note: str | None = None) -> dict:
    """Write a training checkpoint (``runs/.../checkpoints/ckpt-*.safetensors``) as a small
    zoo weights file: params and BatchNorm state only (no optimizer state), with metadata
    for :func:`load`: model, config, classes, input shape, the training split's mean/std,
    the run's settings (``output_dir`` dropped), the epoch, ``accuracy`` (the run's
    evaluation accuracy at that epoch) with ``eval_split``/``eval_size``, and the
    ``command`` that trained it. Returns the metadata written."""
    variables, meta = ckpt.load_weights(checkpoint)
    keep = ("model", "config", "num_classes", "input_shape", "mean", "std", "class_names",
            "dataset", "epoch", "step", "zoo_version")
    out = {k: meta[k] for k in keep if k in meta}
    settings = dict(meta.get("settings") or {})
    settings.pop("output_dir", None)
    out["settings"] = settings
    history = meta.get("metrics") or []
    last = history[-1] if isinstance(history, list) and history else dict(history or {})
    out["accuracy"] = meta.get("eval_accuracy", last.get("eval_accuracy"))
    out["eval_loss"] = last.get("eval_loss")
    out["eval_split"] = meta.get("eval_split", "test")
    summary = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))),
                           "summary.json")
    if os.path.exists(summary):   # the run directory's summary: the evaluation split's size
        import json

        with open(summary) as f:
            info = json.load(f)
        out["eval_split"] = info.get("eval_split", out["eval_split"])
        out["eval_size"] = info.get("eval_size")
    if command:
        out["command"] = command
    if note:
        out["note"] = note
    ckpt.save_weights({"params": variables["params"], "state": variables["state"]}, path, out)
    return out


def _classifier_paths(model: Model) -> list[str]:
    """``params/<path>`` and ``state/<path>`` for each of the model's classifier paths."""
    return [f"{g}/{h}" for g in ("params", "state") for h in model.classifier]
