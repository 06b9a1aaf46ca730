"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet classification with deep convolutional
neural networks", NIPS 2012; Krizhevsky, "One weird trick for parallelizing convolutional
neural networks", arXiv:1404.5997, 2014.

- ``alexnet``: torchvision's single tower ("one weird trick", 64-192-384-256-256, no LRN):
  61,100,840 parameters; weights torchvision ``IMAGENET1K_V1``. conv1 floors (224 gives
  55.25); torchvision's ``AdaptiveAvgPool2d((6, 6))`` (the identity at 224) is left out.
- ``alexnet_2012``: the paper's two-tower net at 227 (the notes' reading): conv1 55x55x96
  (34,944 parameters), LRN after conv1 and conv2, conv2/4/5 in 2 groups: 60,965,224
  parameters; no weights.

Names follow Caffe (``conv{i}``, ``norm{i}``, ``pool{i}``, ``fc6``-``fc8``); torchvision's
positions: :data:`SEQUENTIAL`. :func:`build` is shared with ZFNet, :func:`classifier` with
VGG.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

from .. import nn
from ..registry import TorchvisionRules, register, torchvision_weights


class ConvStage(NamedTuple):
    """One conv and the ops after it, in order: ``relu``, ``norm`` (paper-form LRN),
    ``pool`` (3/2 max pool, exact rule) or ``pool_ceil`` (3/2 max pool, ceil rule)."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    rounding: str = "exact"
    then: tuple[str, ...] = ("relu",)


POST_OPS = {
    "relu": nn.Relu,
    "norm": lambda: nn.LRN(size=5, alpha=1e-4, beta=0.75, k=2.0),
    "pool": lambda: nn.MaxPool(3, 2),
    "pool_ceil": lambda: nn.MaxPool(3, 2, rounding="ceil"),
}

ALEXNET = (  # torchvision / "one weird trick"
    ConvStage(64, 11, stride=4, padding=2, rounding="floor", then=("relu", "pool")),
    ConvStage(192, 5, padding=2, then=("relu", "pool")),
    ConvStage(384, 3, padding=1),
    ConvStage(256, 3, padding=1),
    ConvStage(256, 3, padding=1, then=("relu", "pool")),
)

ALEXNET_2012 = (  # Krizhevsky et al. 2012, fig. 2 and sec. 3
    ConvStage(96, 11, stride=4, then=("relu", "norm", "pool")),
    ConvStage(256, 5, padding=2, groups=2, then=("relu", "norm", "pool")),
    ConvStage(384, 3, padding=1),
    ConvStage(384, 3, padding=1, groups=2),
    ConvStage(256, 3, padding=1, groups=2, then=("relu", "pool")),
)


def conv_stack(stages) -> list[tuple[str, nn.Layer]]:
    layers = []
    for i, s in enumerate(stages, 1):
        layers.append((f"conv{i}", nn.Conv(s.features, s.kernel, stride=s.stride,
                                           padding=s.padding, groups=s.groups,
                                           rounding=s.rounding)))
        layers += [(f"{op.split('_')[0]}{i}", POST_OPS[op]()) for op in s.then]
    return layers


def classifier(num_classes, first, hidden=(4096, 4096), dropout=0.5, dropout_first=False):
    """Flatten, then per hidden width ``fc{n}``, ``relu{n}``, ``drop{n}`` (torchvision's
    AlexNet puts the dropout before the fc), then the final ``fc``; ``n`` starts at ``first``."""
    layers = [("flatten", nn.Flatten())]
    for n, width in enumerate(hidden, first):
        block = [(f"fc{n}", nn.Dense(width)), (f"relu{n}", nn.Relu())]
        drop = [(f"drop{n}", nn.Dropout(dropout))]
        layers += drop + block if dropout_first else block + drop
    return layers + [(f"fc{first + len(hidden)}", nn.Dense(num_classes))]


def build(stages, num_classes=1000, **head) -> nn.Layer:
    return nn.Sequential(conv_stack(stages) + classifier(num_classes, len(stages) + 1, **head))


#: torchvision's ``nn.Sequential`` halves: top-level layers up to ``flatten`` are
#: ``features.i``, the rest ``classifier.i`` (VGG's too).
SEQUENTIAL = TorchvisionRules(segments=(("features", "flatten"), ("classifier", None)))

_PAPER = "Krizhevsky, Sutskever & Hinton, ImageNet classification with deep CNNs, NIPS 2012"
register("alexnet", functools.partial(build, ALEXNET, dropout_first=True),
         input_shape=(224, 224, 3), num_classes=1000, classifier="fc8", year=2014,
         torchvision=SEQUENTIAL, features=("relu1", "relu2", "relu5"),   # before each pool
         weights=(torchvision_weights("alexnet.tv_in1k", "alexnet", "alexnet-owt-7be5be79.pth",
                                      56.522, 79.066, "AlexNet_Weights.IMAGENET1K_V1"),),
         paper="Krizhevsky, One weird trick for parallelizing CNNs, arXiv:1404.5997, 2014",
         deviations="torchvision layout without AdaptiveAvgPool2d((6, 6)) (identity at 224); "
                    "fc6's input size follows the input shape")
register("alexnet_2012", functools.partial(build, ALEXNET_2012),
         input_shape=(227, 227, 3), num_classes=1000, classifier="fc8", year=2012, paper=_PAPER,
         features=("norm1", "norm2", "relu5"),
         deviations="input 227, not the paper's 224 (conv1 only fits at 227); the two GPU towers "
                    "are conv groups; no published weights")
