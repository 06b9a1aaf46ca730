"""GoogLeNet (Inception v1): Szegedy et al., "Going deeper with convolutions", CVPR 2015
(arXiv:1409.4842).

Two variants of one builder, differing only in data (:data:`TORCHVISION`, :data:`PAPER`);
Inception modules are rows of Table 1's branch widths (:data:`INCEPTION`).

- ``googlenet``: torchvision's layout, the one its weights have: conv (no bias) + BatchNorm
  (eps 1e-3) + ReLU everywhere, no LRN, the "5x5" branch a 3x3 (torchvision's slip, kept
  for the weights), ``maxpool4`` 2x2/2: 6,624,904 parameters. Its weights' ``transform_input``
  belongs to the weights (their transforms), not to the model.
- ``googlenet_2014``: the paper's network, Caffe's ``bvlc_googlenet`` where the paper is
  silent: biased convs, true 5x5 branches, LRN, ceil-rule pools, 7x7/1 average pool (inputs
  of 223 or more), Caffe's 0-255 mean subtraction.

``aux_logits=True`` adds the auxiliary classifiers after ``inception4a``/``4d``
(:func:`zoo.nn.WithSideHeads`): ``model.apply`` never runs them, ``model.apply_with_aux``
returns them too; the trainer weights their loss by the model's ``aux_loss_weight`` (0.3).
Names, heads and errata: docs/architectures.md.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .. import nn
from ..registry import TorchvisionRules, register, torchvision_weights

#: Table 1's branch widths: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}

#: Weight of each auxiliary classifier's loss in the total loss (paper, section 5).
AUX_LOSS_WEIGHT = 0.3

#: Aux head name -> the trunk layer whose output it reads.
AUX_TAPS = {"aux1": "inception4a", "aux2": "inception4d"}


def _trunk(*, maxpool4: int, lrn: bool) -> tuple:
    """Trunk rows ``(name, kind, args)``; ``kind`` is conv (features, kernel, stride,
    padding, rounding), maxpool (window, stride), lrn, or inception (Table 1 row)."""
    norm = (lambda name: ((name, "lrn", ()),)) if lrn else (lambda name: ())
    return (
        ("conv1", "conv", (64, 7, 2, 3, "floor")),
        ("maxpool1", "maxpool", (3, 2)),
        *norm("norm1"),
        ("conv2", "conv", (64, 1, 1, 0, "exact")),
        ("conv3", "conv", (192, 3, 1, 1, "exact")),
        *norm("norm2"),
        ("maxpool2", "maxpool", (3, 2)),
        ("inception3a", "inception", "3a"), ("inception3b", "inception", "3b"),
        ("maxpool3", "maxpool", (3, 2)),
        ("inception4a", "inception", "4a"), ("inception4b", "inception", "4b"),
        ("inception4c", "inception", "4c"), ("inception4d", "inception", "4d"),
        ("inception4e", "inception", "4e"),
        ("maxpool4", "maxpool", (maxpool4, 2)),
        ("inception5a", "inception", "5a"), ("inception5b", "inception", "5b"),
    )


def basic_conv(features, kernel, stride=1, padding=0, rounding="exact") -> nn.Layer:
    """torchvision's BasicConv2d: conv (no bias), BatchNorm(eps=1e-3), ReLU."""
    return nn.Sequential([
        ("conv", nn.Conv(features, kernel, stride=stride, padding=padding, bias=False,
                         rounding=rounding)),
        ("bn", nn.BatchNorm(eps=1e-3)),
        ("relu", nn.Relu()),
    ])


def conv_relu(features, kernel, stride=1, padding=0, rounding="exact") -> nn.Layer:
    """The paper's unit: conv with bias, ReLU."""
    return nn.Sequential([
        ("conv", nn.Conv(features, kernel, stride=stride, padding=padding, rounding=rounding)),
        ("relu", nn.Relu()),
    ])


@dataclasses.dataclass(frozen=True)
class Variant:
    trunk: tuple
    unit: Callable[..., nn.Layer]
    branch3_kernel: int                           # the "5x5" branch's kernel
    head: Callable[[int], list]                   # num_classes -> named classifier layers
    aux_pool: Callable[[], nn.Layer]              # the aux heads' first layer


TORCHVISION = Variant(
    trunk=_trunk(maxpool4=2, lrn=False),
    unit=basic_conv,
    branch3_kernel=3,
    head=lambda n: [("avgpool", nn.GlobalAvgPool()), ("dropout", nn.Dropout(0.2)),
                    ("fc", nn.Dense(n))],
    aux_pool=lambda: nn.AdaptiveAvgPool(4),
)

PAPER = Variant(
    trunk=_trunk(maxpool4=3, lrn=True),
    unit=conv_relu,
    branch3_kernel=5,
    head=lambda n: [("avgpool", nn.AvgPool(7, 1)), ("flatten", nn.Flatten()),
                    ("dropout", nn.Dropout(0.4)), ("fc", nn.Dense(n))],
    aux_pool=lambda: nn.AvgPool(5, 3, rounding="ceil"),
)


def inception(widths, unit=basic_conv, branch3_kernel=3) -> nn.Layer:
    """One Inception module from a Table 1 row; the four branches are concatenated."""
    c1, r3, c3, r5, c5, proj = widths
    k = branch3_kernel
    return nn.Concat([
        ("branch1", unit(c1, 1)),
        ("branch2", nn.Sequential([("reduce", unit(r3, 1)), ("conv", unit(c3, 3, padding=1))])),
        ("branch3", nn.Sequential([("reduce", unit(r5, 1)), ("conv", unit(c5, k, padding=k // 2))])),
        ("branch4", nn.Sequential([("pool", nn.MaxPool(3, 1, 1, rounding="ceil")),
                                   ("proj", unit(proj, 1))])),
    ])


def aux_head(variant: Variant, num_classes: int) -> nn.Layer:
    return nn.Sequential([
        ("pool", variant.aux_pool()),
        ("conv", variant.unit(128, 1)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Dense(1024)), ("relu", nn.Relu()), ("dropout", nn.Dropout(0.7)),
        ("fc2", nn.Dense(num_classes)),
    ])


def _layer(variant: Variant, kind: str, args) -> nn.Layer:
    if kind == "conv":
        features, kernel, stride, padding, rounding = args
        return variant.unit(features, kernel, stride, padding, rounding)
    if kind == "maxpool":
        window, stride = args
        return nn.MaxPool(window, stride, rounding="ceil")
    if kind == "lrn":
        return nn.LRN(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)
    if kind == "inception":
        return inception(INCEPTION[args], variant.unit, variant.branch3_kernel)
    raise ValueError(f"unknown trunk row kind {kind!r}")


def build(variant: Variant, num_classes: int = 1000, aux_logits: bool = False) -> nn.Layer:
    layers = [(name, _layer(variant, kind, args)) for name, kind, args in variant.trunk]
    layers += variant.head(num_classes)
    if not aux_logits:
        return nn.Sequential(layers)
    heads = {name: aux_head(variant, num_classes) for name in AUX_TAPS}
    return nn.WithSideHeads(layers, heads, AUX_TAPS)


def googlenet(num_classes: int = 1000, aux_logits: bool = False) -> nn.Layer:
    return build(TORCHVISION, num_classes, aux_logits)


def googlenet_2014(num_classes: int = 1000, aux_logits: bool = False) -> nn.Layer:
    return build(PAPER, num_classes, aux_logits)


_PAPER_REF = "Szegedy et al., Going deeper with convolutions, CVPR 2015 (arXiv:1409.4842)"
#: torchvision's module names: a branch's convs are positions 0 and 1 of its Sequential;
#: its aux heads' keys are dropped when the model has none.
TORCHVISION_RULES = TorchvisionRules(
    rename=((r"\b(branch[23])/reduce\b", r"\1/0"), (r"\b(branch[23])/conv\b", r"\1/1"),
            (r"\b(branch4)/proj\b", r"\1/1")),
    optional=(r"^aux[12]\.",))
#: the class outputs: the main classifier and each aux head's last layer
CLASSIFIER = ("fc", *(f"{head}/fc2" for head in AUX_TAPS))
#: stage outputs (features_only), strides 2, 4, 8, 16, 32: what enters each max pool, then
#: the last inception
FEATURES = ("conv1", "conv3", "inception3b", "inception4e", "inception5b")

register("googlenet", googlenet, input_shape=(224, 224, 3), num_classes=1000,
         classifier=CLASSIFIER, aux_logits=False, aux_loss_weight=AUX_LOSS_WEIGHT,
         paper=_PAPER_REF, year=2014, torchvision=TORCHVISION_RULES, features=FEATURES,
         weights=(torchvision_weights("googlenet.tv_in1k", "googlenet", "googlenet-1378be20.pth",
                                      69.778, 89.530, "GoogLeNet_Weights.IMAGENET1K_V1",
                                      transform_input=True),),
         deviations="torchvision's variant: BatchNorm (eps 1e-3) after every conv and no LRN; "
                    "the '5x5' branch is 3x3; maxpool4 is 2x2/2; global average pool, dropout "
                    "0.2; transform_input belongs to the pretrained weights, not the model")
register("googlenet_2014", googlenet_2014, input_shape=(224, 224, 3), num_classes=1000,
         classifier=CLASSIFIER, aux_logits=False, aux_loss_weight=AUX_LOSS_WEIGHT, paper=_PAPER_REF,
         year=2014, features=("conv1", "norm2", *FEATURES[2:]),
         mean=(123 / 255, 117 / 255, 104 / 255), std=(1 / 255,) * 3,
         deviations="layers the paper leaves open follow Caffe's bvlc_googlenet (LRN form, "
                    "ceil pooling, mean subtraction on 0-255 pixels); aux heads off by default")
