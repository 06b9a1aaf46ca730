"""zoo: the classic convolutional networks as pure JAX functions.

    model = zoo.create("resnet50", num_classes=10)
    variables = model.init(jax.random.key(0), (1, 224, 224, 3))
    logits, state = zoo.jit(model.apply)(variables["params"], variables["state"], x)

``import zoo`` turns off XLA:CPU's YNNPACK fusions for the whole process (it appends
``--xla_cpu_experimental_ynn_fusion_type=`` to ``XLA_FLAGS``, keeping a user's own entry for
it), so a plain ``jax.jit`` or a Flax train step around a zoo model runs as fast as
``zoo.jit``: import zoo before making any JAX array; ``ZOO_XLA_FLAGS=0`` opts out.
``zoo.jit`` is ``jax.jit`` passing the same option per program, whatever the environment
(:mod:`zoo.kernels.xla`); ``zoo.ConvPolicy`` is how a model's convolutions run. The
workflows are submodules, imported on first use so that ``import zoo`` stays light:
``zoo.weights`` (also ``zoo.pretrained``), ``zoo.train``, ``zoo.data``, ``zoo.fully_conv``,
``zoo.flax`` (Linen and NNX modules), ``zoo.export`` (StableHLO, SavedModel, ONNX),
``zoo.checkpoint``, ``zoo.visualize``, ``zoo.bench``, ``zoo.tuning`` (``zoo.tune``: the conv
policy measured on this machine), ``zoo.cli``. docs/design.md maps the package.
"""
import importlib

from .kernels import xla as _xla

_xla.set_process_flags()  # before anything can start a JAX backend: XLA reads XLA_FLAGS then

from . import images, kernels, nn, paths, registry
from .kernels import ConvPolicy, jit
from .nn import Layer, count_params
from .registry import Model, create, get_config, list_models, list_weights, register
from .summary import Summary, summary

__version__ = "0.1.0"

#: submodules imported when first reached as ``zoo.<name>`` (PEP 562)
LAZY_SUBMODULES = ("bench", "checkpoint", "cli", "data", "export", "flax", "fully_conv",
                   "machine", "models", "pretrained", "train", "tuning", "visualize", "weights")
#: functions imported from their submodule when first reached: ``zoo.tune`` is
#: ``zoo.tuning.tune`` (measure a model's convolutions on this machine)
LAZY_FUNCTIONS = {"tune": "tuning", "tuned_policy": "tuning"}

__all__ = ["ConvPolicy", "Layer", "Model", "Summary", "count_params", "create", "get_config",
           "images", "jit", "kernels", "list_models", "list_weights", "nn", "paths", "register",
           "registry", "summary", "__version__", *LAZY_SUBMODULES, *LAZY_FUNCTIONS]


def __getattr__(name):
    if name in LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in LAZY_FUNCTIONS:
        return getattr(importlib.import_module(f".{LAZY_FUNCTIONS[name]}", __name__), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAZY_SUBMODULES) | set(LAZY_FUNCTIONS))
