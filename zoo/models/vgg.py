"""VGG: Simonyan & Zisserman, "Very deep convolutional networks for large-scale image
recognition", ICLR 2015 (arXiv:1409.1556, 2014), table 1 configurations A, B, D, E.

``vgg11``/``13``/``16``/``19``: 3x3 pad-1 convs with ReLU, 2x2/2 max pools, fc6/fc7 4096
(ReLU, dropout 0.5) and fc8; ``*_bn``: BatchNorm after every conv (conv, bn, relu), as
torchvision (not in the paper). Parameter counts as torchvision (vgg16 138,357,544).
Weights: torchvision ``VGG{11,13,16,19}[_BN]_Weights.IMAGENET1K_V1``. torchvision's
``AdaptiveAvgPool2d((7, 7))`` is left out (the identity at 224); fc6's input size follows
the input shape, so 32x32 CIFAR images work (fc6 is then 512 -> 4096).

Names: ``conv{s}_{j}``, ``bn{s}_{j}``, ``relu{s}_{j}`` for the j-th conv of stage s,
``pool{s}``, ``flatten``, ``fc6``-``fc8``, ``drop6``/``drop7``; torchvision's positions as
AlexNet's (each conv takes 2 indices of ``features``, 3 with BN; ``classifier.{0,3,6}``).
"""
from __future__ import annotations

import functools

from .. import nn
from ..registry import register, torchvision_weights
from .alexnet import SEQUENTIAL, classifier

CONFIGS = {  # conv widths, "M" = max pool
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def stage_outputs(config: str) -> tuple[str, ...]:
    """Each stage's last ReLU, before its pool (features_only): strides 1, 2, 4, 8, 16."""
    out, stage, j = [], 1, 0
    for item in CONFIGS[config]:
        if item == "M":
            out.append(f"relu{stage}_{j}")
            stage, j = stage + 1, 0
        else:
            j += 1
    return tuple(out)


def vgg(config: str, batch_norm: bool, num_classes: int = 1000) -> nn.Layer:
    layers, stage, j = [], 1, 0
    for item in CONFIGS[config]:
        if item == "M":
            layers.append((f"pool{stage}", nn.MaxPool(2, 2)))
            stage, j = stage + 1, 0
            continue
        j += 1
        layers.append((f"conv{stage}_{j}", nn.Conv(item, 3, padding=1)))
        if batch_norm:
            layers.append((f"bn{stage}_{j}", nn.BatchNorm()))
        layers.append((f"relu{stage}_{j}", nn.Relu()))
    return nn.Sequential(layers + classifier(num_classes, first=stage))


#: Facts from torchvision 0.29's weight enums: (file, acc@1, acc@5) per model.
WEIGHTS = {
    "vgg11": ("vgg11-8a719046.pth", 69.020, 88.628),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 70.370, 89.810),
    "vgg13": ("vgg13-19584684.pth", 69.928, 89.246),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 71.586, 90.374),
    "vgg16": ("vgg16-397923af.pth", 71.592, 90.382),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.360, 91.516),
    "vgg19": ("vgg19-dcbb9e9d.pth", 72.376, 90.876),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 74.218, 91.842),
}

_PAPER = ("Simonyan & Zisserman, Very deep convolutional networks for large-scale image "
          "recognition, ICLR 2015")
for _depth, _config in ((11, "A"), (13, "B"), (16, "D"), (19, "E")):
    for _bn in (False, True):
        _name = f"vgg{_depth}" + ("_bn" if _bn else "")
        _file, _acc1, _acc5 = WEIGHTS[_name]
        register(_name, functools.partial(vgg, _config, _bn),
                 input_shape=(224, 224, 3), num_classes=1000, classifier="fc8", year=2014,
                 paper=_PAPER, torchvision=SEQUENTIAL, features=stage_outputs(_config),
                 weights=(torchvision_weights(
                     f"{_name}.tv_in1k", _name, _file, _acc1, _acc5,
                     f"{_name.upper()}_Weights.IMAGENET1K_V1"),),
                 deviations="no AdaptiveAvgPool2d((7, 7)) (identity at 224)"
                            + ("; BatchNorm after each conv as torchvision" if _bn else ""))
