"""Augmentations (zoo.data.augment): the default that never flips single-channel data (the
digit-folder regression), --augment, draws keyed by (seed, epoch, index) only,
random_resized_crop's boxes within torchvision's bounds, crop_flip one rule for the batched
and the per-example paths. One lenet5 run compiles; every other case is NumPy."""
import dataclasses
import math
import re

import numpy as np
import pytest
from PIL import Image

import zoo.cli
from zoo import data
from zoo.data import augment as A
from zoo.train import ConfigError, TrainConfig


def _digit_folder(root, per_class=20):
    """Grayscale PNGs of scikit-learn's handwritten digits, one subfolder per class."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    for k in range(10):
        (root / str(k)).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(digits.target == k)[:per_class]):
            pixels = np.rint(digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((16, 16), Image.NEAREST).save(
                root / str(k) / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    return _digit_folder(tmp_path_factory.mktemp("digits") / "handwritten")


def _rgb(n=12, size=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


RAW = dict(mean=0.0, std=1 / 255)     # batches() output = the raw pixel values


# ---- the digit-folder defect ----------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3], ids=["gray-model", "rgb-model"])
def test_a_folder_of_grayscale_digits_is_never_flipped_by_default(digit_folder, channels):
    train, val = data.load(str(digit_folder), image_shape=(32, 32, channels))
    assert len(train) + len(val) == 200 and train.class_names == [str(k) for k in range(10)]
    assert train.augment == "none" and val.augment == "none"
    assert re.search(r"single-channel images: a flipped glyph is another glyph",
                     train.augment_reason)
    x = np.concatenate([b for b, _ in data.batches(train, 40, train=True, seed=1, epoch=0,
                                                   drop_remainder=False, **RAW)])
    np.testing.assert_allclose(np.sort(x.reshape(len(x), -1), 0),
                               np.sort(train.images.reshape(len(x), -1).astype(np.float32), 0),
                               atol=1e-3)   # the images untouched, only reordered


def _is_crop(a, r, flipped: bool) -> bool:
    pad = A.crop_flip_pad(*r.shape[:2])
    h, w = r.shape[:2]
    padded = np.pad(r, ((pad, pad), (pad, pad), (0, 0)))
    return any(np.allclose(a, (c[:, ::-1] if flipped else c), atol=1e-3)
               for c in (padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
                         for dx in range(2 * pad + 1)))


def test_augment_crop_flip_on_the_digit_folder_does_flip(digit_folder):
    train, _ = data.load(str(digit_folder), image_shape=(32, 32, 1), augment="crop_flip")
    assert train.augment == "crop_flip" and train.augment_reason == "chosen with --augment"
    plain = dataclasses.replace(train, augment="none")
    kw = dict(train=True, seed=0, epoch=0, **RAW)
    flipped = 0
    for (xa, ya), (xr, yr) in zip(data.batches(train, 32, **kw), data.batches(plain, 32, **kw)):
        np.testing.assert_array_equal(ya, yr)
        assert not np.array_equal(xa, xr)
        flipped += sum(_is_crop(a, r, True) and not _is_crop(a, r, False)
                       for a, r in zip(xa, xr))
    assert flipped >= 20


def test_the_run_header_says_what_augmentation_and_why(digit_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert zoo.cli.main(["train", "--dataset", str(digit_folder), "--epochs", "1",
                         "--batch-size", "32", "--output-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "augment none (single-channel images: a flipped glyph is another glyph)" in out, out
    # augment is a setting of the run: a resume cannot change it
    code = zoo.cli.main(["train", "--resume", str(run), "--epochs", "2", "--augment",
                         "crop_flip"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(r"error: --resume .*cannot change augment \(run: 'auto', "
                                   r"given: 'crop_flip'\)", err) and "Traceback" not in err, err


# ---- the default, the setting, the flag -------------------------------------------------

@pytest.mark.parametrize("channels, size, name, why", [
    (1, 28, "none", "single-channel"), (1, 224, "none", "single-channel"),
    (3, 32, "crop_flip", "32 px <= 64"), (3, 64, "crop_flip", "64 px <= 64"),
    (3, 65, "random_resized_crop", "65 px > 64"), (3, 224, "random_resized_crop", "224 px"),
    (3, (64, 96), "random_resized_crop", "96 px > 64"),
])
def test_choose_augment(channels, size, name, why):
    chosen, reason = A.choose_augment(channels, size)
    assert chosen == name and why in reason


def test_sources_choose_by_their_own_channels_and_the_input_size(tmp_path):
    assert data.load("digits", image_shape=(32, 32, 3))[0].augment == "none"
    x, y = _rgb()
    assert data.load((x, y), image_shape=(32, 32, 3), val_fraction=0.25)[0].augment == "crop_flip"
    train, _ = data.load((x, y), image_shape=(72, 72, 3), val_fraction=0.25)
    assert train.augment == "random_resized_crop" and "72 px > 64" in train.augment_reason
    gray, _ = data.load((x[..., :1], y), image_shape=(72, 72, 3), val_fraction=0.25)
    assert gray.augment == "none"
    for k in ("a", "b"):     # one RGB file makes a folder RGB
        (tmp_path / k).mkdir()
        for i in range(3):
            Image.fromarray(x[i]).convert("L" if i or k == "a" else "RGB").save(
                tmp_path / k / f"{i}.png")
    kw = dict(image_shape=(16, 16, 3), val_fraction=0.34)
    assert data.load(str(tmp_path), **kw)[0].augment == "crop_flip"
    assert data.load(str(tmp_path), augment="none", **kw)[0].augment == "none"


def test_tfds_glyph_datasets_are_never_flipped(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        train, _ = data.load("svhn_cropped", image_shape=(32, 32, 3), val_fraction=0.5)
        assert train.augment == "none" and "svhn_cropped holds glyphs" in train.augment_reason
        train, _ = data.load("cifar10", image_shape=(72, 72, 3), val_fraction=0.5)
        assert train.augment == "random_resized_crop"


@pytest.mark.parametrize("settings, match", [
    ({"augment": "flip"}, r"--augment 'flip' is not an augmentation; choose from: auto, none, "
                          r"crop_flip, random_resized_crop"),
    ({"augment": None}, r"--augment None is not an augmentation"),
    ({"strict_images": "yes"}, r"--strict-images \(strict_images\) is a switch"),
])
def test_bad_settings_are_named(settings, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**settings).validate()


def test_bad_augment_in_the_api_and_on_the_command_line(capsys):
    with pytest.raises(data.DataError, match=r"augment must be one of \('auto', 'none', "
                                             r"'crop_flip', 'random_resized_crop'\), got 'mixup'"):
        data.load("digits", image_shape=(8, 8, 1), augment="mixup")
    code = zoo.cli.main(["train", "--augment", "mixup"])
    err = capsys.readouterr().err
    assert code == 2 and "error: argument --augment: invalid choice: 'mixup'" in err
    assert "Traceback" not in err


def test_strict_images_flag_makes_an_unreadable_file_an_error(digit_folder, tmp_path, capsys):
    import shutil
    root = shutil.copytree(digit_folder, tmp_path / "digits")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = zoo.cli.main(["train", "--dataset", str(root), "--strict-images",
                         "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"error: 1 of 201 image files in .*digits cannot be read; fix or remove "
                     r"them: cannot read image .*broken\.png", err), err


# ---- draws keyed by (seed, epoch, index) ---------------------------------------------------

@pytest.mark.parametrize("name", ["crop_flip", "random_resized_crop"])
def test_draws_depend_only_on_seed_epoch_and_index(name):
    image = _rgb(1, 40)[0][0]

    def aug(seed, epoch, index):
        return A.augment_example(name, image, A.example_rng(seed, epoch, index), (40, 40))

    first = aug(3, 1, 7)
    np.testing.assert_array_equal(first, aug(3, 1, 7))
    for other in [(4, 1, 7), (3, 2, 7), (3, 1, 8)]:
        assert any(not np.array_equal(aug(*other[:2], other[2] + k), aug(3, 1, 7 + k))
                   for k in range(4)), other


def test_random_resized_crop_batches_ignore_batching_sharding_and_prefetch():
    x, y = _rgb(20, 72)
    train, _ = data.load((x, y), image_shape=(72, 72, 3), val_fraction=0.2)
    assert train.augment == "random_resized_crop"
    kw = dict(train=True, seed=5, epoch=3, **RAW)
    whole = list(data.batches(train, 8, **kw))
    assert all(b.shape == (8, 72, 72, 3) for b, _ in whole)
    plain = list(data.batches(dataclasses.replace(train, augment="none"), 8, **kw))
    assert all(not np.array_equal(a, p) for (a, _), (p, _) in zip(whole, plain))
    small = np.concatenate([b for b, _ in data.batches(train, 4, **kw)])
    np.testing.assert_array_equal(np.concatenate([b for b, _ in whole]), small[:16])
    shards = [list(data.batches(train, 8, num_shards=2, shard_index=k, **kw)) for k in (0, 1)]
    for (b, _), s0, s1 in zip(whole, *shards):
        np.testing.assert_array_equal(np.concatenate([s0[0], s1[0]]), b)
    inline = list(data.batches(train, 8, prefetch=0, **kw))
    for (a, _), (b, _) in zip(whole, inline):
        np.testing.assert_array_equal(a, b)
    # the batched path is the per-example function at each position of the epoch's order
    order = np.random.default_rng([5, 3, 0]).permutation(len(train))
    expect = A.random_resized_crop(train.images[order[9]], A.example_rng(5, 3, 9))
    np.testing.assert_allclose(whole[1][0][1], expect.astype(np.float32), atol=1e-3)


# ---- random_resized_crop's boxes -----------------------------------------------------------

@pytest.mark.parametrize("h, w", [(224, 224), (375, 500), (500, 333), (32, 32)])
def test_random_resized_crop_boxes_obey_scale_and_ratio(h, w):
    rng = np.random.default_rng(0)
    boxes = np.array([A.random_resized_crop_box(h, w, rng) for _ in range(3000)])
    top, left, bh, bw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and \
        (left + bw <= w).all() and (bh >= 1).all() and (bw >= 1).all()
    # w and h are rounded from sqrt(area * r) and sqrt(area / r): bounds within half a pixel
    assert ((bw + 0.5) * (bh + 0.5) >= 0.08 * h * w).all()
    assert ((bw - 0.5) / (bh + 0.5) <= 4 / 3 + 1e-9).all()
    assert ((bw + 0.5) / (bh - 0.5) >= 3 / 4 - 1e-9).all()
    fraction = bw * bh / (h * w)
    assert fraction.min() < 0.1 and fraction.max() > 0.85     # the whole range is drawn
    log_ratio = np.log(bw / bh)
    assert log_ratio.min() < math.log(0.8) and log_ratio.max() > math.log(1.25)


@pytest.mark.parametrize("h, w, scale, box", [
    (100, 200, 1.0, (0, 33, 100, 133)),    # too wide for any ratio: height kept, ratio 4/3
    (200, 100, 1.0, (33, 0, 133, 100)),    # too tall: width kept, ratio 3/4
    (100, 110, 2.0, (0, 0, 100, 110)),     # no box fits, the image's ratio does: all of it
])
def test_random_resized_crop_falls_back_to_the_central_crop(h, w, scale, box):
    rng = np.random.default_rng(0)
    assert A.random_resized_crop_box(h, w, rng, scale=(scale, scale)) == box


def test_random_resized_crop_resizes_as_torchvision():
    pytest.importorskip("torch")
    F = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode
    image = _rgb(1, 97)[0][0]
    rng = np.random.default_rng(11)
    for _ in range(5):
        state = rng.bit_generator.state
        top, left, h, w = A.random_resized_crop_box(97, 97, rng)
        rng.bit_generator.state = state
        ours = A.random_resized_crop(image, rng, 48, flip=False)
        theirs = F.resized_crop(Image.fromarray(image), top, left, h, w, [48, 48],
                                InterpolationMode.BILINEAR)
        np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_random_resized_crop_of_float_and_gray_images():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (30, 40, 1), dtype=np.uint8)
    out = A.random_resized_crop(gray, np.random.default_rng(0), (20, 25))
    assert out.shape == (20, 25, 1) and out.dtype == np.uint8
    floats = gray.astype(np.float32) / 255
    out_f = A.random_resized_crop(floats, np.random.default_rng(0), (20, 25))
    assert out_f.shape == (20, 25, 1) and out_f.dtype == np.float32
    assert np.abs(out_f * 255 - out.astype(np.float32)).max() <= 1.0   # same filter, no rounding


# ---- crop_flip: one rule --------------------------------------------------------------------

def test_crop_flip_per_example_is_the_batched_rule():
    x, y = _rgb(12, 16)
    train, _ = data.load((x, y), image_shape=(16, 16, 3), val_fraction=0.25)
    assert train.augment == "crop_flip"
    seed, epoch, bs = 7, 2, 4
    got = list(data.batches(train, bs, train=True, seed=seed, epoch=epoch, **RAW))
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(train))
    pad = A.crop_flip_pad(16, 16)
    for i, (xb, _) in enumerate(got):
        rng = np.random.default_rng([seed, epoch, 1, i])
        dy, dx = rng.integers(0, 2 * pad + 1, size=bs), rng.integers(0, 2 * pad + 1, size=bs)
        flip = rng.random(size=bs) < 0.5
        for b in range(bs):
            expect = A.apply_crop_flip(train.images[order[i * bs + b]], dy[b], dx[b], flip[b])
            np.testing.assert_allclose(xb[b], expect.astype(np.float32), atol=1e-3)
    # crop_flip(image, rng) draws dy, dx, then the flip, and applies the same rule
    image = x[0]
    for s in range(20):
        rng = np.random.default_rng(s)
        dy, dx = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
        expect = A.apply_crop_flip(image, dy, dx, bool(rng.random() < 0.5))
        np.testing.assert_array_equal(A.crop_flip(image, np.random.default_rng(s)), expect)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    np.testing.assert_array_equal(A.apply_crop_flip(image, 0, 4, True),
                                  padded[0:16, 4:20][:, ::-1])
    assert A.crop_flip_pad(32, 32) == 4 and A.crop_flip_pad(6, 6) == 1


def test_crop_flip_without_flip_never_flips():
    image = _rgb(1, 16)[0][0]
    for s in range(10):
        out = A.crop_flip(image, np.random.default_rng(s), flip=False)
        assert _is_crop(out, image, False)


def test_unknown_augmentation_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown augmentation 'mixup'; choose from"):
        A.augment_example("mixup", np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"augment must be one of .*got 'flip'"):
        A.resolve_augment("flip", 3, 32)


def test_random_resized_crop_of_a_pillow_image_equals_the_array_path():
    """The streaming path crops the Pillow image before making an array: the same pixels."""
    image = np.random.default_rng(1).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    for seed in range(8):
        a = A.random_resized_crop(image, np.random.default_rng(seed), 32)
        b = A.random_resized_crop(Image.fromarray(image), np.random.default_rng(seed), 32)
        assert b.shape == (32, 32, 3) and np.array_equal(a, b)
    gray = image[..., :1]
    b = A.random_resized_crop(Image.fromarray(gray[..., 0]), np.random.default_rng(0), 16)
    assert np.array_equal(A.random_resized_crop(gray, np.random.default_rng(0), 16), b)
