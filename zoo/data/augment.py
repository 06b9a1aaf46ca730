"""Training augmentations, one example at a time, and the rule that picks the default.

Every function takes an (H, W, C) array, uint8 0..255 or float32 in [0, 1], and a
``np.random.Generator``; the draws come from that generator only, so a caller that keys it
by ``(seed, epoch, index)`` (:func:`example_rng`) gets the same augmentation whatever the
batching, sharding or worker count. NumPy and Pillow only.

``"none"``
    the image as it is: glyphs (digits, letters) and any single-channel data, where a
    flipped glyph is another glyph.
``"crop_flip"`` (CIFAR; He et al. 2016)
    zero-pad by ``max(1, min(H, W) // 8)`` pixels, crop back to H x W at a random offset,
    flip left-right with probability 1/2.
``"random_resized_crop"`` (ImageNet; Szegedy et al. 2015, as torchvision)
    a box of area fraction ~ U(0.08, 1) and log aspect ratio ~ U(log 3/4, log 4/3), ten
    attempts, else the central crop with the ratio clamped; resized to the output size by
    Pillow's BILINEAR filter (antialiased when shrinking, as torchvision on PIL images;
    uint8 through Pillow's 8-bit path, float32 channel by channel in mode "F"); then the
    left-right flip with probability 1/2.
"""
from __future__ import annotations

import math

import numpy as np

AUGMENTATIONS = ("none", "crop_flip", "random_resized_crop")
#: what ``augment="auto"`` (the default) resolves with :func:`choose_augment`
AUTO = "auto"
#: the largest input side (pixels) that gets crop_flip rather than random_resized_crop
CROP_FLIP_MAX_SIZE = 64
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
#: the third key of :func:`example_rng`: apart from the permutation's and the batches' keys
_EXAMPLE_STREAM = 2


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of example ``index`` (its position in the epoch's order) in ``epoch``
    of a run seeded ``seed``: the same three numbers always give the same draws."""
    return np.random.default_rng([int(seed), int(epoch), _EXAMPLE_STREAM, int(index)])


def choose_augment(channels: int, image_size) -> tuple[str, str]:
    """``(augmentation, reason)`` for data of ``channels`` channels at the model's input
    ``image_size`` (an int or (H, W)): single-channel -> none, RGB at most
    :data:`CROP_FLIP_MAX_SIZE` px -> crop_flip, larger RGB -> random_resized_crop."""
    side = max(image_size) if isinstance(image_size, (tuple, list)) else int(image_size)
    if int(channels) == 1:
        return "none", "single-channel images: a flipped glyph is another glyph"
    if side <= CROP_FLIP_MAX_SIZE:
        return "crop_flip", f"RGB images at {side} px <= {CROP_FLIP_MAX_SIZE}: pad, crop and flip"
    return ("random_resized_crop",
            f"RGB images at {side} px > {CROP_FLIP_MAX_SIZE}: random resized crop and flip")


def resolve_augment(augment, channels: int, image_size, *, glyphs: str | None = None
                    ) -> tuple[str, str]:
    """``(augmentation, reason)``: ``augment`` as given (one of :data:`AUGMENTATIONS`), or
    for ``None``/``"auto"`` the default: ``"none"`` when ``glyphs`` names why the source
    must never be flipped (e.g. "mnist holds glyphs"), else :func:`choose_augment`."""
    if augment not in (None, AUTO, *AUGMENTATIONS):
        raise ValueError(f"augment must be one of {(AUTO, *AUGMENTATIONS)}, got {augment!r}")
    if augment not in (None, AUTO):
        return augment, "chosen with --augment"
    if glyphs:
        return "none", f"{glyphs}: a flipped glyph is another glyph"
    return choose_augment(channels, image_size)


# ----------------------------------------------------------------------------------------
# crop_flip

def crop_flip_pad(height: int, width: int) -> int:
    """The zero padding of crop_flip: max(1, min(H, W) // 8) pixels (4 at 32x32)."""
    return max(1, min(int(height), int(width)) // 8)


def apply_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    """The crop of ``image`` zero-padded by :func:`crop_flip_pad` at offset (dy, dx) in
    0..2*pad, of the image's own size, flipped left-right when ``flip``."""
    h, w = image.shape[:2]
    pad = crop_flip_pad(h, w)
    padded = np.pad(image, ((pad, pad), (pad, pad)) + ((0, 0),) * (image.ndim - 2))
    crop = padded[dy:dy + h, dx:dx + w]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def crop_flip(image: np.ndarray, rng: np.random.Generator, *, flip: bool = True
              ) -> np.ndarray:
    """crop_flip of one (H, W, C) image; draws dy, dx, then the flip (when ``flip``)."""
    pad = crop_flip_pad(*image.shape[:2])
    dy = int(rng.integers(0, 2 * pad + 1))
    dx = int(rng.integers(0, 2 * pad + 1))
    flipped = bool(rng.random() < 0.5) if flip else False
    return apply_crop_flip(image, dy, dx, flipped)


# ----------------------------------------------------------------------------------------
# random_resized_crop

def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` by torchvision's ``RandomResizedCrop.get_params`` rule: ten
    attempts of area fraction ~ U(scale) and log(w/h) ~ U(log ratio) that fit the image,
    else the whole image's central crop with its ratio clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bilinear(image: np.ndarray, size) -> np.ndarray:
    """``image`` (H, W, C) resized to ``size`` (an int or (H, W)) by Pillow's BILINEAR
    (antialiased when shrinking); uint8 stays uint8, float32 is resized in mode "F"."""
    from PIL import Image

    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
    if image.shape[:2] == (out_h, out_w):
        return image
    if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
        im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out = np.asarray(im.resize((out_w, out_h), Image.BILINEAR))
        return out.reshape(out_h, out_w, image.shape[-1])
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F")
                        .resize((out_w, out_h), Image.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(chans, axis=-1).astype(image.dtype)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size=None, *,
                        scale=RRC_SCALE, ratio=RRC_RATIO, flip: bool = True) -> np.ndarray:
    """random_resized_crop of one (H, W, C) image, or a Pillow image (cropped and resized
    before any array is made, as torchvision does: the same pixels, less work), to ``size``
    (int or (H, W); default the image's own): the box (:func:`random_resized_crop_box`), the
    bilinear resize, then a left-right flip with probability 1/2 (drawn after the box, when
    ``flip``)."""
    if not isinstance(image, np.ndarray):
        return _random_resized_crop_pil(image, rng, size, scale=scale, ratio=ratio, flip=flip)
    h, w = image.shape[:2]
    size = (h, w) if size is None else size
    top, left, ch, cw = random_resized_crop_box(h, w, rng, scale=scale, ratio=ratio)
    out = resize_bilinear(np.ascontiguousarray(image[top:top + ch, left:left + cw]), size)
    if flip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    return out


def _random_resized_crop_pil(im, rng, size, *, scale, ratio, flip) -> np.ndarray:
    from PIL import Image

    h, w = im.height, im.width
    out_h, out_w = (h, w) if size is None else (
        (size, size) if isinstance(size, (int, np.integer)) else size)
    top, left, ch, cw = random_resized_crop_box(h, w, rng, scale=scale, ratio=ratio)
    crop = im.crop((left, top, left + cw, top + ch))
    if (ch, cw) != (out_h, out_w):
        crop = crop.resize((out_w, out_h), Image.BILINEAR)
    out = np.asarray(crop)
    out = out[..., None] if out.ndim == 2 else out
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def augment_example(name: str, image: np.ndarray, rng: np.random.Generator, size=None
                    ) -> np.ndarray:
    """Augmentation ``name`` of one image. random_resized_crop resizes its box to ``size``
    (default the image's); none and crop_flip keep the image's size (fit it first)."""
    if name == "crop_flip":
        return crop_flip(image, rng)
    if name == "random_resized_crop":
        return random_resized_crop(image, rng, size)
    if name == "none":
        return image
    raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTATIONS}")
