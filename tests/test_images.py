"""zoo.images: fitting batches to a model's input, weight transforms, prepare and display."""
import numpy as np
import pytest
from PIL import Image

from zoo import images


def test_fit_pads_resizes_and_converts_channels():
    rng = np.random.default_rng(0)
    mnist_like = rng.integers(1, 256, size=(4, 28, 28, 1), dtype=np.uint8)
    padded = images.fit_images(mnist_like, (32, 32, 1))     # LeNet's 32x32 field: pad 2 px
    assert padded.dtype == np.uint8 and padded.shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], mnist_like)
    assert padded[:, :2].max() == 0 and padded[:, :, 30:].max() == 0

    # A constant image stays constant through any resize; a wide one is centre-cropped.
    wide = np.zeros((1, 20, 40, 3), np.uint8)
    wide[:, :, 10:30] = 200
    out = images.fit_images(wide, (32, 32, 3))
    assert out.shape == (1, 32, 32, 3)
    assert out[0, :, 4:28].min() == 200 and out.max() == 200   # the centre 20 columns fill it

    # The NumPy matrix path and the Pillow path implement the same filter.
    floats = rng.random((3, 24, 30, 2), dtype=np.float32)
    for size in ((64, 64), (10, 12)):
        batch = images._resize_batch(floats, *size)
        for i in range(3):
            np.testing.assert_allclose(batch[i], images._resize_pil(floats[i], *size), atol=2e-5)

    rgb = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    gray = images.fit_images(rgb, (16, 16, 1))
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(gray[..., 0] - luma).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(images.fit_images(gray, (16, 16, 3)), np.repeat(gray, 3, -1))


def test_channels_gray_rgb_rgba_and_clear_errors():
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 7
    assert images.convert_channels(rgba, 3).shape == (5, 6, 3)
    gray = images.convert_channels(rgba, 1)
    assert gray.dtype == np.uint8 and int(gray.max()) == 76   # 0.299 * 255, rounded
    with pytest.raises(images.ImageError, match="cannot convert 2-channel images to the model's 3"):
        images.convert_channels(np.zeros((2, 2, 2), np.uint8), 3, what="pets")


def test_prepare_resizes_the_shorter_side_normalises_and_display_undoes_it():
    photo = images.load_image("coffee")           # 400 x 600, shipped with scikit-image
    assert photo.shape == (400, 600, 3) and photo.dtype == np.uint8
    x = images.prepare(photo, channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), size=48)
    assert x.shape == (48, 72, 3) and x.dtype == np.float32
    shown = images.display(x, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    small = np.asarray(Image.fromarray(photo).resize((72, 48), Image.BILINEAR, reducing_gap=None))
    np.testing.assert_allclose(shown, small / 255.0, atol=1e-6)
    inverted = images.prepare(photo[..., 0], channels=1, mean=0.0, std=1.0, invert=True)
    np.testing.assert_allclose(inverted[..., 0], 1.0 - photo[..., 0] / 255.0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no image at nowhere.png"):
        images.load_image("nowhere.png")


def test_transforms_resize_crop_and_fit():
    t = images.Transforms(resize=32, crop=24, mean=(0.0,) * 3, std=(1.0,) * 3)
    photo = images.load_image("astronaut")       # 512 x 512
    out = t(photo)
    assert out.shape == (24, 24, 3) and 0.0 <= out.min() and out.max() <= 1.0
    fit = images.Transforms(crop=16, mean=(0.5,), std=(0.5,), fit=True)
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3:5] = 255
    y = fit(digit, channels=1)
    assert y.shape == (16, 16, 1) and y.min() == -1.0 and y.max() > 0.9
    with pytest.raises(images.ImageError, match="smaller than the 24x24 crop"):
        images.Transforms(resize=16, crop=24)(photo)
