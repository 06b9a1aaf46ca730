"""Bad input to the data path: labels and arrays (class 5, absurd sizes refused before
anything is allocated) and image files (class 7: every Pillow mode read right, unreadable
files named, links followed once). Each case asserts the exception type and that the
message names the problem; no case compiles a model."""
import math
import os
import re
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import zoo.cli
from zoo import data, images, registry
from zoo.data import DataError, Dataset, ImageFileError
from zoo.data import dataset as dataset_module
from zoo.images import ImageError


def _gray(n=6, size=8, dtype=np.uint8):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, size=(n, size, size, 1))).astype(dtype)


def _floats(n=6, size=8):
    return np.random.default_rng(0).random((n, size, size, 1), dtype=np.float32)


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


# ---- class 5: labels and arrays given to zoo.data.load --------------------------------------

LABEL_CASES = [
    ("c5-label-1e9", _gray(3), [0, 1, 10**9], DataError,
     r"label 1000000000 at index 2 is out of range for MAX_CLASSES"),
    ("c5-label-1e12-float", _gray(3), np.array([0.0, 1.0, 1e12]), DataError,
     r"label 1000000000000\.0 at index 2 is out of range"),
    ("c5-label-max-classes", _gray(3), [0, registry.MAX_CLASSES, 1], DataError,
     r"label 1000000 at index 1 .*0\.\.999999"),
    ("c5-label-uint64-max", _gray(3), np.array([0, 1, 2**64 - 1], np.uint64), DataError,
     r"label 18446744073709551615 at index 2"),
    ("c5-label-python-huge", _gray(3), np.array([0, 1, 10**30], object), DataError,
     r"labels must be integers 0\.\.K-1, got Python objects"),
    ("c5-label-negative", _gray(3), [0, 1, -1], DataError,
     r"labels must be >= 0, found -1 at index 2"),
    ("c5-label-fraction", _gray(3), [0.0, 1.5, 1.0], DataError,
     r"whole numbers, found 1\.5 at index 1"),
    ("c5-label-nan", _gray(3), [0.0, math.nan, 1.0], DataError,
     r"whole numbers, found nan at index 1"),
    ("c5-label-inf", _gray(3), [0.0, 1.0, math.inf], DataError,
     r"whole numbers, found inf at index 2"),
    ("c5-label-bool", _gray(3), [True, False, True], DataError,
     r"integers 0\.\.K-1, got dtype bool"),
    ("c5-label-strings", _gray(3), ["cat", "dog", "cat"], DataError,
     r"got strings such as \['cat', 'dog', 'cat'\].*np\.unique"),
    ("c5-label-complex", _gray(3), np.array([0, 1, 1], complex), DataError,
     r"got dtype complex128"),
    ("c5-label-onehot", _gray(3), np.eye(3, dtype=int), DataError,
     r"1-D array \(N,\), got shape \(3, 3\).*argmax"),
    ("c5-label-column", _gray(3), np.array([[0], [1], [1]]), DataError,
     r"1-D array \(N,\), got shape \(3, 1\).*reshape"),
    ("c5-label-scalar", _gray(3), np.int64(1), DataError, r"1-D array \(N,\), got shape \(\)"),
    ("c5-label-length", _gray(3), [0, 1], DataError,
     r"differ in length: 3 images, 2 labels"),
    ("c5-label-one-class", _gray(3), [2, 2, 2], DataError,
     r"only one class \(every label is 2\)"),
    ("c5-images-empty", _gray(0), np.zeros(0, int), DataError, r"the array dataset is empty"),
    ("c5-images-nan", _with(_floats(3), (1, 2, 3, 0), np.nan), [0, 1, 1], ImageError,
     r"1 value\(s\) are NaN or infinite, the first at index \(1, 2, 3, 0\)"),
    ("c5-images-inf", _with(_floats(3), (2, 0, 0, 0), -np.inf), [0, 1, 1], ImageError,
     r"NaN or infinite, the first at index \(2, 0, 0, 0\)"),
    ("c5-images-float-0-255", _floats(3) * 255, [0, 1, 1], ImageError,
     r"float images must lie in \[0, 1\], found values in \[.*\].*divide by 255"),
    ("c5-images-uint16", _with(_gray(3, dtype=np.uint16), (0, 0, 0, 0), 4000), [0, 1, 1],
     ImageError,
     r"integer images must lie in 0\.\.255, found 0\.\.4000.*65535"),
    ("c5-images-negative-int", _with(_gray(3, dtype=np.int16), (0, 0, 0, 0), -3), [0, 1, 1],
     ImageError,
     r"integer images must lie in 0\.\.255, found -3\.\."),
    ("c5-images-complex", _gray(3).astype(complex), [0, 1, 1], ImageError,
     r"real numbers .*got dtype complex128"),
    ("c5-images-strings", np.full((3, 8, 8, 1), "x"), [0, 1, 1], ImageError,
     r"real numbers .*got dtype <U1"),
    ("c5-images-2d", np.zeros((3, 64), np.uint8), [0, 1, 1], DataError,
     r"4-D array \(N, H, W, C\), got shape \(3, 64\)"),
    ("c5-images-zero-width", np.zeros((3, 8, 0, 1), np.uint8), [0, 1, 1], DataError,
     r"non-empty, got shape \(3, 8, 0, 1\)"),
]


@pytest.mark.parametrize("images_, labels, exc, match",
                         [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_bad_arrays_are_refused_before_allocating(images_, labels, exc, match):
    start = time.perf_counter()
    with pytest.raises(exc, match=match):
        data.load((images_, labels), image_shape=(8, 8, 1))
    assert time.perf_counter() - start < 1.0      # refused at once, never after allocating


@pytest.mark.parametrize("image_shape, match", [
    pytest.param((10**9, 10**9, 1), r"sides 1\.\.16384", id="c5-image-shape-1e9"),
    pytest.param((8.5, 8, 1), r"whole numbers", id="c5-image-shape-fraction"),
    pytest.param((True, 8, 1), r"whole numbers", id="c5-image-shape-bool"),
    pytest.param((8, 8, 10**6), r"1\.\.64 channels", id="c5-image-shape-channels"),
    pytest.param((8, 8), r"\(height, width, channels\)", id="c5-image-shape-2"),
])
def test_absurd_image_shapes(image_shape, match):
    with pytest.raises(ImageError, match=match):
        data.load((_gray(4), [0, 1, 0, 1]), image_shape=image_shape)


def test_c5_memory_is_checked_before_allocating(monkeypatch, tmp_path):
    monkeypatch.setattr(dataset_module, "_memory_bytes", lambda: 2**30)   # a 1 GiB machine
    with pytest.raises(DataError, match=r"arrays: 4 images of \(8192, 8192, 3\) uint8 need "
                                        r"0\.8 GiB, over half of this machine's 1\.0 GiB"):
        data.load((_gray(4), [0, 1, 0, 1]), image_shape=(8192, 8192, 3))
    root = _write_folder(tmp_path / "pets", per_class=2)
    with pytest.raises(DataError, match=r"dataset folder .*pets.*4 images of \(8192, 8192, 3\)"):
        data.load(root, image_shape=(8192, 8192, 3))
    with pytest.raises(DataError, match=r"digits: 1797 images of \(16000, 16000, 1\) float32"):
        data.load("digits", image_shape=(16000, 16000, 1))


def test_c5_gaps_in_the_labels_warn_and_count_classes():
    with pytest.warns(UserWarning, match=r"arrays: 3 of 5 classes have no example \(e\.g\. '1'\)"
                                         r".*a typo\?"):
        train, val = data.load((_gray(8), [0, 4, 0, 4, 0, 4, 0, 4]), image_shape=(8, 8, 1))
    assert train.num_classes == 5 and set(train.labels) | set(val.labels) == {0, 4}


def test_c5_val_fraction_that_leaves_classes_out_warns():
    labels = [0] * 20 + [1] * 2 + [2] * 2
    with pytest.warns(UserWarning, match=r"val_fraction=0\.1 leaves 2 of 3 classes without a "
                                         r"validation example \(e\.g\. '1'\)"):
        data.load((_gray(24), labels), image_shape=(8, 8, 1), val_fraction=0.1)


def test_c5_val_arrays_with_an_unknown_class():
    train = (_gray(6), [0, 1, 2, 0, 1, 2])
    with pytest.raises(DataError, match=r"validation data 'arrays' has other classes .*"
                                        r"missing \[\], extra \['5'\]"):
        data.load(train, image_shape=(8, 8, 1), val_dataset=(_gray(6), [0, 1, 5, 0, 1, 2]))
    with pytest.warns(UserWarning, match=r"validation data 'arrays': 1 of 3 classes have no "
                                         r"example \(e\.g\. '2'\)"):
        _, val = data.load(train, image_shape=(8, 8, 1), val_dataset=(_gray(4), [0, 1, 0, 1]))
    assert val.num_classes == 3 and len(val) == 4


# ---- class 5: a Dataset made by hand is checked like one from load ---------------------------

def _dataset(**changes):
    fields = dict(images=_gray(4), labels=np.array([0, 1, 2, 1]), class_names=["a", "b", "c"],
                  name="hand", mean=(0.5,), std=(0.25,), split="train")
    fields.update(changes)
    return Dataset(**fields)


@pytest.mark.parametrize("changes, match", [
    pytest.param({"labels": np.array([0, 1, 3, 1])},
                 r"label 3 at index 2 is out of range for the 3 classes", id="c5-dataset-label-3"),
    pytest.param({"labels": np.array([0, -1, 2, 1])}, r">= 0, found -1 at index 1",
                 id="c5-dataset-label-negative"),
    pytest.param({"labels": np.array([0, 1, 2])}, r"differ in length: 4 images, 3 labels",
                 id="c5-dataset-label-length"),
    pytest.param({"class_names": ["a", "a", "c"]}, r"distinct strings",
                 id="c5-dataset-duplicate-names"),
    pytest.param({"class_names": []}, r"class_names must be a list of 1\.\.1000000",
                 id="c5-dataset-no-classes"),
    pytest.param({"images": _gray(4)[..., 0]}, r"4-D array .*got shape \(4, 8, 8\)",
                 id="c5-dataset-images-3d"),
    pytest.param({"images": _with(_floats(4), (3, 1, 1, 0), np.nan)},
                 r"'hand' \(train\) images: 1 value\(s\) are NaN", id="c5-dataset-images-nan"),
    pytest.param({"mean": (math.nan,)}, r"mean must be one finite value or one per channel "
                 r"\(1\), got \(nan,\)", id="c5-dataset-mean-nan"),
    pytest.param({"std": (0.0,)}, r"std must be one finite value > 0 or one per channel",
                 id="c5-dataset-std-zero"),
    pytest.param({"mean": (0.1, 0.2)}, r"mean must be one finite value or one per channel \(1\)"
                 r", got \(0\.1, 0\.2\)", id="c5-dataset-mean-2"),
    pytest.param({"std": "wide"}, r"std must be one finite value > 0 or one per channel \(1\), "
                 r"got 'wide'", id="c5-dataset-std-string"),
    pytest.param({"augment": "mixup"}, r"augment must be one of", id="c5-dataset-augment"),
])
def test_hand_made_datasets_are_checked(changes, match):
    with pytest.raises(ValueError, match=match):
        _dataset(**changes)


def test_c5_check_labels_against_a_given_class_count():
    with pytest.raises(DataError, match=r"y: label 7 at index 3 is out of range for the 5 classes"):
        data.check_labels([0, 1, 2, 7, 4], 5, num_classes=5, what="y")
    np.testing.assert_array_equal(data.check_labels([0.0, 2.0], 2), [0, 2])   # whole floats


# ---- class 7: image files --------------------------------------------------------------------

def _png_bytes(size=16, seed=0) -> bytes:
    import io
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpg_bytes(size=32) -> bytes:
    import io
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _damaged_idat(path):
    raw = bytearray(_png_bytes())
    i = raw.index(b"IDAT")
    raw[i + 10:i + 30] = b"\xff" * 20
    path.write_bytes(bytes(raw))


#: (id, file name, writer, exception of load_image, what the message says besides the name)
BAD_FILES = [
    ("c7-text-named-png", "notes.png", lambda p: p.write_text("hello, not an image"),
     ImageError, r"not an image file Pillow can read"),
    ("c7-html-named-jpg", "page.jpg", lambda p: p.write_text("<html><body>404</body></html>"),
     ImageError, r"not an image file Pillow can read"),
    ("c7-empty-file", "empty.png", lambda p: p.write_bytes(b""), ImageError,
     r"is empty \(0 bytes\)"),
    ("c7-folder-named-jpg", "x.jpg", lambda p: p.mkdir(), ImageError, r"is a folder, not an image"),
    ("c7-truncated-png", "cut.png", lambda p: p.write_bytes(_png_bytes()[:300]), ImageError,
     r"truncated"),
    ("c7-truncated-jpg", "cut.jpg", lambda p: p.write_bytes(_jpg_bytes()[:400]), ImageError,
     r"truncated"),
    ("c7-damaged-header", "head.png",
     lambda p: p.write_bytes(_png_bytes()[:16] + b"\0" * 8 + _png_bytes()[24:]), ImageError,
     r"cannot read image .*damaged header"),
    ("c7-damaged-data", "data.png", _damaged_idat, ImageError, r"damaged or unsupported"),
    ("c7-broken-link", "gone.png", lambda p: os.symlink("nowhere.png", p), FileNotFoundError,
     r"broken symbolic link .*nowhere\.png"),
    ("c7-fifo-named-png", "pipe.png", lambda p: os.mkfifo(p), ImageError,
     r"not a regular file"),
    ("c7-float-tiff-0-255", "f.tif",
     lambda p: Image.fromarray(np.full((8, 8), 200.0, np.float32)).save(p), ImageError,
     r"mode F pixels must lie in \[0, 1\], found \[200, 200\]"),
    ("c7-int32-tiff-negative", "i.tif",
     lambda p: Image.fromarray(np.full((8, 8), -5, np.int32)).save(p), ImageError,
     r"mode I pixels must lie in \[0, 65535\], found \[-5, -5\]"),
]


def _entry(how: str, path):
    if how == "load_image":
        return images.load_image(path)
    if how == "transforms":      # what zoo predict and zoo.weights.classify call
        return images.Transforms(resize=16, crop=16)(str(path))
    return images.prepare(str(path), channels=1, mean=0.5, std=0.5)   # visualize's path


@pytest.mark.parametrize("how", ["load_image", "transforms", "prepare"])
@pytest.mark.parametrize("name, write, exc, reason", [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_unreadable_image_files_are_named(tmp_path, name, write, exc, reason, how):
    path = tmp_path / name
    write(path)
    with pytest.raises(exc) as info:
        _entry(how, path)
    assert name in str(info.value) and re.search(reason, str(info.value)), str(info.value)


@pytest.mark.parametrize("name, write, exc, reason", [c[1:] for c in BAD_FILES],
                         ids=[c[0] + "-in-folder" for c in BAD_FILES])
def test_unreadable_files_in_a_folder_are_skipped_with_a_warning_or_strict_an_error(
        tmp_path, name, write, exc, reason):
    root = _write_folder(tmp_path / "pets", per_class=2)
    path = root / "cat" / name
    write(path)
    if path.is_dir():          # a folder named x.jpg is a subfolder: its contents count
        (path / "inner.png").write_text("not an image either")
        name, reason = "inner.png", r"not an image file"
    with pytest.raises(ImageFileError) as info:
        data.load(str(root), image_shape=(8, 8, 3), strict_images=True)
    msg = str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, ImageError)
    assert re.search(r"1 of 5 image files in .*pets cannot be read; fix or remove them", msg), msg
    assert name in msg and re.search(reason, msg), msg
    with pytest.warns(UserWarning, match=r"1 of 5 image files in .*pets cannot be read and are "
                                         r"skipped \(4 images remain; --strict-images") as caught:
        train, val = data.load(str(root), image_shape=(8, 8, 3), val_fraction=0.5)
    msg = next(str(w.message) for w in caught if "skipped" in str(w.message))
    assert name in msg and re.search(reason, msg), msg
    assert len(train) + len(val) == 4


def _unreadable(root, names):
    for n in names:
        (root / n).write_bytes(b"")


def test_many_unreadable_files_are_counted_and_the_first_few_named(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=6)
    _unreadable(root / "cat", [f"bad{i}.png" for i in range(5)])
    with pytest.warns(UserWarning, match=r"5 of 17 image files .* skipped \(12 images remain") \
            as caught:
        train, val = data.load(str(root), image_shape=(8, 8, 3))
    msg = next(str(w.message) for w in caught if "skipped" in str(w.message))
    assert all(f"bad{i}.png" in msg for i in range(3)) and "bad4.png" not in msg
    assert msg.endswith("and 2 more") and len(train) + len(val) == 12


def test_a_class_left_empty_by_unreadable_files_is_an_error(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=3)
    (root / "emu").mkdir()
    _unreadable(root / "emu", ["a.png", "b.jpg"])
    with pytest.raises(ImageFileError, match=r"2 of 8 image files .* cannot be read, leaving "
                                             r"class folder\(s\) \['emu'\] without an image"):
        data.load(str(root), image_shape=(8, 8, 3))


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_folder_of_only_unreadable_files_is_an_error(tmp_path, strict):
    root = tmp_path / "pets"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        _unreadable(root / c, ["x.png", "y.png"])
    with pytest.raises(ImageFileError, match=r"4 of 4 image files in .*pets cannot be read"
                                             + ("" if strict else r" \(none is left\)")):
        data.load(str(root), image_shape=(8, 8, 3), strict_images=strict)


def test_strict_images_must_be_a_switch(tmp_path):
    with pytest.raises(DataError, match=r"strict_images is a switch \(True/False\), got 'yes'"):
        data.load("digits", image_shape=(8, 8, 1), strict_images="yes")


# ---- class 7: every mode read right --------------------------------------------------------

def _save(path, image):
    image.save(path)
    return path


def test_c7_png16_reads_like_its_8bit_copy(tmp_path):
    rng = np.random.default_rng(3)
    sixteen = rng.integers(0, 65536, size=(16, 16), dtype=np.uint16)
    eight = np.rint(sixteen / 257.0).astype(np.uint8)
    p16 = _save(tmp_path / "d16.png", Image.fromarray(sixteen))
    p8 = _save(tmp_path / "d8.png", Image.fromarray(eight))
    assert Image.open(p16).mode.startswith("I")                      # really a 16-bit file
    a16, a8 = images.load_image(p16), images.load_image(p8)
    assert a16.dtype == np.uint8 and a16.shape == (16, 16)
    assert np.abs(a16 / 255.0 - a8 / 255.0).max() <= 1 / 255 + 1e-9    # never clipped to white
    x16 = images.prepare(str(p16), channels=1, mean=0.0, std=1.0)
    x8 = images.prepare(str(p8), channels=1, mean=0.0, std=1.0)
    assert np.abs(x16 - x8).max() <= 1 / 255 + 1e-6
    t = images.Transforms(crop=16, mean=(0.0,), std=(1.0,), fit=True)
    assert np.abs(t(str(p16), 1) - t(str(p8), 1)).max() <= 1 / 255 + 1e-6


def test_c7_png16_in_a_folder_reads_like_its_8bit_copy(tmp_path):
    rng = np.random.default_rng(4)
    for bits in (8, 16):
        for c in ("a", "b"):
            os.makedirs(tmp_path / str(bits) / c)
            for i in range(3):
                sixteen = rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
                array = sixteen if bits == 16 else np.rint(sixteen / 257.0).astype(np.uint8)
                Image.fromarray(array).save(tmp_path / str(bits) / c / f"{i}.png")
        rng = np.random.default_rng(4)
    loaded = [data.load(str(tmp_path / str(b)), image_shape=(8, 8, 1), val_fraction=0.34)[0]
              for b in (8, 16)]
    assert np.abs(loaded[0].images.astype(int) - loaded[1].images.astype(int)).max() <= 1
    assert (loaded[1].images == 255).mean() < 0.05                 # not clipped to white


MODES = [   # (id, image, expected (H, W) or (H, W, 3) uint8 pixels of load_image)
    ("c7-mode-1", Image.fromarray(np.eye(4, dtype=bool)), np.eye(4, dtype=np.uint8) * 255),
    ("c7-mode-L", Image.fromarray(np.full((4, 4), 77, np.uint8)), np.full((4, 4), 77)),
    ("c7-mode-I16B-tiff",
     Image.frombytes("I;16B", (4, 4), np.full((4, 4), 32896, ">u2").tobytes()),
     np.full((4, 4), 128)),
    ("c7-mode-I-tiff", Image.fromarray(np.full((4, 4), 65535, np.int32)), np.full((4, 4), 255)),
    ("c7-mode-F-tiff", Image.fromarray(np.full((4, 4), 0.5, np.float32)), np.full((4, 4), 128)),
    ("c7-mode-LA", Image.fromarray(np.dstack([np.full((4, 4), 0, np.uint8),
                                              np.full((4, 4), 0, np.uint8)]), "LA"),
     np.full((4, 4), 255)),                                       # transparent: white
    ("c7-mode-RGBA-half", Image.new("RGBA", (4, 4), (0, 0, 0, 128)), np.full((4, 4, 3), 127)),
    ("c7-mode-CMYK", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), np.tile([255, 0, 0], (4, 4, 1))),
    ("c7-mode-P", Image.new("P", (4, 4), 1), None),
    ("c7-mode-P-transparent", Image.new("P", (4, 4), 0), np.full((4, 4, 3), 255)),
]


@pytest.mark.parametrize("image, expected", [c[1:] for c in MODES], ids=[c[0] for c in MODES])
def test_c7_every_mode_reads_as_8bit_gray_or_rgb(tmp_path, image, expected):
    if image.mode == "P":
        image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        if expected is not None:
            image.info["transparency"] = 0
        else:
            expected = np.tile([10, 200, 30], (4, 4, 1))
    suffix = ".tif" if image.mode in ("I;16B", "I", "F", "CMYK") else ".png"
    path = _save(tmp_path / f"m{suffix}", image)
    pixels = images.load_image(path)
    assert pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels, expected, atol=1)
    for channels in (1, 3):   # and to the model's channels
        assert images.read_image(path, channels).shape == (4, 4, channels)


# ---- class 7: folders: links, case, hidden files -------------------------------------------

def _write_folder(root, classes=("cat", "dog"), per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_c7_symlink_loops_do_not_multiply_the_dataset(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=6)           # 12 files
    os.symlink("..", root / "cat" / "up")                           # a loop to the root
    os.symlink(".", root / "cat" / "self")                          # a loop to itself
    os.symlink(str(root / "dog"), root / "cat" / "dogs")            # into another class
    os.makedirs(root / "dog" / "sub")
    os.symlink("../..", root / "dog" / "sub" / "loop")
    os.symlink("0.png", root / "dog" / "again.png")                 # the same file twice
    with pytest.warns(UserWarning, match=r"ignored 5 link\(s\) .*a loop"):
        train, val = data.load(str(root), image_shape=(8, 8, 3))
    assert len(train) + len(val) == 12


@pytest.mark.parametrize("make, match", [
    pytest.param(lambda r: os.symlink(".", r / "zloop"), r"class folder 'zloop' links back to "
                 r"the dataset folder", id="c7-class-link-to-root"),
    pytest.param(lambda r: os.symlink("cat", r / "kitty"), r"class folders 'cat' and 'kitty' "
                 r"are the same folder", id="c7-class-link-duplicate"),
    pytest.param(lambda r: os.symlink(str(r.parent), r / "zup"), r"'zup' links back",
                 id="c7-class-link-above-root"),
    pytest.param(lambda r: [os.makedirs(r / "cat" / "sub"), os.makedirs(r / "cat-x"),
                            Image.new("L", (8, 8)).save(r / "cat-x" / "0.png"),
                            os.symlink("cat/sub", r / "kitten")],
                 r"class folders 'cat' and 'kitten' are the same folder or one holds the other",
                 id="c7-class-link-into-another"),
])
def test_c7_class_folders_that_are_links_into_the_dataset(tmp_path, make, match):
    root = _write_folder(tmp_path / "pets")
    make(root)
    with pytest.raises(DataError, match=match):
        data.load(str(root), image_shape=(8, 8, 3))


def test_c7_uppercase_extensions_count_and_hidden_files_do_not(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=3)
    Image.new("RGB", (8, 8)).save(root / "cat" / "BIG.PNG")
    Image.new("RGB", (8, 8)).save(root / "dog" / "Photo.JPG", format="JPEG")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")
    (root / "dog" / ".hidden").mkdir()
    (root / "dog" / ".hidden" / "x.png").write_text("never read")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # nothing to warn about either
        train, val = data.load(str(root), image_shape=(8, 8, 3))
    assert len(train) + len(val) == 8


def test_c7_non_image_files_are_skipped_with_one_counting_warning(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=2)
    (root / "cat" / "notes.txt").write_text("x")
    (root / "dog" / "scan.pdf").write_bytes(b"%PDF-1.4")            # Pillow writes, never reads
    with pytest.warns(UserWarning, match=r"skipped 2 file\(s\) that are not images"):
        train, val = data.load(str(root), image_shape=(8, 8, 3), val_fraction=0.5)
    assert len(train) + len(val) == 4


@pytest.mark.parametrize("make, match", [
    pytest.param(lambda r: (r / "emu").mkdir(), r"emu.*contains no images", id="c7-empty-class"),
    pytest.param(lambda r: [(r / "emu").mkdir(), (r / "emu" / "a.txt").write_text("x")],
                 r"emu.*contains no images", id="c7-class-of-text-files"),
])
def test_c7_empty_class_folders(tmp_path, make, match):
    root = _write_folder(tmp_path / "pets")
    make(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=match):
            data.load(str(root), image_shape=(8, 8, 3))


@pytest.mark.parametrize("make, match", [
    pytest.param(lambda t: t, r"missing' does not exist", id="c7-folder-missing"),
    pytest.param(lambda t: (t / "missing").write_text("x"), r"missing' is a file, not a folder",
                 id="c7-folder-is-a-file"),
    pytest.param(lambda t: [(t / "missing").mkdir(), Image.new("L", (8, 8)).save(
        t / "missing" / "a.png")], r"has no class subfolders", id="c7-folder-flat"),
    pytest.param(lambda t: [os.makedirs(t / "missing" / "only"), Image.new("L", (8, 8)).save(
        t / "missing" / "only" / "a.png")], r"only one class subfolder \('only'\)",
                 id="c7-folder-one-class"),
    pytest.param(lambda t: [os.makedirs(t / "missing" / ".git"), os.makedirs(
        t / "missing" / ".cache")], r"has no class subfolders", id="c7-folder-hidden-only"),
])
def test_c7_folders_without_classes(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(DataError, match=match):
        data.load(str(tmp_path / "missing"), image_shape=(8, 8, 1))


def test_c7_folder_needs_one_or_three_channels(tmp_path):
    root = _write_folder(tmp_path / "pets")
    with pytest.raises(DataError, match=r"1 \(grayscale\) or 3 \(RGB\) channels; the model "
                                        r"wants 2"):
        data.load(str(root), image_shape=(8, 8, 2))


def test_c7_val_dataset_that_is_the_training_folder_warns(tmp_path):
    root = _write_folder(tmp_path / "pets")
    with pytest.warns(UserWarning, match=r"is the training folder itself"):
        data.load(str(root), image_shape=(8, 8, 3), val_dataset=str(root))


def test_c7_image_arrays_of_other_kinds():
    with pytest.raises(ImageError, match=r"integer images must lie in 0\.\.255, found "
                                         r"65535\.\.65535"):
        images.prepare(np.full((8, 8), 65535, np.uint16), channels=1, mean=0.0, std=1.0)
    with pytest.raises(ImageError, match=r"float images must lie in \[0, 1\]"):
        images.Transforms(resize=8, crop=8)(np.full((8, 8, 3), 7.0))
    mask = images.prepare(np.eye(8, dtype=bool), channels=1, mean=0.0, std=1.0)
    assert mask.max() == 1.0 and mask.min() == 0.0                 # bool: 0 and 255


# ---- class 7: the command line names the file and exits 2 ---------------------------------

def _bad_png(tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(_png_bytes()[:200])
    return path


@pytest.mark.parametrize("argv", [
    pytest.param(["visualize", "scoremap", "--model", "lenet5", "--image", "{img}"],
                 id="c7-cli-scoremap"),
    pytest.param(["visualize", "scoremap", "--model", "vgg16", "--image", "{img}"],
                 id="c7-cli-scoremap-vgg16"),
    pytest.param(["visualize", "activations", "--model", "lenet5", "--layer", "conv1",
                  "--image", "{img}", "--out", "{out}"], id="c7-cli-activations"),
    pytest.param(["predict", "--weights", "lenet5.digits", "{img}"], id="c7-cli-predict"),
    pytest.param(["predict", "--weights", "lenet5.digits", "{dir}"], id="c7-cli-predict-folder"),
])
def test_c7_cli_bad_image_is_an_error_line_and_exit_2(tmp_path, capsys, argv):
    img = _bad_png(tmp_path)
    (tmp_path / "x.jpg").mkdir()
    fill = {"img": str(img), "out": str(tmp_path / "o.png"), "dir": str(tmp_path / "x.jpg")}
    code = zoo.cli.main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    name = "x.jpg" if "{dir}" in argv else "digit.png"
    assert code == 2 and err.startswith("error: ") and name in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
