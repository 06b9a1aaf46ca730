"""LeNet-5: LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998.

- ``lenet5``: the common modern reading (conv6-5, max pool, conv16-5, max pool, fc120,
  fc84, fc10, ReLU): 61,706 parameters.
- ``lenet5_1998``: the paper's network: C3's partial connection table (Table I), trainable
  subsampling S2/S4 (2x2 sum times a coefficient plus a bias, then the squashing
  function), scaled tanh ``1.7159 tanh(2a/3)``; 60,000 parameters through F6 as the paper
  says. Deviation: the output layer is a dense layer (850 parameters) rather than the
  paper's Euclidean RBF units, so the model trains with cross-entropy like every other.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import nn
from ..registry import WeightSpec, register

# Table I of the paper: which S2 maps (rows) feed each C3 map (columns).
C3_TABLE = np.array([
    [1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1],
    [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1],
    [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1],
    [0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1],
    [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1],
    [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1],
], dtype=bool)


def lenet5(num_classes: int = 10) -> nn.Layer:
    return nn.Sequential([
        ("conv1", nn.Conv(6, 5)), ("relu1", nn.Relu()), ("pool1", nn.MaxPool(2, 2)),
        ("conv2", nn.Conv(16, 5)), ("relu2", nn.Relu()), ("pool2", nn.MaxPool(2, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Dense(120)), ("relu3", nn.Relu()),
        ("fc2", nn.Dense(84)), ("relu4", nn.Relu()),
        ("fc3", nn.Dense(num_classes)),
    ])


def Subsampling() -> nn.Layer:
    """LeNet-5's S-layers: the 2x2 sum of each map times a trainable coefficient plus a
    trainable bias (2 parameters per map). Geometry is that of a 2x2/2 pool."""
    pool = nn.AvgPool(2, 2)

    def init(key, in_shape):
        out_shape, _, _ = pool.init(key, in_shape)
        c = in_shape[-1]
        return out_shape, {"coef": jnp.ones((c,)), "bias": jnp.zeros((c,))}, {}

    def apply(params, state, x, *, train=False, rng=None, policy=None):
        summed = pool.apply({}, {}, x)[0] * 4.0
        return summed * params["coef"].astype(x.dtype) + params["bias"].astype(x.dtype), state

    return nn.Layer(init, apply, "subsampling", dict(window=(2, 2), stride=(2, 2), padding=(0, 0),
                                                     rounding="exact"))


def lenet5_1998(num_classes: int = 10) -> nn.Layer:
    return nn.Sequential([
        ("c1", nn.Conv(6, 5)), ("act1", nn.Activation("scaled_tanh")),
        ("s2", Subsampling()), ("act2", nn.Activation("scaled_tanh")),
        ("c3", nn.Conv(16, 5, mask=C3_TABLE)), ("act3", nn.Activation("scaled_tanh")),
        ("s4", Subsampling()), ("act4", nn.Activation("scaled_tanh")),
        ("c5", nn.Conv(120, 5)), ("act5", nn.Activation("scaled_tanh")),
        ("flatten", nn.Flatten()),
        ("f6", nn.Dense(84)), ("act6", nn.Activation("scaled_tanh")),
        ("output", nn.Dense(num_classes)),
    ])


_DIGITS = dict(input_shape=(32, 32, 1), num_classes=10, mean=(0.5,), std=(0.5,), year=1998,
               paper="LeCun et al., Gradient-based learning applied to document recognition, 1998")
register("lenet5", lenet5, classifier="fc3", features=("relu1", "relu2"),
         # Trained by `zoo train` with its defaults; its metadata holds the command, the
         # accuracy, the class names and the training split's mean/std.
         weights=(WeightSpec(tag="lenet5.digits", model="lenet5", source="zoo",
                             file="lenet5_digits.safetensors", num_classes=10, transforms=None,
                             origin="zoo train defaults (lenet5 on the digits)",
                             classes="file"),),
         deviations="modern reading: ReLU and max pooling, full C3 connections", **_DIGITS)
register("lenet5_1998", lenet5_1998, classifier="output", features=("act1", "act3", "act5"),
         deviations="output layer is dense instead of Euclidean RBF units", **_DIGITS)
