"""Where images come from: the digits that ship with scikit-learn, arrays, image folders,
TFDS (:mod:`.tfds`); and :func:`load`, which reads one into train and evaluation
:class:`Dataset` s fitted to the model's input."""
from __future__ import annotations

import concurrent.futures
import os
import warnings

import numpy as np

from ..images import (ImageError, as_image_array, check_image_shape, fit_image, fit_images,
                      image_extensions, open_image)
from .augment import AUTO, AUGMENTATIONS, resolve_augment
from .dataset import (DataError, Dataset, ImageFileError, Part, channel_stats,
                      check_fraction, check_labels, check_memory, check_seed, stratified_split,
                      warn_empty_classes)
from .tfds import TFDS_DATASETS, TFDS_PREFIX, TFDSSource

#: Names accepted by :func:`load` besides paths and ``"tfds:NAME"``.
DATASET_CHOICES: list[str] = ["digits", *TFDS_DATASETS]


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


def _digits(image_shape) -> Part:
    images, labels = _digits_arrays()
    check_memory((len(images), *image_shape), np.float32, "digits")
    images = (images / 16.0)[..., None]     # (1797, 8, 8, 1) float32 in [0, 1]
    return Part(fit_images(images, image_shape, what="digits"), labels,
                [str(k) for k in range(10)], "all", source_channels=1)


def _arrays(spec, image_shape, role: str = "train") -> Part:
    if len(spec) != 2:
        raise DataError(f"an array dataset is a pair (images, labels), got {len(spec)} items")
    images = np.asarray(spec[0])
    if images.ndim != 4:
        hint = (" (for grayscale images add a channel axis: images[..., None])"
                if images.ndim == 3 else "")
        raise DataError(f"images must be a 4-D array (N, H, W, C), got shape "
                        f"{images.shape}{hint}")
    if len(images) == 0:
        raise DataError("the array dataset is empty")
    labels = check_labels(spec[1], len(images))     # before anything is sized by them
    if min(images.shape[1:]) < 1:
        raise DataError(f"images must be non-empty, got shape {images.shape}")
    check_memory((len(images), *image_shape), np.uint8 if images.dtype in (np.uint8, np.bool_)
                 else np.float32, "arrays")
    images = as_image_array(images, "images")
    if role == "train" and labels.min() == labels.max():
        raise DataError(f"the array dataset has only one class (every label is "
                        f"{int(labels[0])}); a classifier needs at least two")
    names = [str(k) for k in range(int(labels.max()) + 1)]
    if role == "train":   # validation arrays are matched to the training classes instead
        warn_empty_classes(labels, names, "arrays", "labels imply one class per value 0..max, "
                           "and a class without examples gets no training signal; a typo?")
    return Part(fit_images(images, image_shape, what="images"), labels, names, "all",
                source_channels=1 if images.shape[-1] in (1, 2) else 3)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _class_folders(root: str) -> list[str]:
    """Sorted class subfolder names; refuses classes that are the same or nested folders
    (by real path: links), or a link back to the dataset folder (a loop)."""
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root!r} does not exist or is not a folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"dataset folder {root!r} has no class subfolders: put the images of "
                        "each class in a subfolder named after the class")
    if len(classes) == 1:
        raise DataError(f"dataset folder {root!r} has only one class subfolder "
                        f"({classes[0]!r}); a classifier needs at least two")
    real_root = os.path.realpath(root)
    # sorted with a trailing separator, a folder's subfolders follow it: nesting is adjacent
    reals = sorted((os.path.join(os.path.realpath(os.path.join(root, c)), ""), c)
                   for c in classes)
    for real, c in reals:
        if _is_within(real_root, real.rstrip(os.sep) or os.sep):
            raise DataError(f"dataset folder {root!r}: class folder {c!r} links back to the "
                            f"dataset folder or above it ({real.rstrip(os.sep) or os.sep}), a loop")
    for (outer, a), (inner, b) in zip(reals, reals[1:]):
        if inner.startswith(outer):
            raise DataError(f"dataset folder {root!r}: class folders {a!r} and {b!r} are the "
                            "same folder or one holds the other (through a link); an image "
                            "has one class")
    return classes


def _list_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(files, labels, class names) of a folder with one subfolder per class. Links are
    followed once per real path: a folder already walked, one of another class or above
    the class folder (a loop) is ignored, a file reached twice counts once; both warn."""
    classes = _class_folders(root)
    class_reals = [os.path.realpath(os.path.join(root, c)) for c in classes]
    extensions = image_extensions()
    files, labels, skipped, ignored, errors = [], [], [], [], []
    for k, name in enumerate(classes):
        class_dir, own = os.path.join(root, name), class_reals[k]
        seen_dirs, seen_files, found = {own}, set(), []
        for dirpath, dirnames, filenames in os.walk(class_dir, onerror=errors.append,
                                                    followlinks=True):
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in seen_dirs or _is_within(own, real) or any(
                        _is_within(real, other) for other in class_reals if other != own):
                    ignored.append(os.path.join(dirpath, d))
                    continue
                seen_dirs.add(real)
                keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                if f.startswith("."):       # .DS_Store, AppleDouble ._x.jpg, editors' files
                    continue
                path = os.path.join(dirpath, f)
                real = os.path.realpath(path)
                if real in seen_files:
                    ignored.append(path)
                    continue
                seen_files.add(real)
                (found if os.path.splitext(f)[1].lower() in extensions else skipped).append(path)
        if errors:
            e = errors[0]
            raise DataError(f"cannot list {e.filename}: {e.strerror or e}") from None
        if not found:
            raise DataError(f"class folder {class_dir!r} contains no images (files Pillow "
                            "reads: .png, .jpg, .bmp, .gif, .tif, .webp, ...)")
        files += found
        labels += [k] * len(found)
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not images, e.g. "
                      f"{skipped[0]}", stacklevel=3)
    if ignored:
        warnings.warn(f"{root}: ignored {len(ignored)} link(s) to a folder or file already "
                      f"included, to another class or back up the tree (a loop), e.g. "
                      f"{ignored[0]}", stacklevel=3)
    return files, np.asarray(labels, np.int64), classes


#: unreadable files a warning or an error names before "and N more"
NAMED_FILES = 3


def _folder(root: str, image_shape, strict_images: bool = False) -> Part:
    """Every image of the folder, read and fitted. Unreadable image files (empty,
    truncated, damaged, not an image) are skipped with one warning that counts and names
    them, or with ``strict_images`` an :class:`ImageFileError`; a folder left without
    images, or a class left empty, is an error either way. ``Part.source_channels`` is 1
    when every image file is grayscale."""
    if image_shape[2] not in (1, 3):
        raise DataError(f"image folders give 1 (grayscale) or 3 (RGB) channels; the model "
                        f"wants {image_shape[2]}")
    files, labels, classes = _list_folder(root)
    check_memory((len(files), *image_shape), np.uint8, f"dataset folder {root!r}")
    images = np.empty((len(files), *image_shape), np.uint8)
    gray = np.zeros(len(files), bool)
    failed: list[tuple[int, str]] = []
    mode = {1: "L", 3: "RGB"}[image_shape[2]]

    def read(i: int) -> None:
        try:
            im = open_image(files[i], draft=image_shape[1::-1])
            gray[i] = im.mode == "L"
            pixels = np.asarray(im.convert(mode))
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
            images[i] = fit_image(pixels, image_shape, what=files[i])
        except (ImageError, OSError) as e:
            failed.append((i, str(e)))

    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:   # Pillow releases the GIL
        list(pool.map(read, range(len(files))))
    if failed:
        failed.sort()
        named = "; ".join(why for _, why in failed[:NAMED_FILES])
        more = f"; and {len(failed) - NAMED_FILES} more" if len(failed) > NAMED_FILES else ""
        head = f"{len(failed)} of {len(files)} image files in {root} cannot be read"
        if strict_images or len(failed) == len(files):
            hint = ("" if strict_images else " (none is left)")
            raise ImageFileError(f"{head}{hint}; fix or remove them: {named}{more}")
        keep = np.ones(len(files), bool)
        keep[[i for i, _ in failed]] = False
        counts = np.bincount(labels[keep], minlength=len(classes))
        if np.any(counts == 0):
            empty = [classes[k] for k in np.flatnonzero(counts == 0)]
            raise ImageFileError(f"{head}, leaving class folder(s) {empty} without an image; "
                                 f"fix or remove them: {named}{more}")
        warnings.warn(f"{head} and are skipped ({int(keep.sum())} images remain; "
                      f"--strict-images makes this an error): {named}{more}", stacklevel=4)
        images, labels, gray = images[keep], labels[keep], gray[keep]
    return Part(images, labels, classes, "all", source_channels=1 if gray.all() else 3)


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
    if spec.startswith(TFDS_PREFIX) and spec[len(TFDS_PREFIX):]:
        return "tfds", spec[len(TFDS_PREFIX):]
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return "folder", path
    if spec.split("/")[0].split(":")[0] in TFDS_DATASETS:   # "mnist", "emnist/letters", ...
        return "tfds", spec
    if os.sep in spec or "/" in spec or spec.startswith((".", "~")):
        if os.path.exists(path):
            raise DataError(f"dataset folder {spec!r} is a file, not a folder of class "
                            "subfolders")
        raise DataError(f"dataset folder {spec!r} does not exist")
    raise DataError(f"unknown dataset {spec!r}; choose from: {', '.join(DATASET_CHOICES)}, "
                    f"'tfds:NAME' for any other TFDS image classification dataset, or a "
                    f"folder path (one subfolder of images per class)")


def _read_source(kind: str, arg, image_shape, data_dir, *, role: str,
                 strict_images: bool = False) -> tuple[Part, Part | None, tuple[str, str]]:
    """(train part, natural eval part or None, the default augmentation and why). ``role``
    "val" reads only what serves as evaluation data: a folder's or arrays' images, a TFDS
    eval split. The default never flips single-channel sources or glyph datasets."""
    if kind == "tfds":
        source = TFDSSource(arg, data_dir)
        auto = source.default_augment(image_shape[:2])
        if role == "val":
            return source.read(source.eval_split(), image_shape), None, auto
        return source.read("train", image_shape), source, auto
    part = (_digits(image_shape) if kind == "digits" else
            _arrays(arg, image_shape, role) if kind == "arrays" else
            _folder(arg, image_shape, strict_images))
    channels = part.source_channels or part.images.shape[-1]
    return part, None, resolve_augment(AUTO, channels, image_shape[:2])


def _dataset_name(kind: str, arg) -> str:
    if kind == "folder":
        return os.path.basename(os.path.normpath(arg)) or str(arg)
    return {"digits": "digits", "arrays": "arrays"}.get(kind, str(arg))


def _check_split_args(image_shape, seed, val_dataset, val_fraction):
    """``(image_shape, seed, val_fraction)`` checked, as every reader of a dataset takes them."""
    image_shape, seed = check_image_shape(image_shape), check_seed(seed)
    if val_fraction is not None:
        val_fraction = check_fraction(val_fraction)
    if val_dataset is not None and val_fraction is not None:
        raise DataError("give either val_dataset or val_fraction, not both")
    return image_shape, seed, val_fraction


def load(spec: str | tuple[np.ndarray, np.ndarray] = "digits", *,
         image_shape: tuple[int, int, int], val_dataset: str | None = None,
         val_fraction: float | None = None, data_dir: str | None = None, seed: int = 0,
         augment: str | None = AUTO, strict_images: bool = False) -> tuple[Dataset, Dataset]:
    """``(train, eval)`` datasets fitted to ``image_shape`` (H, W, C).

    ``spec``: ``"digits"``, a TFDS name (:data:`DATASET_CHOICES`, or ``"tfds:NAME"``), a
    folder path with one subfolder per class, or an ``(images, labels)`` pair of arrays.
    Evaluation data: ``val_dataset`` (another source with the same class names: a folder,
    arrays, or a TFDS name whose test/validation split is used), else a stratified
    ``val_fraction`` of the training data, else the natural held-out part (digits: a 20%
    stratified split; TFDS: "test", or "validation" when there is no test split; folders
    and arrays: 20%). Splits depend on ``seed`` only. ``augment``: one of
    :data:`AUGMENTATIONS`, or ``"auto"``/None for the default (:func:`.augment.choose_augment`
    on the source's own channels and the input size; glyph datasets never flipped); the
    choice and why are ``Dataset.augment``/``augment_reason``. ``strict_images``: an
    unreadable file in a folder is an error instead of skipped with a warning.
    A string naming an existing folder is a folder even if
    it is also a TFDS name; ``"tfds:NAME"`` forces TFDS. Bad input raises
    :class:`DataError` (a ValueError) with a message for the user.
    """
    image_shape, seed, val_fraction = _check_split_args(image_shape, seed, val_dataset,
                                                        val_fraction)
    if augment not in (None, AUTO, *AUGMENTATIONS):
        raise DataError(f"augment must be one of {(AUTO, *AUGMENTATIONS)}, got {augment!r}")
    if not isinstance(strict_images, (bool, np.bool_)):
        raise DataError(f"strict_images is a switch (True/False), got {strict_images!r}")

    kind, arg = _resolve(spec)
    name = _dataset_name(kind, arg)
    train, natural, auto = _read_source(kind, arg, image_shape, data_dir, role="train",
                                        strict_images=bool(strict_images))
    if len(np.unique(train.labels)) < 2 and kind != "folder":
        raise DataError(f"dataset {name!r} has only one class (every label is "
                        f"{int(train.labels[0])}); a classifier needs at least two")

    if val_dataset is not None:
        vkind, varg = _resolve(val_dataset)
        if kind == vkind == "folder" and os.path.realpath(arg) == os.path.realpath(varg):
            warnings.warn(f"val_dataset {varg!r} is the training folder itself: evaluation "
                          "measures accuracy on training images", stacklevel=2)
        val, _, _ = _read_source(vkind, varg, image_shape, data_dir, role="val",
                                 strict_images=bool(strict_images))
        val = _align_classes(val, train.class_names, _dataset_name(vkind, varg), name)
        val.split = f"val_dataset:{_dataset_name(vkind, varg)}"
    elif val_fraction is not None or natural is None:
        fraction = 0.2 if val_fraction is None else val_fraction
        train_idx, val_idx = stratified_split(train.labels, fraction, seed)
        split = "test" if kind == "digits" and val_fraction is None else "val"
        val = Part(train.images[val_idx], train.labels[val_idx], train.class_names, split)
        train = Part(train.images[train_idx], train.labels[train_idx], train.class_names,
                      "train")
        _warn_val_gaps(train.labels, val.labels, train.class_names, fraction)
    else:
        val = natural.read(natural.eval_split(), image_shape)
    train.split = "train"

    mean, std = channel_stats(train.images)
    augment, reason = auto if augment in (None, AUTO) else resolve_augment(augment, 0, 0)

    def make(part: Part) -> Dataset:
        return Dataset(images=part.images, labels=part.labels.astype(np.int32),
                       class_names=list(train.class_names), name=name, mean=mean, std=std,
                       augment=augment, split=part.split, augment_reason=reason)

    return make(train), make(val)


def _warn_val_gaps(train_labels, val_labels, class_names, fraction: float) -> None:
    """One warning when a class with training examples has none in the split-off part."""
    missing = np.setdiff1d(np.unique(train_labels), np.unique(val_labels))
    if len(missing):
        warnings.warn(f"val_fraction={fraction} leaves {len(missing)} of {len(class_names)} "
                      f"classes without a validation example (e.g. {class_names[missing[0]]!r}): "
                      "their accuracy is not measured; use a larger val_fraction or "
                      "val_dataset", stacklevel=3)


def _align_classes(val: Part, class_names: list[str], val_name: str, name: str) -> Part:
    """Relabel ``val`` to ``class_names`` (matched by name). A class of ``val`` the
    training data lacks is an error; a training class that ``val`` lacks warns."""
    used = [val.class_names[k] for k in np.unique(val.labels)]
    extra = sorted(set(used) - set(class_names))
    if extra:
        missing = sorted(set(class_names) - set(val.class_names))
        raise DataError(f"validation data {val_name!r} has other classes than {name!r}: "
                        f"missing {missing}, extra {extra}")
    index = {c: k for k, c in enumerate(class_names)}
    remap = np.array([index.get(c, -1) for c in val.class_names], np.int64)   # -1: unused
    labels = remap[val.labels]
    warn_empty_classes(labels, class_names, f"validation data {val_name!r}",
                       "their accuracy is not measured")
    return Part(val.images, labels, list(class_names), val.split)
