"""Datasets for training and evaluation: the embedded digits, TFDS names, image folders, arrays.

Everything here is NumPy and Pillow: no JAX, so the data never touches the accelerator and
the prefetch thread cannot race with a device computation.

Sources accepted by :func:`load`:

``"digits"`` (the default)
    ``sklearn.datasets.load_digits``: 1,797 real 8x8 handwritten digits (values 0..16),
    shipped inside scikit-learn, so the default run works offline. Scaled to [0, 1] (stored
    float32), resized to the model's input and split train/test 80/20 (1,438 / 359),
    stratified, from ``seed``.
a TFDS name (``"mnist"``, ``"cifar10"``, ... see :data:`DATASET_CHOICES`; any other TFDS
image classification dataset as ``"tfds:NAME"``)
    Read from ``data_dir`` with ``download=False`` semantics: data that is not prepared fails
    at once with the command that prepares it (TFDS would otherwise retry a download for
    minutes on a machine without network). Train split ``"train"``; eval split ``"test"``,
    or ``"validation"`` when there is no test split.
a folder path
    One subfolder per class (class names = sorted subfolder names, hidden ones ignored),
    image files in any format Pillow reads, found recursively. Evaluation data comes from
    ``val_dataset`` (another such folder with the same classes) or a stratified
    ``val_fraction`` of the folder (default 0.2).
``(images, labels)``
    NumPy arrays (Python API): images (N, H, W, C) uint8 0..255 or float in [0, 1], labels
    (N,) integers; evaluation data from ``val_fraction`` (default 0.2).

Fitting images to the model (one rule for every source, see :func:`fit_images`): an image
smaller than the target by at most 1/8 of the target's size on each axis is zero-padded,
centred (MNIST's 28x28 in LeNet-5's 32x32 field, as the paper did); any other image is
resized with a bilinear (triangle) filter, widened when shrinking (antialiased, as Pillow
does), so that it covers the target with its aspect ratio kept, then centre-cropped (the
8x8 digits become 32x32 for LeNet-5). Small sources are resized as a batch by NumPy matrix
products, large ones by Pillow (same filter). Grayscale becomes RGB by repeating the
channel; RGB becomes grayscale with ITU-R 601 luma weights (Pillow's "L"); RGBA loses alpha.
Images are kept in memory at the target size (uint8 where the source is 8-bit): CIFAR-10
at 32x32 is 150 MB, at 224x224 7.5 GB; ImageNet-size datasets do not fit this design.

Normalisation statistics (``Dataset.mean``/``std``, per channel, of images scaled to
[0, 1]) are computed on the training split and copied to the evaluation split, so
``batches(eval_ds, ...)`` normalises exactly like training.

Augmentation (``Dataset.augment``): ``"none"`` for digits and other glyphs (a flipped digit
is a different digit); ``"crop_flip"`` for natural images: zero-pad by ``max(1, size // 8)``
pixels (4 at 32x32), take a random crop of the original size, flip left-right with
probability 1/2 (He et al. 2016, CIFAR-10 recipe). Applied by :func:`batches` in training
only.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib.util
import math
import os
import queue
import threading
import warnings
from typing import Iterator, Sequence

import numpy as np

from .images import as_image_array, check_image_shape, fit_image, fit_images

__all__ = ["Dataset", "DataError", "DATASET_CHOICES", "TFDS_DATASETS", "load", "batches",
           "steps_per_epoch", "check_batch_size", "fit_image", "fit_images", "stratified_split"]


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

#: TFDS image classification datasets known by name (others: ``"tfds:NAME"``), with the
#: augmentation that suits them. Glyphs (digits, letters, characters) must not be flipped.
TFDS_DATASETS: dict[str, str] = {
    "mnist": "none", "fashion_mnist": "none", "kmnist": "none", "emnist": "none",
    "svhn_cropped": "none", "binary_alpha_digits": "none", "omniglot": "none",
    "cifar10": "crop_flip", "cifar100": "crop_flip", "cifar10_corrupted": "crop_flip",
    "stl10": "crop_flip", "imagenette": "crop_flip", "imagewang": "crop_flip",
    "imagenet2012": "crop_flip", "imagenet_resized": "crop_flip", "imagenet_v2": "crop_flip",
    "imagenet_a": "crop_flip", "imagenet_r": "crop_flip", "imagenet_sketch": "crop_flip",
    "tf_flowers": "crop_flip", "oxford_flowers102": "crop_flip",
    "oxford_iiit_pet": "crop_flip", "food101": "crop_flip", "caltech101": "crop_flip",
    "caltech_birds2011": "crop_flip", "cars196": "crop_flip", "stanford_dogs": "crop_flip",
    "dtd": "crop_flip", "eurosat": "crop_flip", "resisc45": "crop_flip", "beans": "crop_flip",
    "cats_vs_dogs": "crop_flip", "horses_or_humans": "crop_flip",
    "rock_paper_scissors": "crop_flip", "deep_weeds": "crop_flip",
    "colorectal_histology": "crop_flip", "patch_camelyon": "crop_flip",
    "malaria": "crop_flip", "cassava": "crop_flip", "plant_village": "crop_flip",
    "visual_domain_decathlon": "crop_flip",
}

#: Names accepted by :func:`load` besides paths and ``"tfds:NAME"``.
DATASET_CHOICES: list[str] = ["digits", *TFDS_DATASETS]

_TFDS_PREFIX = "tfds:"
_READ_CHUNK = 1024


# --------------------------------------------------------------------------------------
# Splits and statistics
# --------------------------------------------------------------------------------------

def _check_fraction(val_fraction) -> float:
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
    fraction = _check_fraction(fraction)
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
    rng = np.random.default_rng([_check_seed(seed), 0x5E11])
    val = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DataError(f"val_fraction={fraction} of {len(labels)} examples leaves an empty "
                        "split; use more data or another fraction")
    return train_idx, val_idx


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) \
            or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Part:
    """Images already fitted to the model, labels, class names, and where they came from."""
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    split: str


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, labels): the data of ``sklearn.datasets.load_digits``.

    Read straight from the CSV that scikit-learn ships (64 pixels and the label per row),
    which skips importing scikit-learn and SciPy (seconds on a small machine); falls back
    to ``load_digits`` if the file is not where it is expected."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float32)
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError(f"the digits dataset comes with scikit-learn ({e}); "
                        "pip install scikit-learn") from None
    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def _digits(image_shape) -> _Part:
    images, labels = _digits_arrays()
    images = (images / 16.0)[..., None]     # (1797, 8, 8, 1) float32 in [0, 1]
    return _Part(fit_images(images, image_shape, what="digits"), labels,
                 [str(k) for k in range(10)], "all")


def _arrays(spec, image_shape) -> _Part:
    if len(spec) != 2:
        raise DataError(f"an array dataset is a pair (images, labels), got {len(spec)} items")
    images, labels = np.asarray(spec[0]), np.asarray(spec[1])
    if images.ndim != 4:
        hint = (" (for grayscale images add a channel axis: images[..., None])"
                if images.ndim == 3 else "")
        raise DataError(f"images must be a 4-D array (N, H, W, C), got shape "
                        f"{images.shape}{hint}")
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-D array (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"images and labels differ in length: {len(images)} images, "
                        f"{len(labels)} labels")
    if len(labels) == 0:
        raise DataError("the array dataset is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating)
                and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
            raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"labels must be >= 0, found {labels.min()}")
    images = as_image_array(images, "images")
    return _Part(fit_images(images, image_shape, what="images"), labels,
                 [str(k) for k in range(int(labels.max()) + 1)], "all")


# ---- image folders ----

def _image_extensions() -> set[str]:
    from PIL import Image
    return {ext.lower() for ext in Image.registered_extensions()}


def _list_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(files, labels, class names) of a folder with one subfolder per class."""
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root!r} does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder {root!r} has no class subfolders: put the images of "
                        "each class in a subfolder named after the class")
    if len(classes) == 1:
        raise DataError(f"dataset folder {root!r} has only one class subfolder "
                        f"({classes[0]!r}); a classifier needs at least two")
    extensions = _image_extensions()
    files, labels, skipped = [], [], []
    for k, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                path = os.path.join(dirpath, f)
                (found if os.path.splitext(f)[1].lower() in extensions else skipped).append(path)
        if not found:
            raise DataError(f"class folder {class_dir!r} contains no images (files Pillow "
                            "reads: .png, .jpg, .bmp, .gif, .tif, .webp, ...)")
        files += found
        labels += [k] * len(found)
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not images, e.g. "
                      f"{skipped[0]}", stacklevel=3)
    return files, np.asarray(labels, np.int64), classes


def _read_image_file(path: str, image_shape) -> np.ndarray:
    from PIL import Image

    height, width, channels = image_shape
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"image folders give 1 (grayscale) or 3 (RGB) channels; the model "
                        f"wants {channels}")
    try:
        with Image.open(path) as im:
            im.draft(mode, (width, height))   # JPEG: decode at a reduced scale, never below
            image = np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    if image.ndim == 2:
        image = image[..., None]
    return fit_image(image, image_shape, what=path)


def _folder(root: str, image_shape) -> _Part:
    files, labels, classes = _list_folder(root)
    images = np.empty((len(files), *image_shape), np.uint8)
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:   # Pillow releases the GIL
        for i, image in enumerate(pool.map(lambda p: _read_image_file(p, image_shape), files)):
            images[i] = image
    return _Part(images, labels, classes, "all")


# ---- TFDS ----

def _import_tfds():
    """tensorflow_datasets, imported on first use (the optional ``data`` extra), with
    TensorFlow kept quiet, off the accelerator and to a few threads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("triton") is not None:
        # Measured with tensorflow-cpu 2.21 and triton (torch 2.14's): importing triton
        # after TensorFlow segfaults, so torchvision would crash later in this process.
        # The other order is safe.
        import triton  # noqa: F401
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"TFDS datasets need the optional data dependencies ({e}); install "
                        "them with: pip install -e '.[data]'") from None
    _configure_tensorflow(tf)
    return tfds


@functools.cache
def _configure_tensorflow(tf) -> None:
    """Once per process: quiet logs, no GPU for TensorFlow (JAX owns it), few threads."""
    tf.get_logger().setLevel("ERROR")
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass
    try:
        tf.config.threading.set_inter_op_parallelism_threads(2)
        tf.config.threading.set_intra_op_parallelism_threads(min(4, os.cpu_count() or 1))
    except RuntimeError:   # TF already initialised by the caller: keep its settings
        pass


def _tfds_mocked() -> bool:
    """Whether ``tfds.testing.mock_data`` is active: it replaces the builder's data_dir
    with a metadata folder that holds no data, and serves random examples instead."""
    from tensorflow_datasets.core import dataset_builder
    return getattr(dataset_builder.DatasetBuilder.as_dataset, "__module__", "").startswith(
        "tensorflow_datasets.testing")


def _quietly(fn):
    """``fn()`` with absl's warnings (TFDS logs one per missing dataset folder) muted."""
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return fn()
    finally:
        logger.setLevel(level)


def _prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return (f"Prepare it once on a machine with network access:\n"
            f"    python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
            f"data_dir='{where}').download_and_prepare()\"\n"
            f"then pass --data-dir {where} (data_dir= in Python), copying the folder over "
            f"if you prepared it elsewhere. Some datasets (e.g. imagenet2012) need a manual "
            f"download first: see https://www.tensorflow.org/datasets/catalog/{name.split('/')[0]}")


class _TFDSSource:
    """A prepared TFDS image classification dataset, read without ever downloading."""

    def __init__(self, name: str, data_dir: str | None):
        tfds = self.tfds = _import_tfds()
        self.name = name
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except (tfds.core.registered.DatasetNotFoundError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"unknown TFDS dataset {name!r}: {first}") from None
        if not _tfds_mocked() and not _quietly(self.builder.is_prepared):
            raise DataError(f"TFDS dataset {name!r} is not prepared in {self.builder.data_path} "
                            f"and zoo never downloads (an offline TFDS download retries for "
                            f"minutes). {_prepare_hint(name, data_dir)}")
        info = self.builder.info
        keys = info.supervised_keys if isinstance(info.supervised_keys, tuple) and \
            len(info.supervised_keys) == 2 else ("image", "label")
        features = info.features
        if not (all(isinstance(k, str) and k in features for k in keys)
                and isinstance(features[keys[0]], tfds.features.Image)
                and isinstance(features[keys[1]], tfds.features.ClassLabel)):
            raise DataError(f"TFDS dataset {name!r} is not an image classification dataset "
                            f"(needs an Image feature and a ClassLabel feature; has "
                            f"{sorted(features.keys())})")
        self.image_key, self.label_key = keys
        self.image_feature = features[self.image_key]
        self.class_names = list(features[self.label_key].names)
        self.splits = list(info.splits.keys())   # empty under mock_data: any split is accepted

    def default_augment(self) -> str:
        base = self.name.split("/")[0].split(":")[0]
        if base in TFDS_DATASETS:
            return TFDS_DATASETS[base]
        return "crop_flip" if self.image_feature.shape[-1] == 3 else "none"

    def eval_split(self) -> str:
        for split in ("test", "validation"):
            if split in self.splits or not self.splits:
                return split
        raise DataError(f"TFDS dataset {self.name!r} has no 'test' or 'validation' split "
                        f"(splits: {', '.join(self.splits)}); pass val_fraction "
                        "(--val-fraction) to hold out part of 'train'")

    def read(self, split: str, image_shape) -> _Part:
        if self.splits and split not in self.splits:
            raise DataError(f"TFDS dataset {self.name!r} has no {split!r} split "
                            f"(splits: {', '.join(self.splits)})")
        ds = self.builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex[self.image_key], ex[self.label_key]))
        fixed = all(s is not None for s in self.image_feature.shape)
        if fixed:
            ds = ds.batch(_READ_CHUNK)
        what = f"{self.name}[{split}]"
        xs, ys = [], []
        for x, y in self.tfds.as_numpy(ds):
            if fixed:
                xs.append(fit_images(as_image_array(x, what), image_shape, what=what))
            else:
                xs.append(fit_image(as_image_array(x, what), image_shape, what=what)[None])
            ys.append(np.atleast_1d(y))
        if not xs:
            raise DataError(f"TFDS dataset {self.name!r} split {split!r} is empty")
        return _Part(np.concatenate(xs), np.concatenate(ys).astype(np.int64),
                     self.class_names, split)


# ---- choosing the source ----

def _resolve(spec) -> tuple[str, object]:
    """(kind, argument): kind is "arrays", "digits", "folder" or "tfds"."""
    if isinstance(spec, (tuple, list)):
        return "arrays", spec
    if isinstance(spec, os.PathLike):
        return "folder", os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset must be a name, a folder path or an (images, labels) pair, "
                        f"got {spec!r}")
    spec = spec.strip()
    if spec == "digits":
        return "digits", None
    if spec.startswith(_TFDS_PREFIX) and spec[len(_TFDS_PREFIX):]:
        return "tfds", spec[len(_TFDS_PREFIX):]
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return "folder", path
    if spec.split("/")[0].split(":")[0] in TFDS_DATASETS:   # "mnist", "emnist/letters", ...
        return "tfds", spec
    if os.sep in spec or "/" in spec or spec.startswith((".", "~")):
        raise DataError(f"dataset folder {spec!r} does not exist")
    raise DataError(f"unknown dataset {spec!r}; choose from: {', '.join(DATASET_CHOICES)}, "
                    f"'tfds:NAME' for any other TFDS image classification dataset, or a "
                    f"folder path (one subfolder of images per class)")


def _read_source(kind: str, arg, image_shape, data_dir, *, role: str
                 ) -> tuple[_Part, _Part | None, str]:
    """(train part, natural eval part or None, default augmentation). ``role`` "val" reads
    only what serves as evaluation data: a folder's or arrays' images, a TFDS eval split."""
    if kind == "digits":
        return _digits(image_shape), None, "none"
    if kind == "arrays":
        part = _arrays(arg, image_shape)
        return part, None, "crop_flip" if part.images.shape[-1] == 3 else "none"
    if kind == "folder":
        return _folder(arg, image_shape), None, "crop_flip"
    source = _TFDSSource(arg, data_dir)
    if role == "val":
        return source.read(source.eval_split(), image_shape), None, source.default_augment()
    return source.read("train", image_shape), source, source.default_augment()


def _dataset_name(kind: str, arg) -> str:
    if kind == "folder":
        return os.path.basename(os.path.normpath(arg)) or str(arg)
    return {"digits": "digits", "arrays": "arrays"}.get(kind, str(arg))


def load(spec: str | tuple[np.ndarray, np.ndarray] = "digits", *,
         image_shape: tuple[int, int, int], val_dataset: str | None = None,
         val_fraction: float | None = None, data_dir: str | None = None, seed: int = 0,
         augment: str | None = None) -> tuple[Dataset, Dataset]:
    """``(train, eval)`` datasets fitted to ``image_shape`` (H, W, C).

    ``spec``: ``"digits"``, a TFDS name (:data:`DATASET_CHOICES`, or ``"tfds:NAME"``), a
    folder path with one subfolder per class, or an ``(images, labels)`` pair of arrays.
    Evaluation data: ``val_dataset`` (another source with the same class names: a folder,
    arrays, or a TFDS name whose test/validation split is used), else a stratified
    ``val_fraction`` of the training data, else the natural held-out part (digits: a 20%
    stratified split; TFDS: "test", or "validation" when there is no test split; folders
    and arrays: 20%). Splits depend on ``seed`` only. ``augment`` overrides the source's
    default ("none" or "crop_flip"). A string naming an existing folder is a folder even if
    it is also a TFDS name; ``"tfds:NAME"`` forces TFDS. Bad input raises
    :class:`DataError` (a ValueError) with a message for the user.
    """
    image_shape = check_image_shape(image_shape)
    seed = _check_seed(seed)
    if val_fraction is not None:
        val_fraction = _check_fraction(val_fraction)
    if val_dataset is not None and val_fraction is not None:
        raise DataError("give either val_dataset or val_fraction, not both")
    if augment is not None and augment not in AUGMENTATIONS:
        raise DataError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")

    kind, arg = _resolve(spec)
    name = _dataset_name(kind, arg)
    train, natural, default_augment = _read_source(kind, arg, image_shape, data_dir,
                                                   role="train")
    if len(set(train.labels.tolist())) < 2 and kind != "folder":
        raise DataError(f"dataset {name!r} has only one class; a classifier needs at least two")

    if val_dataset is not None:
        vkind, varg = _resolve(val_dataset)
        val, _, _ = _read_source(vkind, varg, image_shape, data_dir, role="val")
        val = _align_classes(val, train.class_names, _dataset_name(vkind, varg), name)
        val.split = f"val_dataset:{_dataset_name(vkind, varg)}"
    elif val_fraction is not None or natural is None:
        fraction = 0.2 if val_fraction is None else val_fraction
        train_idx, val_idx = stratified_split(train.labels, fraction, seed)
        split = "test" if kind == "digits" and val_fraction is None else "val"
        val = _Part(train.images[val_idx], train.labels[val_idx], train.class_names, split)
        train = _Part(train.images[train_idx], train.labels[train_idx], train.class_names,
                      "train")
    else:
        val = natural.read(natural.eval_split(), image_shape)
    train.split = "train"

    mean, std = _channel_stats(train.images)
    augment = augment or default_augment

    def make(part: _Part) -> Dataset:
        return Dataset(images=part.images, labels=part.labels.astype(np.int32),
                       class_names=list(train.class_names), name=name, mean=mean, std=std,
                       augment=augment, split=part.split)

    return make(train), make(val)


def _align_classes(val: _Part, class_names: list[str], val_name: str, name: str) -> _Part:
    """Relabel ``val`` to ``class_names`` (matched by name); the class sets must agree."""
    if set(val.class_names) != set(class_names):
        missing = sorted(set(class_names) - set(val.class_names))
        extra = sorted(set(val.class_names) - set(class_names))
        raise DataError(f"validation data {val_name!r} has other classes than {name!r}: "
                        f"missing {missing}, extra {extra}")
    index = {c: k for k, c in enumerate(class_names)}
    remap = np.array([index[c] for c in val.class_names], np.int64)
    return _Part(val.images, remap[val.labels], list(class_names), val.split)


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------

def _check_batch_size_value(batch_size) -> int:
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_batch_size(ds: Dataset, batch_size: int) -> None:
    """Raise :class:`DataError` when ``batch_size`` is not positive or exceeds the dataset."""
    batch_size = _check_batch_size_value(batch_size)
    if batch_size > len(ds):
        raise DataError(f"batch size {batch_size} is larger than the {ds.name!r} {ds.split} "
                        f"split ({len(ds)} images); use a batch size of at most {len(ds)}")


def steps_per_epoch(ds: Dataset | int, batch_size: int, train: bool = True) -> int:
    """Batches per epoch as :func:`batches` yields them by default: the last partial batch
    is dropped in training and kept in evaluation."""
    n = ds if isinstance(ds, (int, np.integer)) else len(ds)
    batch_size = _check_batch_size_value(batch_size)
    return n // batch_size if train else -(-n // batch_size)


def _crop_flip(images: np.ndarray, rng: np.random.Generator, total: int, index: np.ndarray
               ) -> np.ndarray:
    """Random crop after zero padding by max(1, min(H, W) // 8) pixels, then a left-right
    flip with probability 1/2. The draws are made for the whole global batch of ``total``
    examples and ``index`` picks this shard's rows, so sharding does not change them."""
    _, h, w, _ = images.shape
    pad = max(1, min(h, w) // 8)
    dy = rng.integers(0, 2 * pad + 1, size=total)[index]
    dx = rng.integers(0, 2 * pad + 1, size=total)[index]
    flip = (rng.random(size=total) < 0.5)[index]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(images)
    for b in range(len(images)):
        crop = padded[b, dy[b]:dy[b] + h, dx[b]:dx[b] + w]
        out[b] = crop[:, ::-1] if flip[b] else crop
    return out


def _channel_vector(value, default, channels: int, what: str) -> np.ndarray:
    v = np.asarray(default if value is None else value, np.float32).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, channels)
    if v.size != channels:
        raise DataError(f"{what} has {v.size} values for {channels}-channel images")
    return v


def batches(ds: Dataset, batch_size: int, *, train: bool, seed: int, epoch: int,
            mean=None, std=None, drop_remainder: bool | None = None, prefetch: int = 2,
            num_shards: int = 1, shard_index: int = 0
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterator of ``(x, y)``: x float32 (B, H, W, C) scaled to [0, 1] then normalised with
    ``mean``/``std`` (default ``ds.mean``/``ds.std``; one value or one per channel), y int32
    (B,).

    ``train=True``: a permutation drawn from ``(seed, epoch)``, augmentation per
    ``ds.augment`` drawn from ``(seed, epoch, batch index)``, the last partial batch dropped.
    ``train=False``: in order, no augmentation, the last partial batch kept.
    ``drop_remainder`` overrides the default. Batches are made ``prefetch`` ahead in a
    background thread (bounded queue; 0 = in the caller's thread); the output depends only
    on the arguments, never on thread timing.

    ``num_shards``/``shard_index`` (multi-host): ``batch_size`` is the global batch; this
    process gets rows ``shard_index`` of ``np.array_split(batch, num_shards)`` of every
    batch, so all processes step through the same permutation together.
    """
    batch_size = _check_batch_size_value(batch_size)
    seed, epoch = _check_seed(seed), int(epoch)
    if epoch < 0:
        raise DataError(f"epoch must be >= 0, got {epoch}")
    if not (isinstance(num_shards, (int, np.integer)) and num_shards >= 1
            and isinstance(shard_index, (int, np.integer)) and 0 <= shard_index < num_shards):
        raise DataError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
    if train and ds.augment not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {ds.augment!r}; choose from {AUGMENTATIONS}")
    if drop_remainder is None:
        drop_remainder = train
    channels = ds.images.shape[-1]
    mean = _channel_vector(mean, ds.mean, channels, "mean")
    std = _channel_vector(std, ds.std, channels, "std")
    if np.any(std <= 0):
        raise DataError(f"std must be positive, got {std.tolist()}")
    scale = np.float32(1 / 255 if ds.images.dtype == np.uint8 else 1.0)
    inv_std = (1.0 / std).astype(np.float32)

    n = len(ds)
    order = (np.random.default_rng([seed, epoch, 0]).permutation(n) if train
             else np.arange(n))
    stop = n - batch_size + 1 if drop_remainder else n
    starts = list(range(0, max(stop, 0), batch_size))

    def make(i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = order[starts[i]:starts[i] + batch_size]
        rows = np.array_split(np.arange(len(idx)), num_shards)[shard_index]
        x = ds.images[idx[rows]]
        if train and ds.augment == "crop_flip":
            x = _crop_flip(x, np.random.default_rng([seed, epoch, 1, i]), len(idx), rows)
        x = x.astype(np.float32)
        x *= scale
        x -= mean
        x *= inv_std
        return x, ds.labels[idx[rows]].astype(np.int32)

    if prefetch <= 0:
        return (make(i) for i in range(len(starts)))
    return _prefetched(make, len(starts), int(prefetch))


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _prefetched(make, count: int, depth: int):
    """Yield ``make(0), ..., make(count - 1)``, computed ``depth`` ahead by one thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for i in range(count):
                if not put(make(i)):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
            put(_Failure(e))

    thread = threading.Thread(target=work, name="zoo-data-prefetch", daemon=True)

    def consume():
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:   # the consumer finished or stopped early: let the worker go
            stop.set()
            thread.join(timeout=10)

    return consume()
