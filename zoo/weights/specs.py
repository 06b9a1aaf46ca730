"""The weights each family registers (:class:`zoo.registry.WeightSpec`), by tag, and the
ImageNet class names that ship with the package."""
from __future__ import annotations

import functools
import os

from .. import registry
from ..registry import WeightSpec

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def list_weights(pattern: str = "*") -> list[str]:
    """Known weight tags matching an fnmatch ``pattern`` (e.g. ``"resnet*"``), sorted."""
    return registry.list_weights(pattern)


def get_weights(tag: str) -> WeightSpec:
    known = registry.all_weights()
    if tag not in known:
        close = [t for t in known if t.split(".")[0] == tag.split(".")[0]]
        hint = f" (for {tag.split('.')[0]}: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown weights {tag!r}{hint}; known tags: {', '.join(list_weights())}")
    return known[tag]


@functools.cache
def _imagenet_table() -> tuple[tuple[str, str], ...]:
    with open(os.path.join(ASSETS, "imagenet_classes.txt"), encoding="utf-8") as f:
        return tuple(tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip())


def imagenet_classes(wnids: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's index order (sorted WordNet ids);
    ``wnids=True`` gives the WordNet ids instead. Shipped with the package
    (``zoo/assets/imagenet_classes.txt``: ``wnid<TAB>name`` per line)."""
    return [w if wnids else n for w, n in _imagenet_table()]
