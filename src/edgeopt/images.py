"""The one image decoder: file in, model-sized uint8 RGB pixels out, bounded in memory and time.

Used by train, optimize, classify, the device's sorting loop and its smoke test, so that every
stage sees the same pixels for the same file:
- the header is read first and an image above MAX_PIXELS is refused before anything is decoded
  (a 445 KB PNG can hold 12000 x 12000 pixels: 430 MB of RGB);
- a JPEG is decoded at a reduced scale (libjpeg's DCT scaling, `draft`) when the model needs
  only a fraction of its pixels, which is also much faster;
- 16-bit greyscale (I;16) is scaled to 8 bits: Pillow's convert("RGB") saturates it to white;
- 32-bit integer and float greyscale are scaled by their own range;
- transparent images are composited on white (a cut-out object on an empty background);
- the EXIF orientation is applied, so a phone photo stands the way it was taken.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeopt.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# How an image of another aspect ratio becomes the model's input: "squash" resizes it whole (what
# edgeopt's own training does); "center-crop" cuts the largest centred part of the model's aspect
# ratio first (what torchvision's Resize + CenterCrop and many Keras pipelines do).
RESIZES = ("squash", "center-crop")
# Decoded pixels allowed per image: 50 MP is above any camera a sorting line uses (and 150 MB
# of RGB); a JPEG is measured after draft() reduced it.
MAX_PIXELS = 50_000_000


class ImageError(DataError):
    """One image file cannot be used; the message names the file and the reason."""


def _open_bounded(path: Path, size: tuple[int, int]) -> Image.Image:
    height, width = size
    with warnings.catch_warnings():
        # our own cap below replaces Pillow's DecompressionBombWarning with a clear refusal
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:  # far above our own cap: Pillow refuses first
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            megapixels = f"{int(pixels.group(1)) / 1e6:.0f} MP, " if pixels else ""
            raise ImageError(f"{path} is too large to decode safely ({megapixels}above edgeopt's limit of "
                             f"{MAX_PIXELS / 1e6:.0f} MP); downscale it") from None
    if img.format == "JPEG":
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
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            grey = values / 257.0
        else:  # 32-bit int or float: its own range decides
            low, high = float(values.min()), float(values.max())
            grey = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def _center_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The largest centred box of the target's aspect ratio."""
    height, width = size
    w, h = img.size
    if w * height > h * width:  # wider than the target: cut the sides
        keep = max(1, round(h * width / height))
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    keep = max(1, round(w * height / width))
    top = (h - keep) // 2
    return img.crop((0, top, w, top + keep))


def load_pixels(path: Path | str, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Decode one image file to uint8 RGB pixels of size (height, width), the whole image squashed
    to that size or its centre cropped to the aspect ratio first (`resize`, one of RESIZES).

    Raises ImageError (a DataError) when the file is not a readable image or too large.
    """
    path = Path(path)
    height, width = size
    try:
        with _open_bounded(path, size) as img:
            img.load()  # decode now, so a truncated file fails here
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
            if resize == "center-crop":
                rgb = _center_crop(rgb, size)
            elif resize != "squash":
                raise ValueError(f"resize {resize!r} is not one of {', '.join(RESIZES)}")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow raises OSError for truncated data, SyntaxError for some broken headers
        raise ImageError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from None
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)
