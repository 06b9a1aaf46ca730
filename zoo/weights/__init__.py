"""Pretrained weights (``zoo.weights``, also ``zoo.pretrained``): the weights each family
registers, a download cache, torchvision import and export, and loading for prediction
and fine-tuning.

Three kinds of weights are accepted wherever a ``tag_or_path`` is:

- a **tag** (:func:`list_weights`): ``"resnet50.tv_in1k"`` (torchvision's ``IMAGENET1K_V1``),
  ``"resnet50.tv2_in1k"`` (``IMAGENET1K_V2``), ... or ``"lenet5.digits"`` (shipped in the
  package, trained by ``zoo train``);
- a **torchvision state dict**, ``.pth`` (read with ``torch.load(weights_only=True)``:
  never unpickles arbitrary objects; needs torch) or ``.safetensors`` (read with NumPy
  alone);
- a **zoo weights file** (:func:`zoo.checkpoint.save_weights`, or a training checkpoint).

**Conversion** (:func:`load_torchvision`) happens once, on the weights: conv kernels OIHW
-> HWIO, Linear weights transposed, the first fully-connected layer after a flatten
re-ordered from torch's (C, H, W) flatten to the zoo's (H, W, C) one, BatchNorm
``weight``/``bias`` -> ``scale``/``bias`` and ``running_mean``/``running_var`` -> the
``mean``/``var`` state; ``num_batches_tracked`` is ignored. The key map is derived from
the model's parameter tree and its family's registered rules (:func:`torchvision_rules`): every
source key must be used exactly once and every leaf filled with the right shape, else a
``ValueError`` lists the missing, unexpected and mis-shaped keys.

**Checks.** Every file is checked before a model is built from it: a missing path, a
directory, an empty, text, garbage or truncated file, a damaged ``.pth`` (torch's advice to
load with ``weights_only=False`` is never repeated) and a zoo file whose content hash does
not match (:mod:`zoo.integrity`) each raise an error naming the file and the fault; a zoo
file's metadata must name a registered model with a sane class count and input shape
(:func:`check_metadata`); weights holding NaN or inf are refused unless
``allow_nonfinite=True``.

**Downloads** (:func:`fetch`) go to ``$ZOO_CACHE`` (default ``~/.cache/zoo``) and are
checked against the SHA-256 prefix in torchvision's file name. With ``ZOO_OFFLINE=1`` (or
when the server cannot be reached within seconds) a missing file fails at once with an
error naming the URL and the exact path to put the file at.
"""
from ..images import Transforms
from ..registry import WeightSpec
from .evaluate import evaluate_weights
from .hub import WeightsNotFoundError, cache_dir, fetch, sha256_file
from .load import check_metadata, classify, load, load_for_finetuning, package_run
from .specs import get_weights, imagenet_classes, list_weights
from .torchvision import (convert_state_dict, load_torchvision, read_state_dict,
                          to_torchvision_state_dict, torchvision_key_map, torchvision_rules)

__all__ = ["Transforms", "WeightSpec", "WeightsNotFoundError", "cache_dir", "check_metadata",
           "classify",
           "convert_state_dict",
           "evaluate_weights", "fetch", "get_weights", "imagenet_classes", "list_weights", "load",
           "load_for_finetuning", "load_torchvision", "package_run", "read_state_dict",
           "sha256_file", "to_torchvision_state_dict", "torchvision_key_map",
           "torchvision_rules"]
