"""GoogLeNet (Inception v1): Szegedy et al., "Going deeper with convolutions", CVPR 2015
(arXiv:1409.4842, 2014).

Both variants share one builder; they differ only in data (:data:`TORCHVISION`,
:data:`PAPER`): the conv unit, the trunk layout, the kernel of the "5x5" branch, the
classifier head and the aux heads' pool. Inception modules are rows of Table 1's branch
widths, :data:`INCEPTION`.

- ``googlenet``: torchvision's ``GoogLeNet``, the layout its ImageNet weights have. Every
  conv is ``BasicConv2d``: conv without bias, BatchNorm (eps 1e-3), ReLU; no LRN. Its
  "5x5" branch is a 3x3 conv (a known torchvision slip, pytorch/vision#906, kept because
  the weights have it); ``maxpool4`` is 2x2/2; the head is a global average pool, dropout
  0.2 and ``fc``. 6,624,904 parameters (13,004,888 with ``aux_logits=True``), 1.50 GMACs
  at 224. torchvision's ``transform_input`` (re-normalising inputs from ImageNet mean/std
  to mean 0.5/std 0.5, on by default with its pretrained weights) is a property of those
  weights, not of the architecture: the importer folds it into ``conv1``, or the caller
  normalises accordingly; it is not a layer here.
- ``googlenet_2014``: the paper's network (Table 1; Caffe's ``bvlc_googlenet`` for what
  the paper leaves open): convs with bias and ReLU, no BatchNorm, true 5x5 branches, LRN
  after ``maxpool1`` and after ``conv3`` (Caffe's form: size 5, alpha 1e-4 divided by the
  size, beta 0.75, k 1), max pools 3x3/2 with Caffe's ceil rule, a 7x7/1 average pool
  (so the 5b map must be at least 7x7: inputs of 223 or more), dropout 0.4 and ``fc``.
  Preprocessing is Caffe's: mean subtraction on 0-255 pixels (``std`` 1/255), which the
  LRN constants assume. No published total parameter count: Table 1's per-module params
  column is what the tests check (see ``tests/test_googlenet.py`` for its errata).

Trunk names follow torchvision for both variants (``conv1``, ``maxpool1``, ``conv2`` =
the paper's "3x3 reduce" of the second conv stage, ``conv3``, ``maxpool2``,
``inception3a`` ... ``inception5b``, ``fc``); the paper variant adds ``norm1``/``norm2``.
Inside a module: ``branch1`` (1x1), ``branch2`` (``reduce`` 1x1, ``conv`` 3x3),
``branch3`` (``reduce`` 1x1, ``conv`` 5x5 or torchvision's 3x3), ``branch4`` (``pool``
3x3/1, ``proj`` 1x1). Each conv unit is ``conv`` [+ ``bn``] + ``relu``.

Auxiliary classifiers (``aux_logits=True``; default ``False`` for both variants, so that
``create(name)`` is the network the paper evaluates and counts, the aux heads being
"discarded at inference time") are attached after ``inception4a`` (``aux1``) and
``inception4d`` (``aux2``): pool (torchvision: adaptive average to 4x4; paper: average
5x5/3, 14x14 -> 4x4), ``conv`` 1x1 128 (+BN for torchvision) + ReLU, ``fc1`` 2048 -> 1024,
ReLU, dropout 0.7, ``fc2`` -> classes. Their params live under ``aux1``/``aux2``.

``model.apply`` returns the main logits only and never runs the aux heads (as torchvision
in eval, and at no cost in train); ``model.apply_with_aux`` also returns ``{"aux1", "aux2"}``
(:func:`zoo.nn.WithSideHeads`). The paper's loss adds the aux losses weighted by 0.3, the
model's ``aux_loss_weight``, which the trainer reads.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .. import nn
from ..registry import register

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
register("googlenet", googlenet, input_shape=(224, 224, 3), num_classes=1000, classifier="fc",
         aux_logits=False, aux_loss_weight=AUX_LOSS_WEIGHT, paper=_PAPER_REF, year=2014,
         deviations="torchvision's variant: BatchNorm (eps 1e-3) after every conv and no LRN; "
                    "the '5x5' branch is 3x3; maxpool4 is 2x2/2; global average pool, dropout "
                    "0.2; transform_input belongs to the pretrained weights, not the model")
register("googlenet_2014", googlenet_2014, input_shape=(224, 224, 3), num_classes=1000,
         classifier="fc", aux_logits=False, aux_loss_weight=AUX_LOSS_WEIGHT, paper=_PAPER_REF,
         year=2014,
         mean=(123 / 255, 117 / 255, 104 / 255), std=(1 / 255,) * 3,
         deviations="layers the paper leaves open follow Caffe's bvlc_googlenet (LRN form, "
                    "ceil pooling, mean subtraction on 0-255 pixels); aux heads off by default")
