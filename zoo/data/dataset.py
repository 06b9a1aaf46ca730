"""What the data layer hands over: :class:`Dataset`, and the checks, splits and statistics
every source shares. NumPy only: the data never touches the accelerator."""
from __future__ import annotations

import dataclasses
import math
import os
import warnings

import numpy as np

from ..images import ImageError, as_image_array
from ..registry import MAX_CLASSES
from .augment import AUGMENTATIONS


class DataError(ValueError):
    """Bad data input: a message meant for the user, never a deep traceback."""


class ImageFileError(DataError, ImageError):
    """Image files of a dataset that cannot be read: a data error and an image error."""


@dataclasses.dataclass
class Dataset:
    """Images at the model's input size, with their labels.

    ``images`` is (N, H, W, C) uint8 (0..255) or float32 in [0, 1]; ``labels`` (N,) int32;
    ``mean``/``std`` are per channel, of images scaled to [0, 1], from the training split.
    Checked when made, by hand too: images (:func:`zoo.images.as_image_array`), labels
    (:func:`check_labels` against ``class_names``), distinct class names, finite mean/std.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"  # one of AUGMENTATIONS, applied by batches() in training only
    split: str = ""        # "train", "test", "validation", "val" (val_fraction), ...
    augment_reason: str = ""   # why load() chose ``augment`` (the run header prints it)

    def __post_init__(self):
        what = f"dataset {self.name!r}" + (f" ({self.split})" if self.split else "")
        images = np.asarray(self.images)
        if images.ndim != 4 or min(images.shape[1:], default=0) < 1:
            raise DataError(f"{what}: images must be a 4-D array (N, H, W, C) of non-empty "
                            f"images, got shape {images.shape}")
        if images.size:
            images = as_image_array(images, f"{what} images")
        elif images.dtype not in (np.uint8, np.float32):
            raise DataError(f"{what}: images must be uint8 or float32, got {images.dtype}")
        names = self.class_names
        if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES or \
                not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise DataError(f"{what}: class_names must be a list of 1..{MAX_CLASSES} distinct "
                            f"strings, got {_short(names)}")
        self.images, self.class_names = images, list(names)
        self.labels = check_labels(self.labels, len(images), len(names),
                                   what=f"{what} labels").astype(np.int32)
        c = images.shape[-1]
        for field, low in (("mean", -math.inf), ("std", 0.0)):
            try:
                v = np.asarray(getattr(self, field), np.float64).reshape(-1)
            except (TypeError, ValueError):
                v = np.full(0, np.nan)
            if v.size not in (1, c) or not np.all(np.isfinite(v)) or np.any(v <= low):
                raise DataError(f"{what}: {field} must be one finite value"
                                f"{' > 0' if low == 0 else ''} or one per channel ({c}), got "
                                f"{getattr(self, field)!r}")
        if self.augment not in AUGMENTATIONS:
            raise DataError(f"{what}: augment must be one of {AUGMENTATIONS}, got "
                            f"{self.augment!r}")

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


# --------------------------------------------------------------------------------------
# Checks shared by every source: labels, sizes

def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_labels(labels, count: int | None = None, num_classes: int | None = None, *,
                 what: str = "labels") -> np.ndarray:
    """``labels`` as int64 (N,), checked before anything is built from them: integers
    (floats only when whole), 1-D, ``count`` long, >= 0, and below ``num_classes`` when
    given, else below ``MAX_CLASSES``. Errors name the offending value and its index."""
    y = np.asarray(labels)
    if y.dtype.kind == "O":     # Python objects: numbers become a numeric array, checked below
        try:
            y = np.asarray(y.tolist())
        except (TypeError, ValueError, OverflowError):
            y = np.asarray(None, object)
        if y.dtype.kind == "O":
            raise DataError(f"{what} must be integers 0..K-1, got Python objects such as "
                            f"{_short(np.asarray(labels, object).reshape(-1)[:3].tolist())}")
    if y.dtype.kind in "US":
        raise DataError(f"{what} must be integers 0..K-1, got strings such as "
                        f"{_short(y.reshape(-1)[:3].tolist())}; for class names use: names, "
                        "labels = np.unique(labels, return_inverse=True)")
    if y.ndim != 1:
        hint = (" (one-hot labels: pass labels.argmax(axis=1))" if y.ndim == 2 and y.shape[1] > 1
                else " (pass labels.reshape(-1))" if y.size == (y.shape[0] if y.ndim else 1)
                else "")
        raise DataError(f"{what} must be a 1-D array (N,), got shape {y.shape}{hint}")
    if count is not None and len(y) != count:
        raise DataError(f"images and {what} differ in length: {count} images, {len(y)} "
                        "labels; each image needs one label")
    if y.dtype == np.bool_ or y.dtype.kind not in "iuf":
        raise DataError(f"{what} must be integers 0..K-1, got dtype {y.dtype}")
    if len(y) == 0:
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            raise DataError(f"{what} must be whole numbers, found {y[bad[0]].item()!r} at "
                            f"index {bad[0]} ({len(bad)} such value(s))")
    i_min, i_max = int(np.argmin(y)), int(np.argmax(y))
    if y[i_min] < 0:
        raise DataError(f"{what} must be >= 0, found {y[i_min].item()!r} at index {i_min}")
    limit, why = ((num_classes, f"the {num_classes} classes")
                  if num_classes is not None else
                  (MAX_CLASSES, f"MAX_CLASSES ({MAX_CLASSES:,}): a typo?"))
    if y[i_max] >= limit:
        raise DataError(f"{what}: label {y[i_max].item()!r} at index {i_max} is out of range "
                        f"for {why} (labels must lie in 0..{limit - 1})")
    return y.astype(np.int64)


def _memory_bytes() -> int | None:
    """This machine's (or container's) memory in bytes, None where unknown."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit) as f:
                sizes.append(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return min(sizes) if sizes else None


def check_memory(shape, dtype, what: str) -> None:
    """Refuse, before allocating it, an array over half of this machine's memory (a split
    copies it): the in-memory design holds every image at the model's size."""
    need = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    have = _memory_bytes()
    if have and need > have // 2:
        raise DataError(f"{what}: {shape[0]} images of {tuple(shape[1:])} {np.dtype(dtype)} need "
                        f"{need / 2**30:.1f} GiB, over half of this machine's "
                        f"{have / 2**30:.1f} GiB; use a smaller image size or fewer images")


def warn_empty_classes(labels: np.ndarray, class_names, what: str, consequence: str) -> None:
    """One warning when some classes have no example in ``labels``: how many, which first."""
    counts = np.bincount(labels, minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        warnings.warn(f"{what}: {len(empty)} of {len(class_names)} classes have no example "
                      f"(e.g. {class_names[empty[0]]!r}); {consequence}", stacklevel=3)


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
    source_channels: int = 0   # the source's own channels (1: all grayscale); 0: the images'

