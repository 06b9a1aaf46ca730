"""What the streaming loader reads: image folders and TFDS data sources as random-access
readers (picklable: Grain's worker processes get a copy), and :class:`StreamSet`, the
streamed counterpart of :class:`Dataset` (a list of examples, never their pixels).

Nothing is decoded here but a fixed sample of images for the normalisation statistics
(:data:`STATS_SAMPLE`, drawn from the seed) and the choice of augmentation."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

from ..images import ImageError, as_image_array, convert_channels, open_image
from .augment import resolve_augment
from .dataset import (DataError, channel_stats, check_fraction, check_seed, stratified_split,
                      warn_empty_classes)
from .sources import _check_split_args, _list_folder, _resolve, _warn_val_gaps
from .tfds import TFDS_DATASETS, TFDSSource, _import_tfds

#: images decoded (at most) to estimate the training set's mean and std
STATS_SAMPLE = 256


class FolderReader:
    """Image files with known labels; :meth:`read` gives (pixels (H, W, C) uint8 at
    ``channels``, label, whether the file is grayscale)."""

    def __init__(self, files, labels, channels: int):
        self.files, self.labels, self.channels = list(files), np.asarray(labels, np.int64), channels

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        return self.files[i]

    def read(self, i: int, draft=None, pil: bool = False):
        """``pil``: the Pillow image itself (a crop is then cut before any array is made)."""
        im = open_image(self.files[i], draft=draft)   # every mode, 16-bit scaled; errors name it
        gray, mode = im.mode == "L", {1: "L", 3: "RGB"}[self.channels]
        im = im if im.mode == mode else im.convert(mode)
        if pil:
            return im, int(self.labels[i]), gray
        pixels = np.asarray(im)
        return (pixels[..., None] if pixels.ndim == 2 else pixels), int(self.labels[i]), gray


class TFDSReader:
    """A TFDS split through ``builder.as_data_source`` (random access to the prepared
    array_record files, never materialised); 16-bit images scaled by 1/65535."""

    def __init__(self, source, name: str, split: str, image_key: str, label_key: str,
                 channels: int, directory: str | None = None):
        self.source, self.name_, self.split = source, name, split
        self.image_key, self.label_key, self.channels = image_key, label_key, channels
        self.labels = None     # known only by reading each record
        self.directory = directory   # the prepared version's folder, where it exists

    def __getstate__(self):
        """A worker process reopens the prepared files by their folder: no builder class,
        registration or dataset info travels with the reader."""
        state = dict(self.__dict__)
        if self.directory is not None:
            state["source"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.source is None:
            tfds = _import_tfds()
            self.source = tfds.builder_from_directory(self.directory).as_data_source(
                split=self.split)

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return f"{self.name_}[{self.split}] record {i}"

    def read(self, i: int, draft=None, pil: bool = False):   # arrays only: pil is ignored
        ex = self.source[int(i)]
        x = np.asarray(ex[self.image_key])
        x = x[..., None] if x.ndim == 2 else x
        if x.dtype == np.uint16:      # scaled, never clipped
            x = (x / 65535.0).astype(np.float32)
        x = as_image_array(x, self.name(i))
        gray = x.shape[-1] == 1
        return convert_channels(x, self.channels, self.name(i)), int(ex[self.label_key]), gray


@dataclasses.dataclass
class StreamSet:
    """Examples ``indices`` of ``reader``, streamed at ``image_shape``; the fields the
    trainer reads from a :class:`Dataset` (name, split, class names, mean, std, augment)."""

    reader: object
    indices: np.ndarray
    class_names: list
    name: str
    split: str
    image_shape: tuple
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    augment: str = "none"
    augment_reason: str = ""
    strict_images: bool = False

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self):
        """The labels when known without decoding (folders); None for TFDS."""
        known = getattr(self.reader, "labels", None)
        return None if known is None else known[self.indices]

    def decoded_bytes(self) -> int:
        """What this set would take decoded at the model's size as uint8."""
        return len(self) * int(np.prod(self.image_shape))

    def __repr__(self) -> str:
        return (f"StreamSet({self.name!r}, {self.split!r}, {len(self)} images streamed at "
                f"{self.image_shape}, {self.num_classes} classes, augment={self.augment!r})")


def _folder_sets(root, image_shape, val_dataset, val_fraction, seed):
    files, labels, classes = _list_folder(root)
    reader = FolderReader(files, labels, image_shape[2])
    name = os.path.basename(os.path.normpath(root)) or root
    if val_dataset is not None:
        kind, varg = _resolve(val_dataset)
        if kind != "folder":
            raise DataError(f"streaming a folder needs a folder as val_dataset, got {val_dataset!r}")
        vfiles, vlabels, vclasses = _list_folder(varg)
        extra = sorted(set(vclasses) - set(classes))
        if extra:
            raise DataError(f"validation data {varg!r} has other classes than {name!r}: "
                            f"missing {sorted(set(classes) - set(vclasses))}, extra {extra}")
        remap = np.array([classes.index(c) for c in vclasses], np.int64)
        vlabels = remap[vlabels]
        warn_empty_classes(vlabels, classes, f"validation data {varg!r}",
                           "their accuracy is not measured")
        vreader = FolderReader(vfiles, vlabels, image_shape[2])
        vname = os.path.basename(os.path.normpath(varg)) or varg
        return (StreamSet(reader, np.arange(len(files)), classes, name, "train", image_shape),
                StreamSet(vreader, np.arange(len(vfiles)), classes, name,
                          f"val_dataset:{vname}", image_shape))
    fraction = 0.2 if val_fraction is None else val_fraction
    train_idx, val_idx = stratified_split(labels, fraction, seed)   # as the in-memory path
    _warn_val_gaps(labels[train_idx], labels[val_idx], classes, fraction)
    return (StreamSet(reader, train_idx, classes, name, "train", image_shape),
            StreamSet(reader, val_idx, classes, name, "val", image_shape))


def _tfds_reader(src: TFDSSource, split: str, channels: int) -> TFDSReader:
    if src.splits and split not in src.splits:
        raise DataError(f"TFDS dataset {src.name!r} has no {split!r} split "
                        f"(splits: {', '.join(src.splits)})")
    try:
        source = src.builder.as_data_source(split=split)
    except (NotImplementedError, ValueError, FileNotFoundError, OSError) as e:
        raise DataError(f"TFDS dataset {src.name!r} split {split!r} cannot be read at random "
                        f"(tfds.data_source needs the array_record file format: prepare it "
                        f"with file_format='array_record', or use --data-mode memory): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if len(source) == 0:
        raise DataError(f"TFDS dataset {src.name!r} split {split!r} is empty")
    directory = str(src.builder.data_dir)
    return TFDSReader(source, src.name, split, src.image_key, src.label_key, channels,
                      directory if os.path.isfile(os.path.join(directory, "dataset_info.json"))
                      else None)   # mocked data has no folder: the source itself travels


def _tfds_sets(name, image_shape, val_dataset, val_fraction, data_dir, seed):
    src = TFDSSource(name, data_dir)
    reader = _tfds_reader(src, "train", image_shape[2])
    n = len(reader)
    if val_dataset is not None:
        raise DataError("streaming a TFDS dataset takes its own test/validation split or "
                        "val_fraction, not val_dataset")
    if val_fraction is not None:   # labels are unknown without decoding: a random split
        perm = np.random.default_rng([seed, 0x5E11]).permutation(n)
        k = int(round(n * check_fraction(val_fraction)))
        if not 0 < k < n:
            raise DataError(f"val_fraction={val_fraction} of {n} examples leaves an empty split")
        return (StreamSet(reader, np.sort(perm[k:]), src.class_names, name, "train", image_shape),
                StreamSet(reader, np.sort(perm[:k]), src.class_names, name, "val", image_shape))
    split = src.eval_split()
    vreader = _tfds_reader(src, split, image_shape[2])
    return (StreamSet(reader, np.arange(n), src.class_names, name, "train", image_shape),
            StreamSet(vreader, np.arange(len(vreader)), src.class_names, name, split,
                      image_shape))


def list_stream(spec, *, image_shape, val_dataset=None, val_fraction=None, data_dir=None,
                seed: int = 0) -> tuple[StreamSet, StreamSet]:
    """``(train, eval)`` :class:`StreamSet` s of a folder or TFDS dataset, listed but not
    decoded (mean/std and augment not yet set: :func:`open_stream` does that)."""
    image_shape, seed, val_fraction = _check_split_args(image_shape, seed, val_dataset,
                                                        val_fraction)
    kind, arg = _resolve(spec)
    if kind not in ("folder", "tfds"):
        raise DataError(f"streaming reads image folders and TFDS datasets; {kind} "
                        f"({'digits' if kind == 'digits' else 'arrays'}) are held in memory: "
                        f"use --data-mode memory (or auto)")
    if image_shape[2] not in (1, 3):
        raise DataError(f"streamed images have 1 (grayscale) or 3 (RGB) channels; the model "
                        f"wants {image_shape[2]}")
    if kind == "folder":
        return _folder_sets(arg, image_shape, val_dataset, val_fraction, seed)
    return _tfds_sets(arg, image_shape, val_dataset, val_fraction, data_dir, seed)


def sample_stats(ds: StreamSet, seed: int) -> tuple[tuple, tuple, bool]:
    """``(mean, std, all_gray)`` of up to :data:`STATS_SAMPLE` training images fitted to
    the model's size (the eval transform), drawn from ``seed``: a fixed estimate, the
    same on every run and resume. Unreadable images in the sample are left out."""
    from ..images import fit_image

    rng = np.random.default_rng([check_seed(seed), 0x57A7])
    pick = np.sort(rng.choice(len(ds), size=min(STATS_SAMPLE, len(ds)), replace=False))
    shape = ds.image_shape

    def read(j):
        i = int(ds.indices[j])
        try:
            pixels, _, gray = ds.reader.read(i, draft=shape[1::-1])
            x = fit_image(pixels, shape, what=ds.reader.name(i))
            return (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x), gray
        except (ImageError, OSError):
            return None

    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        got = [r for r in pool.map(read, pick) if r is not None]
    if not got:
        raise DataError(f"dataset {ds.name!r}: none of the {len(pick)} images sampled for the "
                        f"normalisation statistics can be read")
    mean, std = channel_stats(np.stack([x for x, _ in got]))
    return mean, std, all(g for _, g in got)


def open_stream(spec, *, image_shape, val_dataset=None, val_fraction=None, data_dir=None,
                seed: int = 0, augment=None, strict_images: bool = False, listed=None
                ) -> tuple[StreamSet, StreamSet]:
    """``(train, eval)`` :class:`StreamSet` s of ``spec`` (a folder or TFDS name), with the
    normalisation estimated on a sample (:func:`sample_stats`) and the augmentation chosen
    as the in-memory path chooses it (``augment`` None or "auto": by the channels of the
    sampled files and the image size; glyph datasets never flipped). ``listed``: the
    result of :func:`list_stream` when already made."""
    train, ev = listed or list_stream(spec, image_shape=image_shape, val_dataset=val_dataset,
                                      val_fraction=val_fraction, data_dir=data_dir, seed=seed)
    mean, std, all_gray = sample_stats(train, seed)
    glyphs = None
    if isinstance(train.reader, TFDSReader):
        base = train.reader.name_.split("/")[0].split(":")[0]
        if TFDS_DATASETS.get(base) == "none":
            glyphs = f"{base} holds glyphs"
    channels = 1 if all_gray else train.image_shape[2]
    try:
        name, reason = resolve_augment(augment, channels, train.image_shape[:2], glyphs=glyphs)
    except ValueError as e:
        raise DataError(str(e)) from None
    for s in (train, ev):
        s.mean, s.std, s.augment, s.augment_reason = mean, std, name, reason
        s.strict_images = bool(strict_images)
    return train, ev
