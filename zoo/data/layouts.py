"""Labelled evaluation sets matched to a set of weights' classes: image folders in the
ImageNet layouts and TFDS splits, listed (never decoded here) as ``(image, label)`` with the
label an index into the weights' class list.

Folder layouts (:func:`labelled_files`):

- class subfolders named by WordNet id (``n01440764``), class index (``0`` ... ``999``,
  zero-padded too) or class name (``tench``; the zoo's digit weights: ``0`` ... ``9``);
- a flat folder plus a labels file: CSV ``image,label`` (an optional header; the ImageNet
  localisation CSV's ``WNID x y x y ...`` reads as its WordNet id; an image named with or
  without its extension), or one label per line in sorted file-name order (also
  ``image label`` per line, as Caffe's ``val.txt``).

A label is an index, a WordNet id or a name (:class:`ClassIndex`); a text that two of these
read as different classes is an error, never a guess. Class sets that do not match are an
error listing the unknown names; the evaluation set may hold fewer classes than the weights.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import warnings

import numpy as np

from ..images import image_extensions
from .dataset import DataError
from .sources import _list_folder

__all__ = ["ClassIndex", "LabelledFiles", "LabelledTFDS", "labelled_files", "labelled_tfds"]

_WNID = re.compile(r"n\d{8}")
_HEADER = {"image", "images", "file", "filename", "file_name", "path", "imageid", "image_id",
           "id", "name"}
SHOW = 5   # names quoted in an error before "and N more"


def _few(items, n: int = SHOW) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


class ClassIndex:
    """The weights' classes by name, by WordNet id (when known) and by index."""

    def __init__(self, class_names, wnids=None):
        self.names = [str(n) for n in class_names]
        self.wnids = list(wnids) if wnids is not None else None
        if self.wnids is not None and len(self.wnids) != len(self.names):
            raise DataError(f"{len(self.wnids)} WordNet ids for {len(self.names)} classes")
        self.by_name: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            self.by_name.setdefault(n, []).append(i)
        self.by_wnid = {w: i for i, w in enumerate(self.wnids or ())}

    def lookup(self, text: str, what: str) -> int | None:
        """The class ``text`` names, None if none; raises when its readings disagree."""
        text = text.strip()
        found = {}
        if text in self.by_wnid:
            found[self.by_wnid[text]] = "WordNet id"
        for i in self.by_name.get(text, ()):
            found.setdefault(i, "class name")
        if text.isdigit() and int(text) < len(self.names):
            found.setdefault(int(text), "class index")
        if len(found) > 1:
            readings = " and ".join(f"the {how} of class {i} ({self.names[i]!r})"
                                    for i, how in sorted(found.items()))
            raise DataError(f"{what}: label {text!r} is ambiguous: it is {readings}; use "
                            f"labels that read one way only (never a guess)")
        return next(iter(found), None)

    def resolve(self, texts, what: str, noun: str = "labels") -> np.ndarray:
        """Class indices of ``texts``; unknown ones raise listing them (first few, count)."""
        texts = [str(t) for t in texts]
        table = {t: self.lookup(t, what) for t in dict.fromkeys(texts)}
        unknown = [t for t, i in table.items() if i is None]
        if unknown:
            raise DataError(f"{what}: {len(unknown)} of {len(table)} {noun} are not among the "
                            f"weights' {len(self.names)} classes: {_few(unknown)}; name each class by "
                            f"{self.hint()}")
        return np.array([table[t] for t in texts], np.int64)

    def hint(self) -> str:
        k = len(self.names)
        ways = [f"class index (0..{k - 1})", f"class name ({_few(self.names, 3)})"]
        if self.wnids:
            ways.insert(0, f"WordNet id ({_few(self.wnids, 2)})")
        return ", ".join(ways[:-1]) + " or " + ways[-1]


@dataclasses.dataclass
class LabelledFiles:
    """Image files and their labels (indices into the weights' classes)."""

    root: str
    files: list[str]
    labels: np.ndarray
    layout: str

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, limit: int | None) -> "LabelledFiles":
        """``limit`` files spread evenly over the listing (every class of a class-folder
        layout takes part), or all of them."""
        if limit is None or limit >= len(self.files):
            return self
        picks = (np.arange(limit) * len(self.files)) // limit
        return LabelledFiles(self.root, [self.files[i] for i in picks], self.labels[picks],
                             self.layout)


def _subfolders(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def labelled_files(root, class_names, *, wnids=None, labels=None) -> LabelledFiles:
    """The images of ``root`` with their labels as indices into ``class_names``.

    Without ``labels``: one subfolder per class, named by WordNet id (``wnids``: the ids in
    the weights' class order), class index or class name. With ``labels`` (a file): a flat
    folder and a CSV ``image,label`` (``.csv``) or one label per line in sorted file order."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"dataset folder {root!r} does not exist or is not a folder")
    index = ClassIndex(class_names, wnids)
    if labels is not None:
        return _flat(root, os.fspath(labels), index)
    if not _subfolders(root):
        raise DataError(f"dataset folder {root!r} has no class subfolders; put the images of "
                        f"each class in a subfolder named by {index.hint()}, or "
                        f"pass a labels file (--labels: CSV image,label or one label per line)")
    files, folder_labels, folders = _list_folder(root)
    remap = index.resolve(folders, f"dataset folder {root!r}", "class folders")
    kinds = {"WordNet id" if f in index.by_wnid else "class name" if f in index.by_name
             else "class index" for f in folders}
    return LabelledFiles(root, files, remap[folder_labels],
                         "class folders by " + " / ".join(sorted(kinds)))


def _flat_images(root: str, skip: str) -> list[str]:
    """Sorted image file names directly in ``root`` (hidden files ignored; other files
    counted in one warning; the labels file ``skip`` left out)."""
    extensions = image_extensions()
    names, others = [], []
    for e in os.scandir(root):
        if e.name.startswith(".") or e.is_dir() or os.path.realpath(e.path) == skip:
            continue
        (names if os.path.splitext(e.name)[1].lower() in extensions else others).append(e.name)
    if others:
        warnings.warn(f"{root}: skipped {len(others)} file(s) that are not images, e.g. "
                      f"{sorted(others)[0]}", stacklevel=4)
    if not names:
        raise DataError(f"dataset folder {root!r} holds no image files (files Pillow reads: "
                        f".png, .jpg, .bmp, .webp, ...)")
    return sorted(names)


def _read_lines(path: str) -> list[str]:
    if os.path.isdir(path):
        raise DataError(f"labels file {path!r} is a folder, not a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"labels file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"labels file {path!r} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start}); expected CSV image,label or one label per line") from None


def _csv_label(cell: str) -> str:
    """A label cell; the ImageNet localisation CSV's ``WNID x y x y ...`` is its WordNet id."""
    first, *rest = cell.split() or [""]
    return first if rest and _WNID.fullmatch(first) else cell.strip()


def _flat(root: str, labels: str, index: ClassIndex) -> LabelledFiles:
    lines = _read_lines(labels)
    names = _flat_images(root, os.path.realpath(labels))
    what = f"labels file {labels!r}"
    by_name = {n: n for n in names}
    stems: dict[str, list[str]] = {}
    for n in names:
        stems.setdefault(os.path.splitext(n)[0], []).append(n)
    by_name.update({s: ns[0] for s, ns in stems.items() if len(ns) == 1 and s not in by_name})
    rows = _csv_rows(lines, what) if labels.lower().endswith(".csv") else None
    if rows is None and lines and lines[0].strip() and lines[0].split(None, 1)[0] in by_name:
        rows = [(n, ln.split(None, 1)) for n, ln in enumerate(lines, 1) if ln.strip()]
        bad = [n for n, parts in rows if len(parts) != 2]
        if bad:
            raise DataError(f"{what}: line {bad[0]} is not 'image label' (as line 1 is)")
        rows = [(n, parts[0], parts[1].strip()) for n, parts in rows]
    if rows is None:   # one label per line, in sorted file-name order
        while lines and not lines[-1].strip():
            lines.pop()
        blank = [n for n, ln in enumerate(lines, 1) if not ln.strip()]
        if blank:
            raise DataError(f"{what}: line {blank[0]} is blank; one label per line, one line "
                            f"per image in sorted file-name order")
        if len(lines) != len(names):
            raise DataError(f"{what} has {len(lines)} labels for {len(names)} images in "
                            f"{root!r} (one label per line, in sorted file-name order: the first "
                            f"image is {names[0]!r})")
        return LabelledFiles(root, [os.path.join(root, n) for n in names],
                             index.resolve(lines, what), "flat folder + labels per line")
    seen: dict[str, int] = {}
    unknown, pairs = [], []
    for line, image, label in rows:
        name = by_name.get(image.strip())
        if name is None:
            unknown.append(image)
        elif name in seen:
            raise DataError(f"{what}: image {image!r} is labelled twice (lines {seen[name]} and "
                            f"{line}); an image has one label")
        else:
            seen[name] = line
            pairs.append((name, label))
    if unknown:
        raise DataError(f"{what} names {len(unknown)} image(s) that are not image files in "
                        f"{root!r}: {_few(unknown)}")
    if not pairs:
        raise DataError(f"{what} labels no image")
    missing = len(names) - len(pairs)
    if missing:
        warnings.warn(f"{root}: {missing} image(s) have no label in {labels} and are not "
                      f"evaluated, e.g. {sorted(set(names) - set(seen))[0]}", stacklevel=3)
    pairs.sort()
    return LabelledFiles(root, [os.path.join(root, n) for n, _ in pairs],
                         index.resolve([lb for _, lb in pairs], what), "flat folder + labels file")


def _csv_rows(lines: list[str], what: str) -> list[tuple[int, str, str]]:
    rows = []
    for line, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DataError(f"{what}: line {line} has {len(row)} field(s) ({row[0]!r}); "
                            f"expected image,label")
        if not rows and row[0].strip().lower() in _HEADER:
            rows.append(None)   # the header row
            continue
        rows.append((line, row[0], _csv_label(row[1])))
    return [r for r in rows if r is not None]


class LabelledTFDS:
    """A TFDS split read example by example (never materialised), labels remapped to the
    weights' classes. ``size`` is None when TFDS does not know it (mock data)."""

    def __init__(self, name: str, class_names, *, wnids=None, data_dir=None, split=None):
        from .tfds import TFDSSource

        self.source = src = TFDSSource(name, data_dir)
        self.name, self.split = name, split or src.eval_split()
        if src.splits and self.split not in src.splits:
            raise DataError(f"TFDS dataset {name!r} has no {self.split!r} split (splits: "
                            f"{', '.join(src.splits)})")
        self.remap = ClassIndex(class_names, wnids).resolve(
            src.class_names, f"TFDS dataset {name!r}", "classes")
        self.size = (src.builder.info.splits[self.split].num_examples
                     if self.split in src.splits else None)
        self.layout = f"TFDS {name}[{self.split}]"

    def __len__(self) -> int:
        return int(self.size or 0)

    def examples(self, limit: int | None = None):
        """``(image array, label)`` in the split's order, the first ``limit`` of them."""
        src = self.source
        ds = src.builder.as_dataset(split=self.split, shuffle_files=False)
        if limit is not None:
            ds = ds.take(limit)
        ds = ds.map(lambda ex: (ex[src.image_key], ex[src.label_key]))
        for n, (x, y) in enumerate(src.tfds.as_numpy(ds)):
            y = int(y)
            if not 0 <= y < len(self.remap):
                raise DataError(f"TFDS dataset {self.name!r} split {self.split!r}: example {n} "
                                f"has label {y}, outside 0..{len(self.remap) - 1} (a split "
                                f"without labels?); choose a labelled split with --split")
            if x.dtype == np.uint16:   # a 16-bit Image feature: scaled, never clipped
                x = (x / 65535.0).astype(np.float32)
            yield x, int(self.remap[y])


def labelled_tfds(name: str, class_names, *, wnids=None, data_dir=None, split=None
                  ) -> LabelledTFDS:
    """The TFDS split ``split`` (default: test, else validation) of ``name``, matched to
    ``class_names`` (by WordNet id, name or index); never downloads."""
    return LabelledTFDS(name, class_names, wnids=wnids, data_dir=data_dir, split=split)
