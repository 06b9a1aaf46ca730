"""zoo: the classic convolutional networks as pure JAX functions.

    model = zoo.create("resnet50", num_classes=10)
    variables = model.init(jax.random.key(0), (1, 224, 224, 3))
    logits, state = zoo.jit(model.apply)(variables["params"], variables["state"], x)

``zoo.jit`` is ``jax.jit`` with the XLA:CPU options zoo's benchmarks chose (:mod:`zoo.kernels.xla`).
"""
from .kernels import ConvPolicy, jit
from .nn import Layer, count_params
from .registry import Model, create, get_config, list_models, list_weights, register

__version__ = "0.1.0"

__all__ = ["ConvPolicy", "Layer", "Model", "count_params", "create", "get_config", "jit", "list_models", "list_weights",
           "register", "__version__"]
