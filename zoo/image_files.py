"""Image files in, 8-bit pixels out: the one reader behind :func:`zoo.images.load_image`,
the weights' transforms and the image-folder datasets.

Every Pillow mode is read as 8-bit grayscale ("L") or RGB: 16-bit and 32-bit integer
images are scaled by 255/65535 (never clipped to white), float images must lie in [0, 1],
transparency is composited over white, palette, CMYK and bilevel images are converted.
A file that is missing, a folder, a pipe, empty, truncated, damaged or not an image raises
:class:`ImageError` (FileNotFoundError when missing) naming the file. NumPy and Pillow
only; imports nothing else of the zoo.
"""
from __future__ import annotations

import os
import stat

import numpy as np

__all__ = ["WIDE_MODES", "ImageError", "check_image_file", "image_extensions", "open_image",
           "read_image", "to_8bit"]


class ImageError(ValueError):
    """An image that cannot be used as given; the message says which and why."""


#: Pillow modes of 16-bit (or wider) integer samples, read as 0..65535 and scaled by 1/65535
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_extensions() -> frozenset:
    """Lower-case extensions (".png", ".jpg", ...) of the formats Pillow can open here."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def check_image_file(path: str) -> None:
    """Raise unless ``path`` is a non-empty regular file: FileNotFoundError (missing or a
    broken link) or :class:`ImageError` (a folder, a pipe or device, an empty file)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no image at {path}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is a broken symbolic link (it points to "
                                f"{os.readlink(path)!r}, which does not exist)") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):   # a pipe or a device would block or never end
        raise ImageError(f"{path} is not a regular file (a pipe, socket or device); not read")
    if st.st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), not an image")


def _why(e: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can read (unknown format or a damaged header)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, Image.DecompressionBombError):
        return f"too many pixels to decode safely ({e})"
    text = str(e) or type(e).__name__
    if "truncated" in text.lower():
        return f"the file is truncated ({text})"
    return f"damaged or unsupported image data ({type(e).__name__}: {text})"


def to_8bit(im, what: str = "image"):
    """A PIL image of any mode as 8-bit "L" (grayscale sources) or "RGB" (colour ones).

    16-bit and 32-bit integer modes (``WIDE_MODES``) must lie in 0..65535 and are scaled
    by 255/65535, never clipped; "F" (float) must lie in [0, 1]; transparency (an alpha
    band, a palette's or a tRNS colour) is composited over white, as a viewer shows it;
    "1", "L" stay grayscale; "P", "CMYK", "YCbCr" ... become RGB."""
    from PIL import Image

    mode = im.mode
    if mode in WIDE_MODES or mode == "F":
        a = np.asarray(im, np.float64)
        lo, hi = float(np.min(a)), float(np.max(a))
        top = 65535.0 if mode in WIDE_MODES else 1.0
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= top):
            raise ImageError(f"{what}: mode {mode} pixels must lie in [0, {top:g}], found "
                             f"[{lo:g}, {hi:g}]")
        return Image.fromarray(np.rint(a * (255.0 / top)).astype(np.uint8), "L")
    bands = im.getbands()
    gray = mode in ("1", "L", "LA", "La")
    if "A" in bands or "a" in bands or "transparency" in im.info:
        a = np.asarray(im.convert("LA" if gray else "RGBA"), np.float32)
        alpha = a[..., -1:] / 255.0
        out = np.rint(a[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        return Image.fromarray(out[..., 0], "L") if gray else Image.fromarray(out, "RGB")
    target = "L" if gray else "RGB"
    return im if mode == target else im.convert(target)   # a decoded image is not copied


def open_image(path, *, draft=None):
    """The image file ``path`` as an 8-bit PIL image, "L" or "RGB" (:func:`to_8bit`),
    fully decoded. ``draft`` (width, height): let JPEG decode at a reduced scale, never
    below it. Anything unreadable raises :class:`ImageError` naming the file and why."""
    from PIL import Image

    path = os.fspath(path)
    check_image_file(path)
    try:
        with Image.open(path) as im:
            if draft is not None:
                im.draft(None, tuple(int(s) for s in draft))
            im.load()
            return to_8bit(im, path)
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a decoder of untrusted bytes may raise anything
        raise ImageError(f"cannot read image {path}: {_why(e)}; replace or remove the "
                         "file") from None


def read_image(path, channels: int | None = None, *, draft=None) -> np.ndarray:
    """uint8 (H, W, C) pixels of an image file: C = ``channels`` (1 or 3; RGB -> gray by
    ITU-R 601 luma), or the file's own (1 for grayscale, 3 for colour) when None."""
    if channels not in (None, 1, 3):
        raise ImageError(f"image files give 1 (grayscale) or 3 (RGB) channels, not {channels}")
    im = open_image(path, draft=draft)
    if channels is not None and im.mode != {1: "L", 3: "RGB"}[channels]:
        im = im.convert({1: "L", 3: "RGB"}[channels])
    array = np.asarray(im)
    return array[..., None] if array.ndim == 2 else array
