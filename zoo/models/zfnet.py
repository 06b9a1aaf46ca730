"""ZFNet: Zeiler & Fergus, "Visualizing and understanding convolutional networks",
ECCV 2014 (arXiv:1311.2901, 2013), fig. 3.

``zfnet``: conv1 96 7x7/2, each of conv1/conv2 followed by ReLU, a 3x3/2 max pool and
contrast normalization across feature maps; conv2 256 5x5/2; conv3-conv5 384-384-256 3x3;
fc6/fc7 4096 with dropout 0.5: 62,357,608 parameters at 224. Geometry at 224: conv1
(224 - 7 + 2*1)/2 + 1 = 110.5 -> 110 (floor), pool1 54.5 -> 55 (ceil), conv2 26,
pool2 12.5 -> 13 (ceil), conv3-5 13, pool5 6. No published weights.

Names as AlexNet's (:mod:`.alexnet`): ``conv{i}``, ``relu{i}``, ``pool{i}``, ``norm{i}``,
``fc6``-``fc8``, ``drop6``/``drop7``.
"""
from __future__ import annotations

import functools

from ..registry import register
from .alexnet import ConvStage, build

ZFNET = (
    ConvStage(96, 7, stride=2, padding=1, rounding="floor", then=("relu", "pool_ceil", "norm")),
    ConvStage(256, 5, stride=2, then=("relu", "pool_ceil", "norm")),
    ConvStage(384, 3, padding=1),
    ConvStage(384, 3, padding=1),
    ConvStage(256, 3, padding=1, then=("relu", "pool_ceil")),
)

register("zfnet", functools.partial(build, ZFNET),
         input_shape=(224, 224, 3), num_classes=1000, classifier="fc8", year=2013,
         features=("relu1", "relu2", "relu5"),   # before each pool
         paper="Zeiler & Fergus, Visualizing and understanding convolutional networks, ECCV 2014",
         deviations="contrast normalization is AlexNet's LRN (the paper gives no constants); "
                    "conv1 padding 1 with the floor rule and ceil-rule pools reproduce the "
                    "paper's 110/55/26/13/6; no published weights")
