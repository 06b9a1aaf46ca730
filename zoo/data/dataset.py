"""What the data layer hands over: :class:`Dataset`, and the checks, splits and statistics
every source shares. NumPy only: the data never touches the accelerator."""
from __future__ import annotations

import dataclasses
import math

import numpy as np


class DataError(ValueError):
    """Bad data input: a message meant for the user, never a deep traceback."""


@dataclasses.dataclass
class Dataset:
    """Images at the model's input size, with their labels.

    ``images`` is (N, H, W, C) uint8 (0..255) or float32 in [0, 1]; ``labels`` (N,) int32;
    ``mean``/``std`` are per channel, of images scaled to [0, 1], from the training split.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    split: str = ""        # "train", "test", "validation", "val" (val_fraction), ...

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.split!r}, {len(self)} images of {self.image_shape} "
                f"{self.images.dtype}, {self.num_classes} classes, augment={self.augment!r})")


AUGMENTATIONS = ("none", "crop_flip")


# --------------------------------------------------------------------------------------
# Splits and statistics
# --------------------------------------------------------------------------------------

def check_fraction(val_fraction) -> float:
    try:
        f = float(val_fraction)
    except (TypeError, ValueError):
        f = math.nan
    if not 0.0 < f < 1.0:
        raise DataError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction!r}")
    return f


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``, each sorted. ``round(N * fraction)`` examples go to
    validation, shared among the classes in proportion to their sizes (largest remainders
    first); every class keeps at least one example for training. Which examples go is
    drawn from ``seed``."""
    fraction = check_fraction(fraction)
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * fraction
    room = counts - 1
    take = np.minimum(np.floor(quota).astype(np.int64), room)
    target = min(int(round(len(labels) * fraction)), int(room.sum()))
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    while take.sum() < target:
        for k in order:
            if take.sum() < target and take[k] < room[k]:
                take[k] += 1
    rng = np.random.default_rng([check_seed(seed), 0x5E11])
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"val_fraction={fraction} of {len(labels)} examples leaves an empty "
                        "split; use more data or another fraction")
    return train_idx, val_idx


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images scaled to [0, 1], in float64, chunk by chunk."""
    c = images.shape[-1]
    total, total_sq, count = np.zeros(c), np.zeros(c), 0
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    for i in range(0, len(images), 2048):
        x = images[i:i + 2048].reshape(-1, c).astype(np.float64) * scale
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
        count += x.shape[0]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - np.square(mean), 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel: leave its scale alone
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


@dataclasses.dataclass
class Part:
    """Images already fitted to the model, labels, class names, and where they came from."""
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: str
