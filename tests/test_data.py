"""zoo.data: sources, fitting to the model, splits, batches, augmentation, bad input."""
import dataclasses
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from zoo import data
from zoo.data import DataError


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", image_shape=(32, 32, 1), seed=0)


def _rgb_arrays(n=60, size=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    return images, labels


# ---- digits ---------------------------------------------------------------------------

def test_digits_shapes_split_and_statistics(digits):
    train, test = digits
    assert (len(train), len(test)) == (1438, 359)          # 1,797 images, ~80/20
    for ds in (train, test):
        assert ds.images.shape[1:] == (32, 32, 1) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int32 and ds.labels.shape == (len(ds),)
        assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
        assert ds.class_names == [str(k) for k in range(10)] and ds.name == "digits"
        assert ds.augment == "none"
    assert (train.split, test.split) == ("train", "test")
    # Stratified: every class keeps its share (within one image) in both splits.
    train_counts, test_counts = np.bincount(train.labels), np.bincount(test.labels)
    totals = train_counts + test_counts
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)
    # Mean/std are the train split's, copied to the test split.
    assert train.mean == pytest.approx((train.images.mean(),), abs=1e-6)
    assert train.std == pytest.approx((train.images.std(),), abs=1e-6)
    assert (test.mean, test.std) == (train.mean, train.std)
    # The embedded reader gives exactly scikit-learn's digits.
    from sklearn.datasets import load_digits
    images, labels = data.sources._digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def test_digits_split_is_deterministic_per_seed(digits):
    again = data.load("digits", image_shape=(32, 32, 1), seed=0)
    for a, b in zip(digits, again):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    other = data.load("digits", image_shape=(32, 32, 1), seed=1)
    assert not np.array_equal(other[1].images, digits[1].images)
    fraction = data.load("digits", image_shape=(8, 8, 3), val_fraction=0.5)
    assert fraction[0].images.shape[1:] == (8, 8, 3) and abs(len(fraction[1]) - 898) <= 5
    assert fraction[1].split == "val"


# ---- batches --------------------------------------------------------------------------

def test_batches_deterministic_per_seed_and_epoch(digits):
    train, test = digits
    assert data.steps_per_epoch(train, 100) == 14
    assert data.steps_per_epoch(test, 100, train=False) == 4

    def epoch(**kw):
        out = list(data.batches(train, 100, train=True, **kw))
        return np.concatenate([x for x, _ in out]), np.concatenate([y for _, y in out]), out

    x0, y0, out = epoch(seed=0, epoch=0)
    assert len(out) == 14 and all(x.shape == (100, 32, 32, 1) for x, _ in out)
    assert all(x.dtype == np.float32 and y.dtype == np.int32 for x, y in out)
    x_again, y_again, _ = epoch(seed=0, epoch=0, prefetch=0)   # no thread: same batches
    np.testing.assert_array_equal(x0, x_again)
    np.testing.assert_array_equal(y0, y_again)
    x1, y1, _ = epoch(seed=0, epoch=1)
    assert not np.array_equal(y0, y1)                           # a new order every epoch
    assert not np.array_equal(epoch(seed=1, epoch=0)[1], y0)
    # Normalised with the train statistics: about zero mean and unit variance.
    assert abs(x0.mean()) < 0.02 and abs(x0.std() - 1) < 0.02
    # mean/std overrides (the model's), one value broadcast over the channels.
    x_model = np.concatenate([x for x, _ in data.batches(train, 100, train=True, seed=0,
                                                         epoch=0, mean=0.5, std=(0.5,))])
    np.testing.assert_allclose(x_model, (x0 * train.std[0] + train.mean[0] - 0.5) / 0.5,
                               atol=1e-5)

    # Evaluation: in order, unaugmented, the last partial batch kept.
    ev = list(data.batches(test, 100, train=False, seed=0, epoch=0))
    assert [len(y) for _, y in ev] == [100, 100, 100, 59]
    np.testing.assert_array_equal(np.concatenate([y for _, y in ev]), test.labels)
    expected = (test.images - test.mean[0]) / test.std[0]
    np.testing.assert_allclose(np.concatenate([x for x, _ in ev]), expected, atol=1e-5)
    kept = list(data.batches(train, 100, train=True, seed=0, epoch=0, drop_remainder=False))
    assert len(kept[-1][1]) == 38 and sorted(np.concatenate([y for _, y in kept])) == \
        sorted(train.labels)

    # Stopping early releases the prefetch thread; errors surface in the caller.
    before = threading.active_count()
    for _ in data.batches(train, 10, train=True, seed=0, epoch=0, prefetch=1):
        break
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
    with pytest.raises(DataError, match="3 values for 1-channel"):
        data.batches(train, 10, train=True, seed=0, epoch=0, mean=(0.1, 0.2, 0.3))


def test_crop_flip_changes_images_not_labels():
    train, _ = data.load(_rgb_arrays(), image_shape=(16, 16, 3), val_fraction=0.25)
    assert train.augment == "crop_flip" and train.images.dtype == np.uint8
    plain = dataclasses.replace(train, augment="none")
    kw = dict(train=True, seed=3, epoch=2, mean=0.0, std=1 / 255)   # x = raw pixel values
    aug = list(data.batches(train, 15, **kw))
    ref = list(data.batches(plain, 15, **kw))
    changed = 0
    pad = 2                                                          # max(1, 16 // 8)
    for (xa, ya), (xr, yr) in zip(aug, ref):
        np.testing.assert_array_equal(ya, yr)                        # labels untouched
        for a, r in zip(xa, xr):
            changed += not np.array_equal(a, r)
            padded = np.pad(r, ((pad, pad), (pad, pad), (0, 0)))
            candidates = [padded[dy:dy + 16, dx:dx + 16] for dy in range(2 * pad + 1)
                          for dx in range(2 * pad + 1)]
            assert any(np.allclose(a, c, atol=1e-3) or np.allclose(a, c[:, ::-1], atol=1e-3)
                       for c in candidates)                          # a crop, maybe flipped
    assert changed >= 0.7 * sum(len(y) for _, y in aug)
    again = list(data.batches(train, 15, **kw))
    for (x1, _), (x2, _) in zip(aug, again):
        np.testing.assert_array_equal(x1, x2)
    # Evaluation batches are never augmented.
    ev = np.concatenate([x for x, _ in data.batches(train, 15, train=False, seed=3, epoch=2,
                                                    mean=0.0, std=1 / 255)])
    np.testing.assert_allclose(ev, train.images.astype(np.float32), atol=1e-3)
    # Multi-host shards: together they are the unsharded batches, augmentation included.
    shards = [list(data.batches(train, 15, num_shards=2, shard_index=k, **kw)) for k in (0, 1)]
    for (x, y), s0, s1 in zip(aug, *shards):
        np.testing.assert_array_equal(np.concatenate([s0[0], s1[0]]), x)
        np.testing.assert_array_equal(np.concatenate([s0[1], s1[1]]), y)


# ---- image folders ------------------------------------------------------------------------

def _write_folder(root, classes=("cat", "dog", "emu"), per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            # different sizes and aspect ratios; the 5th is large (resized through Pillow)
            size = (20 + 7 * i, 30 + 5 * k) if i < 4 else (150, 90)
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i == 1:
                image.convert("L").save(root / name / f"{i}.png")
            elif i == 2:
                image.save(root / name / f"{i}.jpg", quality=90)
            else:
                image.save(root / name / f"{i}.png")
    return root


def test_image_folder_loads_with_class_names_and_splits(tmp_path):
    root = _write_folder(tmp_path / "train")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()                          # hidden folders are not classes
    with pytest.warns(UserWarning, match="skipped 1 file"):
        train, val = data.load(str(root), image_shape=(32, 32, 3), val_fraction=0.4, seed=1)
    assert train.class_names == ["cat", "dog", "emu"] and train.name == "train"
    assert train.augment == "crop_flip" and train.images.dtype == np.uint8
    assert train.images.shape == (9, 32, 32, 3) and val.images.shape == (6, 32, 32, 3)
    assert np.bincount(val.labels).tolist() == [2, 2, 2]
    assert len(list(data.batches(train, 4, train=True, seed=0, epoch=0))) == 2

    other = _write_folder(tmp_path / "val", per_class=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, val = data.load(root, image_shape=(24, 24, 1), val_dataset=str(other))
    assert (len(train), len(val)) == (15, 6) and val.images.shape[1:] == (24, 24, 1)
    np.testing.assert_array_equal(val.labels, [0, 0, 1, 1, 2, 2])

    mismatched = _write_folder(tmp_path / "zoo", classes=("cat", "dog", "fox"), per_class=1)
    with pytest.raises(DataError, match=r"missing \['emu'\], extra \['fox'\]"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.load(root, image_shape=(24, 24, 3), val_dataset=str(mismatched))


# ---- bad input ----------------------------------------------------------------------------

def test_bad_folders_name_the_culprit(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=2)
    (root / "gnu").mkdir()
    with pytest.raises(DataError, match="gnu.*contains no images"):
        data.load(str(root), image_shape=(32, 32, 3))
    (root / "gnu" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"cannot read image .*gnu.broken\.png"):
        data.load(str(root), image_shape=(32, 32, 3))

    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(single / "only" / "a.png")
    with pytest.raises(DataError, match=r"single.*only one class subfolder \('only'\)"):
        data.load(str(single), image_shape=(8, 8, 3))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="flat.*no class subfolders"):
        data.load(str(tmp_path / "flat"), image_shape=(8, 8, 3))
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        data.load(str(tmp_path / "nowhere"), image_shape=(8, 8, 3))


@pytest.mark.parametrize("spec, kwargs, match", [
    ("imagenet_typo", {}, r"unknown dataset 'imagenet_typo'; choose from: digits, mnist, .*"
                          r"cifar10.*tfds:NAME.*folder path"),
    ((np.zeros((5, 8, 8, 1), np.uint8), np.zeros(4, int)), {},
     "differ in length: 5 images, 4 labels"),
    ((np.zeros((5, 8, 8), np.uint8), np.arange(5)), {}, r"4-D array .*\(5, 8, 8\).*\[\.\.\., None\]"),
    ((np.zeros((6, 8, 8, 2), np.uint8), np.arange(6) % 2), {},
     "cannot convert 2-channel images to the model's 3"),
    ((np.full((6, 8, 8, 3), 2.0), np.arange(6) % 2), {}, r"must lie in \[0, 1\]"),
    ((np.zeros((6, 8, 8, 3), np.uint8), np.zeros(6, int)), {}, "only one class"),
    ("digits", {"val_fraction": 0.0}, "val_fraction must lie strictly between 0 and 1"),
    ("digits", {"val_fraction": 1.0}, "val_fraction must lie strictly between 0 and 1"),
    ("digits", {"val_fraction": -0.5}, "val_fraction must lie strictly between 0 and 1"),
    ("digits", {"val_fraction": 0.2, "val_dataset": "x"}, "either val_dataset or val_fraction"),
    ("digits", {"image_shape": (32, 32)}, r"image_shape must be \(height, width, channels\)"),
    ("digits", {"image_shape": (0, 32, 1)}, r"image_shape must be"),
    ("digits", {"augment": "mixup"}, "augment must be one of"),
])
def test_bad_input_raises_value_error(spec, kwargs, match):
    kwargs = {"image_shape": (8, 8, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        data.load(spec, **kwargs)


def test_batch_size_larger_than_dataset(digits):
    train, test = digits
    data.check_batch_size(test, 359)
    with pytest.raises(ValueError, match=r"batch size 360 is larger than the 'digits' test "
                                         r"split \(359 images\)"):
        data.check_batch_size(test, 360)
    with pytest.raises(ValueError, match="positive integer"):
        data.check_batch_size(train, 0)
    with pytest.raises(ValueError, match="positive integer"):
        data.batches(train, -1, train=True, seed=0, epoch=0)


# ---- TFDS (one test: TensorFlow takes seconds to import) ----------------------------------

def test_tfds_mock_data_and_missing_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    data.tfds._import_tfds()          # TensorFlow's import (seconds) is not what is timed below

    # Nothing is prepared under tmp_path: a clear error at once, never a download.
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"(?s)'mnist' is not prepared.*download_and_prepare"
                                         r".*--data-dir"):
        data.load("mnist", image_shape=(32, 32, 1), data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset'"):
        data.load("tfds:no_such_dataset", image_shape=(32, 32, 1), data_dir=str(tmp_path))

    with tfds.testing.mock_data(num_examples=40):
        train, test = data.load("mnist", image_shape=(32, 32, 1), data_dir=str(tmp_path))
        assert (len(train), len(test), test.split) == (40, 40, "test")
        assert train.images.shape == (40, 32, 32, 1) and train.images.dtype == np.uint8
        assert train.augment == "none" and train.class_names == [str(k) for k in range(10)]
        assert train.images[:, :2].max() == 0                 # 28x28 padded into 32x32
        x, y = next(data.batches(train, 16, train=True, seed=0, epoch=0))
        assert x.shape == (16, 32, 32, 1) and x.dtype == np.float32 and y.dtype == np.int32
        assert data.steps_per_epoch(train, 16) == 2

        train, val = data.load("cifar10", image_shape=(32, 32, 3), val_fraction=0.25)
        assert (len(train), len(val)) == (30, 10) and train.augment == "crop_flip"
        assert len(train.class_names) == 10   # mock_data knows no label names: "0".."9"
        batches = list(data.batches(train, 8, train=True, seed=0, epoch=0))
        assert len(batches) == 3 and batches[0][0].shape == (8, 32, 32, 3)
        # RGB into a grayscale model, and a resize to a larger input.
        train, test = data.load("cifar10", image_shape=(64, 64, 1))
        assert train.images.shape == (40, 64, 64, 1) and test.images.shape == (40, 64, 64, 1)


def test_tfds_then_torchvision_in_one_process(tmp_path):
    """TensorFlow before triton (torchvision's) segfaulted; zoo.data imports triton first."""
    pytest.importorskip("torchvision")
    pytest.importorskip("tensorflow_datasets")
    code = ("import zoo.data.tfds as d; d._import_tfds(); import torchvision; print('both imported')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "both imported" in out.stdout
