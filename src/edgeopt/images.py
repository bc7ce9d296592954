"""The one image decoder: file in, model-sized uint8 RGB pixels out, bounded in memory and time.

Used by train, optimize, classify, the device's sorting loop and its smoke test, so that every
stage sees the same pixels for the same file:
- it reads the formats of IMAGE_FORMATS and no other: the same list decides which files of a
  data folder are images, and every message that names the kinds;
- the header is read first and an image above MAX_PIXELS is refused before anything is decoded
  (a 445 KB PNG can hold 12000 x 12000 pixels: 430 MB of RGB);
- a JPEG is decoded at a reduced scale (libjpeg's DCT scaling, `draft`) when the model needs
  only a fraction of its pixels, which is also much faster;
- memory is bounded in bytes, not only in pixels: the decoded image is converted to RGB and
  reduced a strip of rows at a time (no full-size copy in another mode, no float64: 16-bit
  greyscale through a uint8 lookup table), and the decoders of a process share one byte budget
  (DECODE_BUDGET_BYTES), so eight parallel decoders of huge images wait for each other instead
  of holding eight of them at once;
- 16-bit greyscale (I;16) is scaled to 8 bits: Pillow's convert("RGB") saturates it to white;
- 32-bit integer and float greyscale are scaled by their own range;
- transparent images are composited on white (a cut-out object on an empty background);
- the EXIF orientation is applied, so a phone photo stands the way it was taken;
- a truncated file is unreadable, also when the decoder could fill it in: Pillow refuses a file
  that ends early ("image file is truncated"; ImageFile.LOAD_TRUNCATED_IMAGES stays off), and a
  JPEG whose data stops before its header's last rows (libjpeg fills those with flat grey and
  says nothing) is refused here.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeopt.errors import DataError

# The formats edgeopt reads (Pillow's names), each with the file name endings a data folder's
# images may have. One list: the folder scanner, the decoder and the messages all use it.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg"),
    "PNG": (".png",),
    "BMP": (".bmp",),
    "WEBP": (".webp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
}
IMAGE_SUFFIXES = tuple(suffix for suffixes in IMAGE_FORMATS.values() for suffix in suffixes)
# "jpg, jpeg, png, ...": what a message tells a user to put in a folder.
IMAGE_KINDS = ", ".join(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
# How an image of another aspect ratio becomes the model's input: "squash" resizes it whole (what
# edgeopt's own training does); "center-crop" cuts the largest centred part of the model's aspect
# ratio first (what torchvision's Resize + CenterCrop and many Keras pipelines do).
RESIZES = ("squash", "center-crop")
# Decoded pixels allowed per image: 50 MP is above any camera a sorting line uses (and 150 MB
# of RGB); a JPEG is measured after draft() reduced it.
MAX_PIXELS = 50_000_000
# Bytes of image data the decoders of one process hold at once. One image costing more (at most
# about 400 MB: 50 MP of RGBA held twice) is decoded alone.
DECODE_BUDGET_BYTES = 512 * 1024**2
# Pixels converted to RGB at a time: a strip of rows of about this many pixels.
STRIP_PIXELS = 1_000_000
# As Pillow's resize(reducing_gap=3.0): reduce by whole blocks while that leaves at least 3x the
# output size, then resample.
REDUCING_GAP = 3.0
# Formats whose decoder holds a second full copy of the pixels while decoding (libwebp's frame
# buffer, a TIFF strip, a GIF frame).
_BUFFERED_FORMATS = ("WEBP", "TIFF", "GIF")


class ImageError(DataError):
    """One image file cannot be used; the message names the file and the reason."""


class _ByteBudget:
    """A semaphore that counts bytes: a decoder holds what its image costs while it decodes."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        nbytes = min(nbytes, self.total)  # more than the whole budget: wait until alone
        with self._changed:
            self._changed.wait_for(lambda: self._free >= nbytes)
            self._free -= nbytes
        try:
            yield
        finally:
            with self._changed:
                self._free += nbytes
                self._changed.notify_all()


DECODE_BUDGET = _ByteBudget(DECODE_BUDGET_BYTES)

# Pillow allocates an image in blocks (16 MB by default, PILLOW_BLOCK_SIZE) with malloc. glibc
# raises its mmap threshold once such a block is freed, so later blocks come from per-thread heaps
# that keep the memory after the image is gone: eight decoding threads then hold far more than
# the budget (measured: 0.97 GB instead of 0.5). Blocks above glibc's highest threshold (32 MB)
# are always mapped, and returned when freed.
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(64 * 1024**2)


def _open_bounded(path: Path, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """The opened image (nothing decoded yet) and the size its header declares."""
    height, width = size
    with warnings.catch_warnings():
        # our own cap below replaces Pillow's DecompressionBombWarning with a clear refusal
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path, formats=list(IMAGE_FORMATS))
        except Image.DecompressionBombError as exc:  # far above our own cap: Pillow refuses first
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            megapixels = f"{int(pixels.group(1)) / 1e6:.0f} MP, " if pixels else ""
            raise ImageError(f"{path} is too large to decode safely ({megapixels}above edgeopt's limit of "
                             f"{MAX_PIXELS / 1e6:.0f} MP); downscale it") from None
    declared = img.size
    if _is_jpeg(img):
        # decode at the smallest DCT scale that still covers the model's input (at least 2x it,
        # so the final resize still averages); draft keeps the header's orientation
        img.draft("RGB", (2 * width, 2 * height))
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(
            f"{path} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), above edgeopt's limit of "
            f"{MAX_PIXELS / 1e6:.0f} MP; downscale it"
        )
    return img, declared


def _is_jpeg(img: Image.Image) -> bool:
    return img.format in ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG


def _bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel of an image in `mode`."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _reduction(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Whole-block reduction factors (x, y), as Pillow's resize with REDUCING_GAP takes them."""
    (w, h), (height, width) = size, target
    return int(w / width / REDUCING_GAP) or 1, int(h / height / REDUCING_GAP) or 1


def _cost_bytes(img: Image.Image, target: tuple[int, int]) -> int:
    """The bytes decoding `img` holds at most: the decoded image (twice for the formats that
    buffer it, and while a transposition copies it), a strip's conversions, the reduced RGB."""
    w, h = img.size
    copies = 2 if img.format in _BUFFERED_FORMATS else 1
    if "exif" in img.info:  # may hold an orientation: transposed in place, a copy meanwhile
        copies += 1  # (img.getexif() would decode a PNG here, before the budget is held)
    fx, fy = _reduction(img.size, target)
    strip = 4 * min(w * h, STRIP_PIXELS + w * fy) * 4  # a crop, RGBA, a composite, RGB
    return w * h * _bytes_per_pixel(img.mode) * copies + strip + 4 * math.ceil(w / fx) * math.ceil(h / fy)


def _refuse_grey_fill(img: Image.Image, path: Path, declared: tuple[int, int]) -> None:
    """libjpeg decodes a JPEG whose data stops early (a cut file that still ends with an EOI
    marker, a header that claims more rows than the data holds) by filling every block it lacks
    with flat grey, and Pillow does not say so: a bottom row of that grey is refused."""
    w, h = img.size
    bottom = np.asarray(img.crop((0, h - 1, w, h)))
    if bottom.size and int(bottom.min()) == int(bottom.max()) and int(bottom.min()) in (127, 128):
        raise ImageError(
            f"{path} is not a readable image: truncated, its JPEG data stops before the {declared[0]}x{declared[1]} "
            "pixels its header declares (the decoder would fill the rest with flat grey)"
        )


def _to_rgb(img: Image.Image, extrema: tuple[float, float] | None) -> Image.Image:
    """One strip in any mode as 8-bit RGB. `extrema`: the whole image's range, for 32-bit modes."""
    mode = img.mode
    if mode.startswith("I;16"):
        eight = _SIXTEEN_TO_EIGHT[np.asarray(img).astype(np.uint16, copy=False)]
        return Image.fromarray(eight, "L").convert("RGB")
    if mode in ("I", "F"):
        low, high = extrema or (0.0, 0.0)
        values: np.ndarray = np.asarray(img, dtype=np.float32 if mode == "F" else np.int64)
        grey: np.ndarray
        if high > low:
            if mode == "I":  # exact integers, rounded half up
                grey = (2 * 255 * (values - int(low)) + int(high - low)) // (2 * int(high - low))
            else:
                grey = np.rint(np.nan_to_num(values - np.float32(low)) * np.float32(255.0 / (high - low)))
        else:
            grey = np.zeros_like(values)
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _center_box(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of the largest centred box of the target's aspect ratio."""
    height, width = size
    w, h = image_size
    if w * height > h * width:  # wider than the target: cut the sides
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        return left, 0, left + keep, h
    keep = max(1, round(w * height / width))
    top = (h - keep) // 2
    return 0, top, w, top + keep


# 16-bit value -> 8 bits, rounded: round(v / 257) (65535 = 255 * 257; no value falls on a half).
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)


def _to_model_size(img: Image.Image, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """RGB pixels of size (height, width) from `box` of the image (the whole image when None), made
    a strip of rows at a time: each strip converted to RGB and reduced by whole blocks, then the
    reduced image resampled -- the same pixels as converting the box to RGB and calling
    resize(reducing_gap=REDUCING_GAP), without a full-size copy in any other mode."""
    height, width = size
    left, upper, right, lower = box or (0, 0, *img.size)
    w, h = right - left, lower - upper
    fx, fy = _reduction((w, h), size)
    extrema = img.getextrema() if img.mode in ("I", "F") else None
    rows = fy * max(1, STRIP_PIXELS // (w * fy))  # whole blocks, so strips reduce as the whole image does
    reduced = Image.new("RGB", (math.ceil(w / fx), math.ceil(h / fy)))
    for top in range(0, h, rows):
        strip = _to_rgb(img.crop((left, upper + top, right, upper + min(h, top + rows))), extrema)  # type: ignore[arg-type]
        reduced.paste(strip.reduce((fx, fy)) if (fx, fy) != (1, 1) else strip, (0, top // fy))
    if reduced.size == (width, height):
        return reduced
    if (fx, fy) == (1, 1):
        return reduced.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    return reduced.resize((width, height), Image.Resampling.BILINEAR, box=(0, 0, w / fx, h / fy))


def load_pixels(path: Path | str, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Decode one image file to uint8 RGB pixels of size (height, width), the whole image squashed
    to that size or its centre cropped to the aspect ratio first (`resize`, one of RESIZES).

    Raises ImageError (a DataError) when the file is not a readable image, truncated or too large.
    """
    path = Path(path)
    try:
        img, declared = _open_bounded(path, size)
        with img, DECODE_BUDGET.hold(_cost_bytes(img, size)):
            img.load()  # decode now, so a truncated file fails here
            if _is_jpeg(img):
                _refuse_grey_fill(img, path, declared)
            ImageOps.exif_transpose(img, in_place=True)
            if resize not in RESIZES:
                raise ValueError(f"resize {resize!r} is not one of {', '.join(RESIZES)}")
            rgb = _to_model_size(img, size, _center_box(img.size, size) if resize == "center-crop" else None)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not a readable image (not one of the kinds edgeopt reads: {IMAGE_KINDS})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow raises OSError for truncated data, SyntaxError for some broken headers
        if "truncated" in str(exc):
            raise ImageError(f"{path} is not a readable image: truncated ({exc})") from None
        raise ImageError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from None
    return np.asarray(rgb, dtype=np.uint8)
