"""ResNet: He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016
(arXiv 1512.03385); and the pre-activation ResNet of He, Zhang, Ren & Sun, "Identity
mappings in deep residual networks", ECCV 2016 (arXiv 1603.05027).

One builder, :func:`resnet`; the variants are the rows of :data:`DEPTHS` (block kind,
blocks per stage: Table 1 of the CVPR paper) and the block kinds are the rows of
:data:`BLOCKS` (each conv as kernel, width multiplier, whether it takes the stage stride).

``resnet18`` ... ``resnet152``: torchvision's ResNet ("v1.5", weight source
``torchvision.models.resnetNN``). Conv (no bias) -> BatchNorm (eps 1e-5, momentum 0.1) ->
ReLU; stem conv 7x7/2 pad 3, BN, ReLU, max pool 3x3/2 pad 1; four stages of widths 64,
128, 256, 512 (x4 at the output of a bottleneck), the first block of stages 2-4 strided;
``relu(body(x) + shortcut(x))`` with a projection shortcut (1x1 conv, stride s, + BN)
where the shape changes; global average pool; fc. Parameter paths mirror torchvision's
keys: ``conv1``, ``bn1``, ``layer1/0/conv1``, ``layer2/0/downsample/conv`` (torchvision's
``downsample.0``) and ``.../downsample/bn`` (``downsample.1``), ``fc``. BN ``weight`` is our
``scale``; running statistics are state. Parameters at 1000 classes, equal to
torchvision's ``num_params``: 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 /
60,192,808. Multiply-accumulates at 224x224 (convs and fc): 1.814 / 3.664 / 4.089 / 7.801 /
11.514 G. Deviation from the CVPR paper (none from torchvision): the bottleneck puts its
stride on the 3x3 conv instead of the first 1x1 ("v1.5", as fb.resnet.torch did).

``preact_resnet18`` ... ``preact_resnet152``: full pre-activation units (Fig. 4e of the
ECCV paper), ``x + body(x)`` with ``body = (BN -> ReLU -> conv) x 2 or 3`` and nothing after
the addition. No pretrained weights. Choices, all as the authors' ImageNet code
(fb.resnet.torch ``models/preresnet.lua``, commit 7ac4a9f):

- stem: conv 7x7/2 pad 3, BN, ReLU, max pool 3x3/2 pad 1, as the post-activation net. The
  stem's BN-ReLU is the first unit's pre-activation ("for the first Residual Unit, that
  follows a stand-alone convolutional layer, we adopt the first activation right after conv1
  and before splitting into two paths", sec. 4.1), so ``layer1/0`` has no ``bn1``.
- where a unit changes shape (first unit of stages 2-4, and ``layer1/0`` of the bottleneck
  nets) its BN-ReLU (``bn1``) is applied before the split and the projection shortcut, a
  plain 1x1 strided conv without BN (``downsample/conv``), sees the pre-activated input;
  an identity shortcut carries the raw, un-normalized input.
- a final BN-ReLU (``bn_final``) after the last unit, before the pool ("an extra activation
  right after its element-wise addition", sec. 4.1).
- bottleneck stride on the 3x3 conv; convs without bias (every one feeds a BN, directly or
  through the identity path, so a bias is redundant; fb.resnet.torch drops them too).
- BatchNorm eps 1e-5, momentum 0.1, as the post-activation nets.

Parameter paths: ``layerS/B/bnK`` is the BN-ReLU in front of ``layerS/B/convK``.
Parameters at 1000 classes (closed form in ``tests/test_resnet.py``): preact_resnet18
11,687,720; preact_resnet34 21,795,880; preact_resnet50 25,549,352; preact_resnet101
44,541,480; preact_resnet152 60,185,128.

Compile time: a stage's blocks after the first are identical, and each stage is a
scannable ``nn.Sequential(scan=True)``: runs of at least ``ConvPolicy.scan_min_run`` (6) of
them run as one ``jax.lax.scan`` over their stacked params (ResNet-101's and -152's long
stages); the params keep their per-block paths.

Every strided layer (stem conv and pool, strided 3x3 convs, strided 1x1 projections) declares
``rounding="floor"``, torch's rule: at 224 the stem conv gives ``(224 - 7 + 6)/2 + 1 =
112.5 -> 112``. Stride-1 layers fit exactly at any size. Stage outputs at 224: 56, 28, 14, 7;
at 32: 8, 4, 2, 1.
"""
from __future__ import annotations

import functools

from .. import nn
from ..registry import register

#: depth -> (block kind, blocks per stage); CVPR paper, Table 1.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

#: block kind -> its convs as (kernel, width multiplier, takes the stage's stride).
BLOCKS = {
    "basic": ((3, 1, True), (3, 1, False)),
    "bottleneck": ((1, 1, False), (3, 1, True), (1, 4, False)),  # v1.5: stride on the 3x3
}

STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)

def _conv(features, kernel, stride=1):
    return nn.Conv(features, kernel, stride=stride, padding=kernel // 2, bias=False,
                   rounding="floor" if stride > 1 else "exact")


def _bn():
    return nn.BatchNorm(eps=1e-5, momentum=0.1)


def _block(kind, width, stride, in_channels, preact, first) -> nn.Layer:
    """One residual unit. ``first``: the pre-activation net's ``layer1/0``, whose BN-ReLU is
    the stem's."""
    convs = BLOCKS[kind]
    out_channels = width * convs[-1][1]
    units = []  # per conv: its (conv, bn, relu) named layers
    for i, (kernel, mult, strided) in enumerate(convs, 1):
        units.append(((f"conv{i}", _conv(width * mult, kernel, stride if strided else 1)),
                      (f"bn{i}", _bn()), (f"relu{i}", nn.Relu())))
    project = stride != 1 or in_channels != out_channels

    if not preact:
        body = [layer for conv, bn, relu in units for layer in (conv, bn, relu)][:-1]
        shortcut = ("downsample", nn.Sequential([("conv", _conv(out_channels, 1, stride)),
                                                 ("bn", _bn())])) if project else None
        return nn.Residual(body, shortcut, activation="relu")

    body = [layer for conv, bn, relu in units for layer in (bn, relu, conv)]
    shortcut = ("downsample", nn.Sequential([("conv", _conv(out_channels, 1, stride))])
                ) if project else None
    if first:
        return nn.Residual(body[2:], shortcut)
    if project:
        return nn.Chain(nn.Sequential(body[:2]), nn.Residual(body[2:], shortcut))
    return nn.Residual(body)


def resnet(depth: int, *, preact: bool = False, num_classes: int = 1000) -> nn.Layer:
    """ResNet-``depth`` (a key of :data:`DEPTHS`); ``preact`` for the pre-activation units."""
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    kind, counts = DEPTHS[depth]
    layers = [("conv1", _conv(STEM_WIDTH, 7, 2)), ("bn1", _bn()), ("relu", nn.Relu()),
              ("maxpool", nn.MaxPool(3, 2, 1, rounding="floor"))]
    channels = STEM_WIDTH
    for s, (width, stride, count) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES, counts), 1):
        blocks = []
        for b in range(count):
            blocks.append((str(b), _block(kind, width, stride if b == 0 else 1, channels,
                                          preact, first=(s == 1 and b == 0))))
            channels = width * BLOCKS[kind][-1][1]
        layers.append((f"layer{s}", nn.Sequential(blocks, scan=True)))
    if preact:
        layers += [("bn_final", _bn()), ("relu_final", nn.Relu())]
    layers += [("avgpool", nn.GlobalAvgPool()), ("fc", nn.Dense(num_classes))]
    return nn.Sequential(layers)


_IMAGENET = dict(input_shape=(224, 224, 3), num_classes=1000, classifier="fc")
for _depth, (_kind, _) in DEPTHS.items():
    register(f"resnet{_depth}", functools.partial(resnet, _depth), year=2016,
             paper="He et al., Deep residual learning for image recognition, CVPR 2016",
             deviations="" if _kind == "basic" else
             "torchvision v1.5: bottleneck stride on the 3x3 conv, not the first 1x1",
             **_IMAGENET)
    register(f"preact_resnet{_depth}", functools.partial(resnet, _depth, preact=True), year=2016,
             paper="He et al., Identity mappings in deep residual networks, ECCV 2016",
             deviations="no pretrained weights; stem, projections and stride placement as "
                        "fb.resnet.torch preresnet.lua (see zoo.models.resnet)",
             **_IMAGENET)
