"""Images in, network-ready arrays out: one module for every path that prepares images.

- fitting a batch to a model's input (pad or resize-to-cover and centre-crop, channels
  converted): :func:`fit_images`, the rule every training source goes through;
- the preprocessing of a set of weights (:class:`Transforms`: torchvision's resize of the
  shorter side, centre crop, mean/std);
- loading a file (:mod:`zoo.image_files`: every Pillow mode, errors naming the file) or a
  scikit-image photo, resizing, normalising and back for display.

NumPy and Pillow only; imports nothing else of the zoo but :mod:`zoo.image_files`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

# the file reader's names are part of this module's surface too
from .image_files import (WIDE_MODES, ImageError, check_image_file, image_extensions,  # noqa: F401
                          open_image, read_image, to_8bit)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: photos that ship with scikit-image, loadable by name
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "camera")
_DENSE_RESIZE_MAX = 64   # sources up to this size are resized by dense matrix products
#: the largest side of a model input an image is fitted to (a larger one is a typo)
MAX_IMAGE_SIDE = 16384


# ----------------------------------------------------------------------------------------
# Fitting images to a model's input.

def check_image_shape(image_shape) -> tuple[int, int, int]:
    """(height, width, channels) as ints: whole numbers, sides 1..MAX_IMAGE_SIDE, 1..64 channels."""
    try:
        shape = tuple(image_shape)
        ok = len(shape) == 3 and all(not isinstance(s, (bool, np.bool_)) and int(s) == s
                                     for s in shape)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not (min(shape) >= 1 and max(shape[:2]) <= MAX_IMAGE_SIDE and shape[2] <= 64):
        raise ImageError(f"image_shape must be (height, width, channels) of whole numbers, "
                         f"sides 1..{MAX_IMAGE_SIDE} and 1..64 channels, got {image_shape!r}")
    return tuple(int(s) for s in shape)


def _pads_to(h: int, w: int, height: int, width: int) -> bool:
    """Whether an h x w image is zero-padded (not resized) into height x width."""
    return 0 <= height - h <= height // 8 and 0 <= width - w <= width // 8


def convert_channels(image: np.ndarray, channels: int, what: str = "image") -> np.ndarray:
    """(..., c) -> (..., channels): gray <-> RGB (ITU-R 601 luma), RGBA -> RGB or gray;
    others must match. uint8 stays uint8 (luma rounded)."""
    c = image.shape[-1]
    if c == channels:
        return image
    if c == 4 and channels in (1, 3):   # RGBA: drop alpha
        image, c = image[..., :3], 3
        if channels == 3:
            return image
    if c == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if c == 3 and channels == 1:
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if image.dtype == np.uint8:
            luma = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return luma[..., None]
    raise ImageError(f"{what}: cannot convert {c}-channel images to the model's {channels} "
                    "channel(s) (only grayscale, RGB and RGBA are converted)")


def _resample_matrix(n_in: int, n_out: int, lo: float, hi: float) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear (triangle) filter mapping the source interval
    [lo, hi) onto n_out pixels; when shrinking the filter widens by the scale factor
    (antialiasing). Rows are normalised, so borders renormalise over the pixels inside."""
    scale = (hi - lo) / n_out
    width = max(scale, 1.0)
    centers = lo + (np.arange(n_out) + 0.5) * scale
    distance = (np.arange(n_in) + 0.5)[None, :] - centers[:, None]
    weights = np.maximum(0.0, 1.0 - np.abs(distance) / width)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _cover_box(h: int, w: int, height: int, width: int) -> tuple[float, float, float, float]:
    """The centred (top, left, bottom, right) source box with the target's aspect ratio:
    resizing it to the target = resize to cover the target, then centre-crop."""
    scale = max(height / h, width / w)
    box_h, box_w = height / scale, width / scale
    return (h - box_h) / 2, (w - box_w) / 2, (h + box_h) / 2, (w + box_w) / 2


def _resize_batch(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize-to-cover + centre-crop of a batch (N, h, w, c), as two small matrix products
    per chunk; the dtype is kept (uint8 is rounded)."""
    n, h, w, c = images.shape
    top, left, bottom, right = _cover_box(h, w, height, width)
    rows = _resample_matrix(h, height, top, bottom)
    cols = _resample_matrix(w, width, left, right)
    out = np.empty((n, height, width, c), images.dtype)
    for i in range(0, n, 256):
        x = images[i:i + 256].astype(np.float32)
        y = np.tensordot(np.tensordot(x, rows, axes=([1], [1])), cols, axes=([1], [1]))
        y = y.transpose(0, 2, 3, 1)                       # (n, c, H, W) -> (n, H, W, c)
        if images.dtype == np.uint8:
            y = np.clip(np.rint(y), 0, 255)
        out[i:i + 256] = y
    return out


def _resize_pil(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The same resize for one large image, through Pillow (whose bilinear filter is the
    same triangle, widened when shrinking, evaluated only where it is non-zero)."""
    from PIL import Image

    h, w, c = image.shape
    top, left, bottom, right = _cover_box(h, w, height, width)
    mode, dtype = ("L", np.uint8) if image.dtype == np.uint8 else ("F", np.float32)
    out = np.empty((height, width, c), image.dtype)
    for k in range(c):
        plane = Image.fromarray(np.ascontiguousarray(image[..., k], dtype=dtype), mode)
        out[..., k] = np.asarray(plane.resize((width, height), Image.BILINEAR,
                                              box=(left, top, right, bottom)))
    return out


def fit_images(images: np.ndarray, image_shape: Sequence[int], *, what: str = "images"
               ) -> np.ndarray:
    """Fit a batch (N, h, w, c) of uint8 or float32-in-[0, 1] images to ``image_shape``
    (H, W, C); the dtype is kept.

    Channels are converted gray <-> RGB. Images smaller than the target by at most 1/8 of
    its size on each axis are zero-padded, centred; others are resized bilinearly
    (antialiased when shrinking) to cover the target with their aspect ratio kept, then
    centre-cropped. Small sources (at most 64 pixels a side: digits, MNIST, CIFAR) are
    resized as a batch by two NumPy matrix products; larger ones image by image through
    Pillow, which applies the same filter only where it is non-zero."""
    height, width, channels = check_image_shape(image_shape)
    if images.ndim != 4 or min(images.shape[1:]) < 1:
        hint = (" (for grayscale images add a channel axis: images[..., None])"
                if images.ndim == 3 else "")
        raise ImageError(f"{what}: expected a 4-D array (N, H, W, C) of non-empty images, "
                        f"got shape {images.shape}{hint}")
    images = convert_channels(images, channels, what)
    n, h, w, _ = images.shape
    if _pads_to(h, w, height, width):
        top, left = (height - h) // 2, (width - w) // 2
        return np.pad(images, ((0, 0), (top, height - h - top), (left, width - w - left),
                               (0, 0)))
    if max(h, w) <= _DENSE_RESIZE_MAX:
        return _resize_batch(images, height, width)
    out = np.empty((n, height, width, channels), images.dtype)
    for i in range(n):
        out[i] = _resize_pil(images[i], height, width)
    return out


def fit_image(image: np.ndarray, image_shape: Sequence[int], *, what: str = "image"
              ) -> np.ndarray:
    """:func:`fit_images` for one (h, w, c) image."""
    if image.ndim != 3:
        raise ImageError(f"{what}: expected an (H, W, C) image, got shape {image.shape}")
    return fit_images(image[None], image_shape, what=what)[0]


def as_image_array(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 stays; bool -> 0/255 (as Pillow's "1"); floats must be finite and lie in
    [0, 1] (-> float32); other integers must fit 0..255 (-> uint8)."""
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        raise ImageError(f"{what}: no images")
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(images.dtype, np.floating):
        lo, hi = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            bad = np.argwhere(~np.isfinite(images))
            raise ImageError(f"{what}: {len(bad)} value(s) are NaN or infinite, the first at "
                             f"index {tuple(int(i) for i in bad[0])}; images must be finite")
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f"{what}: float images must lie in [0, 1], found values in "
                             f"[{lo:g}, {hi:g}] (pass uint8 0..255 or divide by 255)")
        return images.astype(np.float32, copy=False)
    if np.issubdtype(images.dtype, np.integer):
        lo, hi = int(np.min(images)), int(np.max(images))
        if lo < 0 or hi > 255:
            raise ImageError(f"{what}: integer images must lie in 0..255, found {lo}..{hi} "
                             "(16-bit data: divide by 65535.0 for floats in [0, 1])")
        return images.astype(np.uint8)
    raise ImageError(f"{what}: images must be real numbers (uint8 0..255 or floats in "
                     f"[0, 1]), got dtype {images.dtype}")


# ----------------------------------------------------------------------------------------
# Single images: load, resize, normalise, display.

def load_image(spec) -> np.ndarray:
    """uint8 (H, W, 3) or (H, W) array from a file path (any mode, :func:`to_8bit`) or a
    scikit-image photo name."""
    spec = os.fspath(spec)
    if spec in SKIMAGE_PHOTOS and not os.path.lexists(spec):
        from skimage import data as skdata

        return np.asarray(getattr(skdata, spec)())
    if not os.path.lexists(spec):
        raise FileNotFoundError(f"no image at {spec} (nor a scikit-image photo: "
                                f"{', '.join(SKIMAGE_PHOTOS)})")
    return np.asarray(open_image(spec))


def _pil(image, channels: int):
    """A PIL image in mode ``L`` (1 channel) or ``RGB`` (3) from a path, a PIL image (any
    mode, :func:`to_8bit`) or an array (:func:`as_image_array`: uint8, or floats in [0, 1])."""
    from PIL import Image

    if channels not in (1, 3):
        raise ImageError(f"images are converted to 1 or 3 channels, not {channels}")
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    elif isinstance(image, Image.Image):
        image = to_8bit(image)
    else:
        array = np.asarray(image)
        if array.ndim not in (2, 3) or array.size == 0:
            raise ImageError(f"an image array must be (H, W) or (H, W, C) and non-empty, got "
                             f"shape {array.shape}")
        array = as_image_array(array, "image")
        if array.dtype != np.uint8:
            array = np.rint(array * 255.0).astype(np.uint8)
        array = convert_channels(array[..., None] if array.ndim == 2 else array, channels)
        image = Image.fromarray(array[..., 0] if channels == 1 else array)
    return image.convert({1: "L", 3: "RGB"}[channels])


_RESAMPLE = ("bilinear", "bicubic", "nearest")


def resize_shorter(image, size: int, interpolation: str = "bilinear"):
    """A PIL image resized so that its shorter side is ``size`` (the longer one truncated
    to an integer, as torchvision does), antialiased."""
    from PIL import Image

    if interpolation not in _RESAMPLE:
        raise ImageError(f"interpolation must be one of {_RESAMPLE}, got {interpolation!r}")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    if (w, h) == new:
        return image
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST}[interpolation]
    return image.resize(new, resample, reducing_gap=None)


def center_crop(image, crop: int):
    """The centre ``crop`` x ``crop`` of a PIL image (torchvision's rounding)."""
    w, h = image.size
    if w < crop or h < crop:
        raise ImageError(f"image of {w}x{h} after resizing is smaller than the {crop}x{crop} crop")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _array(image) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def normalize(array: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (or [0, 1] float) ``array`` -> float32 ``(x / 255 - mean) / std``."""
    x = np.asarray(array, np.float32)
    if np.asarray(array).dtype == np.uint8:
        x = x / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def prepare(image, *, channels: int, mean, std, size: int | None = None,
            invert: bool = False) -> np.ndarray:
    """A network-ready float32 (H, W, C) array from an image (path, PIL image, array): the
    model's channels, the shorter side resized to ``size`` (None: unchanged), scaled to
    [0, 1] (``invert``: flipped, as dark digits on paper to the white-on-black digits the
    digit models saw) and normalised with ``mean``/``std``."""
    pil = _pil(image, channels)
    if size is not None:
        pil = resize_shorter(pil, size)
    x = _array(pil).astype(np.float32) / 255.0
    if invert:
        x = 1.0 - x
    return normalize(x, mean, std)


def display(x: np.ndarray, mean=0.0, std=1.0) -> np.ndarray:
    """A normalised network input back to [0, 1] for display ((H, W) for one channel)."""
    x = np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    x = np.clip(x, 0.0, 1.0)
    return x[..., 0] if x.shape[-1] == 1 else x


# ----------------------------------------------------------------------------------------
# The preprocessing of a set of weights.

@dataclasses.dataclass(frozen=True)
class Transforms:
    """How images are prepared for a set of weights (torchvision's ``ImageClassification``
    preset): resize the shorter side to ``resize`` (``interpolation``, antialiased), centre
    crop ``crop`` x ``crop``, scale to [0, 1], normalise with ``mean``/``std``.

    ``fit=True`` (the zoo's own weights) instead fits the image to ``(crop, crop)`` with
    :func:`fit_image`, the rule the training data went through. ``transform_input`` records
    torchvision GoogLeNet's input re-normalisation; ``mean`` and ``std`` here are already
    the effective ones (its ``(x - 0.5) / 0.5``)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    transform_input: bool = False
    fit: bool = False

    def __call__(self, image, channels: int | None = None) -> np.ndarray:
        """An image (path, PIL image or array) -> float32 (crop, crop, C) normalised array."""
        channels = channels or len(self.mean)
        pil = _pil(image, channels)
        if self.fit:
            array = fit_image(_array(pil), (self.crop, self.crop, channels))
        else:
            array = _array(center_crop(resize_shorter(pil, self.resize, self.interpolation),
                                       self.crop))
        return normalize(array, self.mean, self.std)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)
