"""zoo: the classic convolutional networks as pure JAX functions.

    model = zoo.create("resnet50", num_classes=10)
    variables = model.init(jax.random.key(0), (1, 224, 224, 3))
    logits, state = zoo.jit(model.apply)(variables["params"], variables["state"], x)

``zoo.jit`` is ``jax.jit`` with the XLA:CPU options zoo's benchmarks chose
(:mod:`zoo.kernels.xla`); ``zoo.ConvPolicy`` is how a model's convolutions run. The
workflows are submodules, imported on first use so that ``import zoo`` stays light:
``zoo.weights`` (also ``zoo.pretrained``), ``zoo.train``, ``zoo.data``, ``zoo.fully_conv``,
``zoo.checkpoint``, ``zoo.visualize``, ``zoo.bench``, ``zoo.cli``. docs/design.md maps the
package.
"""
import importlib

from . import images, kernels, nn, paths, registry
from .kernels import ConvPolicy, jit
from .nn import Layer, count_params
from .registry import Model, create, get_config, list_models, list_weights, register
from .summary import Summary, summary

__version__ = "0.1.0"

#: submodules imported when first reached as ``zoo.<name>`` (PEP 562)
LAZY_SUBMODULES = ("bench", "checkpoint", "cli", "data", "fully_conv", "models", "pretrained",
                   "train", "visualize", "weights")

__all__ = ["ConvPolicy", "Layer", "Model", "Summary", "count_params", "create", "get_config",
           "images", "jit", "kernels", "list_models", "list_weights", "nn", "paths", "register",
           "registry", "summary", "__version__", *LAZY_SUBMODULES]


def __getattr__(name):
    if name in LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAZY_SUBMODULES))
