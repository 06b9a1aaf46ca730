"""Fully-convolutional evaluation: FC -> CONV conversion, dense (sliding) score maps,
shift-and-stitch and multi-scale averaging.

The cs231n notes: any FC layer is a CONV layer whose kernel covers its whole input volume
(VGG's first FC over 7x7x512 is a 7x7 conv, the next FCs are 1x1 convs). The converted net
slides over a larger image in one forward pass and returns a map of class scores.

    fcn, fcn_vars = convert(model, variables)          # weights reshaped, not retrained
    scores, _ = fcn.apply(fcn_vars["params"], fcn_vars["state"], x)    # (N, H', W', K)
    sm = score_map(fcn, fcn_vars, image, stride=fcn.stride // 2, scales=(1.0, 1.25))

Conversion works on the :class:`zoo.nn.Layer` tree, not on model names: it walks the
(nested) Sequentials to the head and rewrites it.

- FC head (``Flatten`` then ``Dense``...): the first Dense becomes a conv whose kernel is
  the spatial size of the Flatten's input volume, its ``(H*W*C, out)`` kernel reshaped to
  ``(H, W, C, out)`` (the Flatten order is NHWC); the next Denses become 1x1 convs.
- Pool head (``GlobalAvgPool``, or ``AdaptiveAvgPool`` to 1x1, then ``Dense``): the pool
  becomes a stride-1 average pool over the training-size window, the classifier a 1x1 conv.
- An ``AdaptiveAvgPool`` that is the identity at the training size is removed; one that
  pools k x k blocks becomes a stride-1 k x k average pool and the next conv is dilated by k
  (so the network stride is not multiplied).
- Dropout, activations and BatchNorm after the flatten act per feature and stay.
- Auxiliary classifiers (GoogLeNet's, active only in training) are dropped.

Geometry. The converted net's stride ``s`` and receptive field are read from
:func:`zoo.nn.recording`. Map cell ``(i, j)`` corresponds to the training-size crop whose
top-left corner is pixel ``(i*s, j*s)``. For a net whose layers declare the exact rule
(no rounding), the inputs that fit are the training size plus multiples of ``s``; any
other size raises an error that names the layer and the formula. :func:`score_map` floors
an image to the largest size that fits (it drops the last ``< s`` rows/columns, which no
full crop covers) and says so in its result.

Equality with crops. Map cell ``(i, j)`` equals the original network applied to its crop
only when the network has no zero padding: a padded layer sees zeros at a crop's border,
where the large image has pixels. See ``docs/fully_conv.md`` for the measured gap.
"""
from .convert import FullyConvModel, convert
from .score_map import ScoreMap, compare_with_crops, crops, resize_image, score_map

__all__ = ["FullyConvModel", "ScoreMap", "compare_with_crops", "convert", "crops", "resize_image",
           "score_map"]
