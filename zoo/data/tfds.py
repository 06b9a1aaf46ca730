"""TFDS datasets, read from a prepared data directory without ever downloading: data that
is not prepared fails at once with the command that prepares it (TFDS would otherwise retry
a download for minutes on a machine without network). Train split ``"train"``; evaluation
split ``"test"``, or ``"validation"`` when there is no test split."""
from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from ..images import as_image_array, fit_image, fit_images
from .augment import AUTO, resolve_augment
from .dataset import DataError, Part, check_memory

#: TFDS image classification datasets known by name (others: ``"tfds:NAME"``): "none" marks
#: glyphs (digits, letters, characters), never flipped; the others' default goes by size.
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

TFDS_PREFIX = "tfds:"
READ_CHUNK = 1024


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


class TFDSSource:
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

    def default_augment(self, image_size) -> tuple[str, str]:
        """(augmentation, reason) at the model's ``image_size``: none for the glyph
        datasets of :data:`TFDS_DATASETS` and single-channel data, else by size."""
        base = self.name.split("/")[0].split(":")[0]
        glyphs = f"{base} holds glyphs" if TFDS_DATASETS.get(base) == "none" else None
        channels = self.image_feature.shape[-1] or 3
        return resolve_augment(AUTO, channels, image_size, glyphs=glyphs)

    def eval_split(self) -> str:
        for split in ("test", "validation"):
            if split in self.splits or not self.splits:
                return split
        raise DataError(f"TFDS dataset {self.name!r} has no 'test' or 'validation' split "
                        f"(splits: {', '.join(self.splits)}); pass val_fraction "
                        "(--val-fraction) to hold out part of 'train'")

    def read(self, split: str, image_shape) -> Part:
        if self.splits and split not in self.splits:
            raise DataError(f"TFDS dataset {self.name!r} has no {split!r} split "
                            f"(splits: {', '.join(self.splits)})")
        if split in self.splits:    # sized before reading: the images are held in memory
            check_memory((self.builder.info.splits[split].num_examples, *image_shape), np.uint8,
                         f"TFDS dataset {self.name!r} split {split!r}")
        ds = self.builder.as_dataset(split=split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex[self.image_key], ex[self.label_key]))
        fixed = all(s is not None for s in self.image_feature.shape)
        if fixed:
            ds = ds.batch(READ_CHUNK)
        what = f"{self.name}[{split}]"
        xs, ys = [], []
        for x, y in self.tfds.as_numpy(ds):
            if x.dtype == np.uint16:   # a 16-bit Image feature: scaled, never clipped
                x = (x / 65535.0).astype(np.float32)
            if fixed:
                xs.append(fit_images(as_image_array(x, what), image_shape, what=what))
            else:
                xs.append(fit_image(as_image_array(x, what), image_shape, what=what)[None])
            ys.append(np.atleast_1d(y))
        if not xs:
            raise DataError(f"TFDS dataset {self.name!r} split {split!r} is empty")
        return Part(np.concatenate(xs), np.concatenate(ys).astype(np.int64),
                     self.class_names, split)
