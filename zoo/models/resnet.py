"""ResNet: He, Zhang, Ren & Sun, "Deep residual learning for image recognition", CVPR 2016
(arXiv 1512.03385); pre-activation ResNet: "Identity mappings in deep residual networks",
ECCV 2016 (arXiv 1603.05027).

One builder, :func:`resnet`: depths are rows of :data:`DEPTHS` (block kind, blocks per
stage, Table 1), block kinds rows of :data:`BLOCKS` (kernel, width multiplier, strided).

- ``resnet18`` ... ``resnet152``: torchvision's ResNet ("v1.5": the bottleneck's stride on
  its 3x3, not the paper's first 1x1); weights torchvision ``IMAGENET1K_V1`` and ``_V2``.
  Paths mirror torchvision's keys (``layer2/0/downsample/conv`` is ``downsample.0``).
  11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808 parameters.
- ``preact_resnet18`` ... ``152``: full pre-activation units (Fig. 4e), the stem, projections
  and final BN-ReLU as fb.resnet.torch's ``preresnet.lua``; no weights.

Strided layers declare ``rounding="floor"`` (torch's rule: the stem gives 112.5 -> 112 at
224). Each stage is ``nn.Sequential(scan=True)``: runs of ``ConvPolicy.scan_min_run``
identical blocks compile as one ``lax.scan`` (ResNet-101/152). Details, choices and counts:
docs/architectures.md.
"""
from __future__ import annotations

import functools

from .. import nn
from ..registry import TorchvisionRules, register, torchvision_weights

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


#: torchvision's module names: ``layerS.B.downsample.0`` / ``.1`` for the projection.
TORCHVISION = TorchvisionRules(rename=((r"/downsample/conv$", "/downsample/0"),
                                       (r"/downsample/bn$", "/downsample/1")))

#: Facts from torchvision 0.29's weight enums: depth -> (version, file, acc@1, acc@5);
#: V2 (the newer recipe) is evaluated at resize 232.
WEIGHTS = {
    18: (("V1", "resnet18-f37072fd.pth", 69.758, 89.078),),
    34: (("V1", "resnet34-b627a593.pth", 73.314, 91.420),),
    50: (("V1", "resnet50-0676ba61.pth", 76.130, 92.862),
         ("V2", "resnet50-11ad3fa6.pth", 80.858, 95.434)),
    101: (("V1", "resnet101-63fe2227.pth", 77.374, 93.546),
          ("V2", "resnet101-cd907fc2.pth", 81.886, 95.780)),
    152: (("V1", "resnet152-394f9c45.pth", 78.312, 94.046),
          ("V2", "resnet152-f82ba261.pth", 82.284, 96.002)),
}

_IMAGENET = dict(input_shape=(224, 224, 3), num_classes=1000, classifier="fc")
#: stage outputs (features_only), strides 2, 4, 8, 16, 32; pre-activation nets end with
#: their final BN-ReLU, after layer4
FEATURES = ("relu", "layer1", "layer2", "layer3", "layer4")
PREACT_FEATURES = ("relu", "layer1", "layer2", "layer3", "relu_final")
for _depth, (_kind, _) in DEPTHS.items():
    _name = f"resnet{_depth}"
    register(_name, functools.partial(resnet, _depth), year=2016,
             paper="He et al., Deep residual learning for image recognition, CVPR 2016",
             deviations="" if _kind == "basic" else
             "torchvision v1.5: bottleneck stride on the 3x3 conv, not the first 1x1",
             torchvision=TORCHVISION,
             weights=tuple(torchvision_weights(
                 f"{_name}.tv{'' if v == 'V1' else '2'}_in1k", _name, file, acc1, acc5,
                 f"ResNet{_depth}_Weights.IMAGENET1K_{v}", resize=256 if v == "V1" else 232)
                 for v, file, acc1, acc5 in WEIGHTS[_depth]),
             features=FEATURES, **_IMAGENET)
    register(f"preact_resnet{_depth}", functools.partial(resnet, _depth, preact=True), year=2016,
             paper="He et al., Identity mappings in deep residual networks, ECCV 2016",
             deviations="no pretrained weights; stem, projections and stride placement as "
                        "fb.resnet.torch preresnet.lua (see zoo.models.resnet)",
             features=PREACT_FEATURES, **_IMAGENET)
