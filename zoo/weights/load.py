"""Loading weights by tag or path, for prediction and for fine-tuning, and packaging a
training run's checkpoint as a weights file."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import numpy as np


from .. import checkpoint as ckpt
from .. import paths, registry
from ..images import Transforms
from ..registry import Model, WeightSpec, create, get_config
from .hub import fetch
from .specs import get_weights, imagenet_classes, list_weights
from .torchvision import (_is_torch_file, _module_name, _top_level_names, check_torch_file,
                          convert_state_dict, read_state_dict, torchvision_rules)


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
    if _is_zoo(path):
        meta = check_metadata(path, ckpt.read_metadata(path))
        defaults = get_config(meta["model"])
        input_shape = tuple(meta.get("input_shape") or defaults["input_shape"])
        mean = tuple(meta.get("mean") or defaults["mean"])
        std = tuple(meta.get("std") or defaults["std"])
        if name is not None and name != meta.get("model"):
            raise ValueError(f"{target} holds {meta.get('model')} weights, not {name}")
        transforms = Transforms(resize=input_shape[0], crop=input_shape[0], mean=mean, std=std,
                                fit=True)
        return _Source(path, "zoo", meta["model"], meta.get("num_classes"),
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


def _is_zoo(path: str) -> bool:
    """Whether ``path`` is a zoo file; a ``.safetensors`` file that cannot be read, or any
    path that is not a non-empty file, raises naming it (never a wrong guess of the kind)."""
    if path.endswith(ckpt.SUFFIX):
        return ckpt.read_metadata(path)["format"].startswith("zoo-")
    if _is_torch_file(path):
        check_torch_file(path)
    else:
        ckpt.check_file(path, "weights file")
    return False


#: the largest input side or channel count a weights file may declare
MAX_INPUT_DIM = 1 << 16


def _positive_int(value, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit


def check_metadata(path: str, meta: dict) -> dict:
    """``meta`` of the zoo file ``path``, checked before anything is built from it: it names
    a registered model, and its ``num_classes`` (at most ``registry.MAX_CLASSES``),
    ``input_shape``, ``mean``/``std`` and ``config`` are sane; else ``ValueError`` naming
    the file, the key and the value (a huge class count would allocate for minutes)."""
    name = meta.get("model")
    if not isinstance(name, str) or not name:
        got = "no 'model' key" if "model" not in meta else f"model {name!r}"
        raise ValueError(f"{path}: its metadata names no model ({got}); the zoo writes the model "
                         f"name in every weights file and checkpoint: was it edited?")
    try:
        registry.spec(name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    config = meta.get("config")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"{path}: its metadata's config is a {type(config).__name__}, not an object")
    for key, value in (("num_classes", meta.get("num_classes")),
                       ("config.num_classes", (config or {}).get("num_classes"))):
        if value is not None:   # the registry's rule for class counts, before anything is built
            try:
                registry.check_num_classes(name, value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: its metadata has {key} {value!r} ({e}): the file is "
                                 f"corrupt or edited") from None
    shape = meta.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(_positive_int(v, MAX_INPUT_DIM) for v in shape)):
        raise ValueError(f"{path}: its metadata has input_shape {shape!r}; expected [height, "
                         f"width, channels], each an integer from 1 to {MAX_INPUT_DIM}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and not (
                isinstance(value, list) and value and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                    and (key == "mean" or v > 0) for v in value)):
            raise ValueError(f"{path}: its metadata has {key} {value!r}; expected a list of "
                             f"finite numbers{'' if key == 'mean' else ' above 0'}")
    return meta


def _torchvision_classes(model_name: str, state_dict) -> int | None:
    """The class count of a torchvision state dict: its classifier's output rows."""
    probe = create(model_name)
    key = _module_name(probe.classifier[0], torchvision_rules(model_name),
                       _top_level_names(probe)) + ".weight"
    return int(state_dict[key].shape[0]) if key in state_dict else None


def _load_source(source: _Source, model: Model | None = None, input_shape=None,
                 config: Mapping | None = None, *,
                 allow_nonfinite: bool = False) -> tuple[Model, dict]:
    """``(model, NumPy variables)``. Without ``model`` it is built with the source's own class
    count (and ``config``, e.g. ``aux_logits``, for torchvision files; zoo files say theirs)."""
    if source.kind == "zoo":
        variables, meta = ckpt.load_weights(source.path, allow_nonfinite=allow_nonfinite)
        check_metadata(source.path, meta)
        if model is None:
            try:
                model = registry.from_metadata(meta)
            except ValueError as e:
                raise ValueError(f"{source.path}: cannot rebuild the model its metadata "
                                 f"describes: {e}") from None
        shape = input_shape or (1, *meta.get("input_shape", model.input_shape))
        abstract, _ = model.abstract_init(tuple(shape))
        return model, paths.load_into(abstract, variables, what=f"weights {source.path}")
    state_dict = read_state_dict(source.path, allow_nonfinite=allow_nonfinite)
    if model is None:
        classes = _torchvision_classes(source.model, state_dict) or source.num_classes
        model = create(source.model, **dict(config or {}, **({"num_classes": classes} if classes else {})))
    variables = convert_state_dict(model, state_dict, input_shape=input_shape,
                                   what=f"torchvision weights {os.path.basename(source.path)}")
    return model, variables


def load(tag_or_path: str, model: str | Model | None = None, *, input_shape=None,
         with_info: bool = False, progress: bool = True, allow_nonfinite: bool = False):
    """``(model, variables)`` ready to apply, from a weight tag (``"lenet5.digits"`` works
    offline; ``"resnet50.tv_in1k"`` once its file is cached or downloadable), a zoo weights
    file, or a torchvision state dict (``model`` names the architecture when the file name
    does not; a built :class:`Model` is used as is). ``with_info=True`` adds a third item:
    ``{"transforms", "class_names", "source", "path", "tag", "metadata"}``.

    Every file is checked before a model is built: a zoo file's content hash and metadata
    (:func:`check_metadata`), the header of any ``.safetensors``; a missing, empty,
    truncated, corrupt or text file raises naming it, and weights holding NaN or inf raise
    listing them unless ``allow_nonfinite``."""
    import jax

    source = _resolve(tag_or_path, model, progress=progress)
    built, variables = _load_source(source, model if isinstance(model, Model) else None,
                                    input_shape, allow_nonfinite=allow_nonfinite)
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
    ``info["message"]`` says so (also passed to ``log`` when given; ``zoo train``
    prints it). Any other mismatch raises ``ValueError`` listing the paths (e.g. VGG's fc6
    when fine-tuning at another input size). ``info`` also has ``mean``/``std`` (the
    weights' input normalisation, to use for the new data), ``class_names`` (the
    source's), ``reinitialised`` (paths), ``num_source_classes``, ``source`` and ``path``.

    ``zoo.train`` (``zoo train --pretrained``) calls
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
    left_out = []
    if dst_classes == 0:   # headless or features_only: the weights' head is not in the model
        have = set(paths.flatten(template))
        flat = paths.flatten(loaded)
        left_out = sorted({p.split("/")[1] for p in flat if p not in have})
        loaded = paths.unflatten({p: v for p, v in flat.items() if p in have})
    merged, reinit = paths.merge(loaded, template, what=f"pretrained {label} for {model.name}",
                                 skip=_classifier_paths(model) if dst_classes and
                                 src_classes != dst_classes else ())
    merged = jax.device_put(merged)
    total = len(paths.flatten(template))
    if reinit:
        layers = sorted({p.split("/", 1)[1].rsplit("/", 1)[0] for p in reinit})
        message = (f"pretrained {label}: {src_classes} classes, the model {dst_classes}: "
                   f"re-initialised the classifier ({', '.join(layers)}); all other "
                   f"{total - len(reinit)} tensors loaded")
    else:
        message = f"pretrained {label}: all {total} tensors loaded"
    if left_out:
        message += f" (the model has no {', '.join(left_out)}: left out)"
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


def classify(images, tag_or_path, model: str | Model | None = None, *, top: int = 5):
    """The ``top`` classes of each image (paths, PIL images or arrays) under the weights
    ``tag_or_path``, each image through the weights' own transforms: ``(model, rows)`` with
    one list of ``(class index, class name, probability)`` per image, best first."""
    from ..kernels import xla

    built, variables, info = load(tag_or_path, model, with_info=True)
    transforms, names = info["transforms"], info["class_names"]
    batch = np.stack([transforms(image, built.input_shape[-1]) for image in images])
    apply = xla.jit(lambda p, s, x: built.apply(p, s, x)[0])
    logits = np.asarray(apply(variables["params"], variables["state"], batch), np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(top, probs.shape[1])
    return built, [[(int(i), names[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:k]]
                   for p in probs]
