"""The one image decoder: bounded, 16-bit and palette correct, upright, same pixels everywhere."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeopt.images import MAX_PIXELS, ImageError, load_pixels


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: Pillow cannot write 16-bit RGB, and a bomb needs only its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def grey16(path: Path, values: np.ndarray) -> Path:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    path.write_bytes(png_bytes(values.shape[1], values.shape[0], 16, 0, rows))
    return path


def test_16_bit_greyscale_keeps_its_tones_instead_of_turning_white(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    pixels = load_pixels(grey16(tmp_path / "ramp16.png", ramp), (8, 32))
    # the darkest column stays black, the brightest white, and the tones rise in between
    assert pixels[:, 0].max() <= 2 and pixels[:, -1].min() >= 253
    assert np.all(np.diff(pixels[0, :, 0].astype(int)) >= 0) and len(np.unique(pixels)) > 20
    assert (pixels[..., 0] == pixels[..., 1]).all()  # grey stays grey


def test_16_bit_rgb_is_scaled_to_8_bits(tmp_path):
    values = np.zeros((4, 4, 3), np.uint16)
    values[..., 0] = 60000
    values[..., 2] = 30000
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    (tmp_path / "rgb16.png").write_bytes(png_bytes(4, 4, 16, 2, rows))
    pixel = load_pixels(tmp_path / "rgb16.png", (4, 4))[0, 0]
    assert pixel.tolist() == pytest.approx([233, 0, 117], abs=1)


def test_palette_and_transparent_images_decode_like_their_rgb(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3] = (200, 30, 40)
    rgb[3:] = (10, 120, 250)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert np.abs(load_pixels(tmp_path / "p.png", (6, 6)).astype(int) - rgb).max() <= 2
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_pixels(tmp_path / "t.png", (4, 4)).min() == 255  # composited on white, not black


def test_exif_orientation_is_applied(tmp_path):
    # stored 40 wide x 20 high, left half black; orientation 6 = "rotate 90 clockwise to view"
    stored = np.full((20, 40, 3), 255, np.uint8)
    stored[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_pixels(tmp_path / "phone.jpg", (40, 20))  # (height, width): a portrait
    # rotated clockwise, the black left half becomes the top half
    assert upright[:18].mean() < 30 and upright[22:].mean() > 225


def test_a_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"  # 12000 x 12000 declared, 445 KB-style: only the header is real
    bomb.write_bytes(png_bytes(12000, 12000, 8, 0, b"\x00" * 64))
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"12000x12000 pixels \(144 MP\), above edgeopt's limit of 50 MP"):
        load_pixels(bomb, (32, 32))
    assert time.perf_counter() - started < 1.0  # refused from the header, nothing decoded
    beyond_pillow = tmp_path / "bomb14k.png"  # above Pillow's own DecompressionBombError limit
    beyond_pillow.write_bytes(png_bytes(14000, 14000, 8, 0, b"\x00" * 64))
    with pytest.raises(ImageError, match="too large|above edgeopt's limit"):
        load_pixels(beyond_pillow, (32, 32))
    assert 12000 * 12000 > MAX_PIXELS


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_picture(tmp_path):
    y, x = np.mgrid[0:3000, 0:4000]
    scene = np.stack([x * 255 // 4000, y * 255 // 3000, (x + y) * 255 // 7000], -1).astype(np.uint8)
    Image.fromarray(scene).save(tmp_path / "big.jpg", quality=90)
    with Image.open(tmp_path / "big.jpg") as full:  # the slow way: every pixel decoded
        reference = np.asarray(full.convert("RGB").resize((40, 30), Image.Resampling.BILINEAR)).astype(int)
    small = load_pixels(tmp_path / "big.jpg", (30, 40))
    assert small.shape == (30, 40, 3)
    assert np.abs(small.astype(int) - reference).max() <= 3


@pytest.mark.parametrize("content", [b"", b"this is text, not a jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_unreadable_files_raise_one_clear_error(tmp_path, content):
    path = tmp_path / "frame.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="frame.jpg is not a readable image") as err:
        load_pixels(path, (8, 8))
    assert "\n" not in str(err.value)
