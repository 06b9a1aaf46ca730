"""torchvision state dicts: reading them (NumPy for ``.safetensors``, ``torch.load`` with
``weights_only=True`` for ``.pth``), the key map from the family's registered rules, and the
conversion both ways, done once on the weights: conv kernels OIHW <-> HWIO, Linear
transposed, the first dense layer after a flatten reordered between torch's (C, H, W) and
the zoo's (H, W, C) flatten, BatchNorm ``weight``/``running_*`` <-> ``scale``/``mean``/``var``.
Every source key is used once and every leaf filled, else the error lists what is missing,
unexpected or mis-shaped."""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from typing import Any, Mapping, Sequence

import numpy as np

from .. import checkpoint as ckpt
from .. import nn, paths, registry
from ..registry import Model, TorchvisionRules, create


def _is_torch_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str, *, allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """A torchvision state dict as ``key -> numpy array``: ``.safetensors`` with NumPy alone,
    ``.pth``/``.pt`` with ``torch.load(weights_only=True)`` (torch needed). A file that is
    missing, empty, truncated, corrupt or of another kind raises naming it; so do tensors
    holding NaN or inf unless ``allow_nonfinite``."""
    path = ckpt.check_file(path, "weights file")
    if path.endswith(".safetensors"):
        out, _ = ckpt.read_safetensors(path, "weights file")
    elif not _is_torch_file(path):
        raise ValueError(f"{path}: unknown weights format; expected .safetensors or .pth/.pt")
    else:
        out = _read_torch(path)
    if not allow_nonfinite:
        ckpt.check_finite(out, path)
    return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
    check_torch_file(path)
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {path} needs PyTorch (pip install 'zoo[torch]'); or convert "
                          f"it to .safetensors, which NumPy reads alone") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for one bad file
        raise ValueError(_torch_refusal(path, e)) from None
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


def _not_torch(path: str) -> str | None:
    """Why ``path`` cannot be a PyTorch file (one is a zip archive or a pickle), from its
    first bytes; None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return f"{path} is a text file (it starts with {head.decode()!r}), not PyTorch weights"
    return (f"{path} is not a PyTorch weights file: neither a zip archive nor a pickle (it "
            f"starts with {head!r})")


def check_torch_file(path: str) -> None:
    """Raise ``ValueError`` when ``path`` (a ``.pth``/``.pt``, ...) cannot be a PyTorch file,
    without torch and without reading it: a text file, garbage."""
    why = _not_torch(ckpt.check_file(path, "weights file"))
    if why:
        raise ValueError(why)


def _torch_refusal(path: str, error: Exception) -> str:
    """What is wrong with a PyTorch file ``torch.load(weights_only=True)`` refused: a damaged
    one, or one holding objects other than tensors. torch's advice to load it with
    ``weights_only=False`` (arbitrary code execution) is never passed on."""
    lines = [line.strip() for line in str(error).splitlines()]
    said = [line for line in lines if line and not re.search(
        r"weights.?only|likely succeed|arbitrary code|trusted source|file an issue|documentation",
        line, re.IGNORECASE)]
    reason = (said[0] if said else type(error).__name__).split(". ")[0].rstrip(".")
    if isinstance(error, pickle.UnpicklingError):
        return (f"{path}: refused by torch.load(weights_only=True), which never unpickles "
                f"arbitrary objects: {reason}. It is damaged, or holds objects other than "
                f"tensors: save the state dict alone (torch.save(model.state_dict(), path)) or "
                f"as .safetensors")
    return f"{path}: a damaged or truncated PyTorch file ({type(error).__name__}: {reason})"


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


def load_torchvision(name: str | Model, path: str, *, input_shape=None,
                     allow_nonfinite: bool = False, **config) -> dict:
    """``{"params", "state"}`` for ``zoo.create(name, **config)`` from a torchvision state
    dict file (``.pth`` needs torch, ``.safetensors`` NumPy only). ``name`` may also be a
    built :class:`Model` (e.g. ``googlenet`` with ``aux_logits=True``). Leaves are JAX
    arrays. Raises ``ValueError`` listing missing, unexpected and mis-shaped keys."""
    import jax

    model = create(name, **config) if isinstance(name, str) else name
    path = os.fspath(path)
    if path.endswith(".safetensors") and ckpt.is_zoo_file(path):
        raise ValueError(f"{path} is a zoo weights file, not a torchvision state dict: use "
                         f"zoo.weights.load({path!r}) or zoo.checkpoint.load_weights")
    state_dict = read_state_dict(path, allow_nonfinite=allow_nonfinite)
    variables = convert_state_dict(model, state_dict, input_shape=input_shape,
                                   what=f"torchvision weights {os.path.basename(path)}")
    return jax.device_put(variables)
