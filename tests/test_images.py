"""The one image decoder: bounded, 16-bit and palette correct, upright, same pixels everywhere."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeopt.images import DECODE_BUDGET_BYTES, IMAGE_KINDS, IMAGE_SUFFIXES, MAX_PIXELS, ImageError, load_pixels


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


def jpeg_claiming(path: Path, claimed: tuple[int, int], seed: int = 0) -> Path:
    """A 512x384 photo-like JPEG whose header says `claimed` (width, height): the data ends early."""
    y, x = np.mgrid[0:384, 0:512]
    noise = np.random.default_rng(seed).integers(-20, 20, (384, 512, 3))
    scene = np.clip(np.stack([x // 2, y * 255 // 384, (x + y) % 256], -1) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", claimed[1], claimed[0])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("claimed", [(7000, 7000), (512, 600)])
def test_a_jpeg_holding_less_than_its_header_claims_is_unreadable_not_grey(tmp_path, claimed):
    path = jpeg_claiming(tmp_path / "short.jpg", claimed)
    with pytest.raises(ImageError, match=rf"short.jpg is not a readable image: truncated.*{claimed[0]}x{claimed[1]}") as err:
        load_pixels(path, (224, 224))
    assert "\n" not in str(err.value)
    assert load_pixels(jpeg_claiming(tmp_path / "whole.jpg", (512, 384)), (224, 224)).std() > 20  # the honest one


def test_a_jpeg_cut_short_with_its_end_marker_kept_is_unreadable(tmp_path):
    whole = jpeg_claiming(tmp_path / "whole.jpg", (512, 384)).read_bytes()
    for share in (0.3, 0.9):  # a download cut short, then closed with an end-of-image marker
        (tmp_path / "cut.jpg").write_bytes(whole[: int(len(whole) * share)] + b"\xff\xd9")
        with pytest.raises(ImageError, match="cut.jpg is not a readable image: truncated"):
            load_pixels(tmp_path / "cut.jpg", (48, 48))
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])  # cut, no marker: Pillow's own refusal
    with pytest.raises(ImageError, match=r"cut.jpg is not a readable image: truncated \(image file is truncated"):
        load_pixels(tmp_path / "cut.jpg", (48, 48))


def test_every_kind_in_the_list_is_read_and_no_other(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (200, 40, 10)
    for suffix in IMAGE_SUFFIXES:
        Image.fromarray(rgb).save(tmp_path / f"a{suffix}")
        pixels = load_pixels(tmp_path / f"a{suffix}", (30, 40))
        assert np.abs(pixels[:, :16].astype(int) - (200, 40, 10)).max() <= 12 and pixels[:, 24:].max() <= 12, suffix
    Image.fromarray(rgb).save(tmp_path / "portable.ppm")  # Pillow reads it; edgeopt's list does not have it
    (tmp_path / "portable.ppm").rename(tmp_path / "disguised.png")
    with pytest.raises(ImageError, match=f"not one of the kinds edgeopt reads: {IMAGE_KINDS}"):
        load_pixels(tmp_path / "disguised.png", (30, 40))


def big_png(path: Path, color_type: int, bit_depth: int = 8, side: int = 7000) -> Path:
    """A side x side PNG of a few hundred KB: a 16-bit grey ramp (color type 0) or an RGBA pattern (6)."""
    x = np.arange(side)
    if color_type == 0:
        row = np.linspace(0, 65535, side).astype(">u2").tobytes()
    else:
        row = np.stack([x % 256, (x // 7) % 256, np.full(side, 90), (x * 3) % 256], -1).astype(np.uint8).tobytes()
    header = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0)
    compressor = zlib.compressobj(6)
    data = b"".join(compressor.compress(b"\x00" + row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


# Runs in a child: the peak resident memory of decoding the given files, with as many parallel
# decoders as files whatever this machine's cores. The address space is capped so that a decoder
# without a byte bound fails here instead of taking the machine's memory. The peak is Linux's
# VmHWM of the child's own address space: ru_maxrss would start from the parent's at the fork.
PEAK_SCRIPT = """
import json, resource, sys
from pathlib import Path
from unittest import mock
resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))
import edgeopt.data.imagefolder as imagefolder
files = [Path(p) for p in sys.argv[1:]]
with mock.patch.object(imagefolder, "usable_cores", lambda: len(files)):
    decoded = imagefolder.decode_images(files[0].parent, [(p.name, 0) for p in files], (224, 224), strict=True)
status = Path("/proc/self/status").read_text()
peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
print(json.dumps([peak, decoded.pixels.shape[0], float(decoded.pixels.std())]))
"""


def peak_decoding(files: list[Path]) -> tuple[int, int, float]:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, *map(str, files)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak, count, spread = json.loads(proc.stdout.strip().splitlines()[-1])
    return peak, count, spread


linux_only = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from Linux's /proc")


@linux_only
@pytest.mark.parametrize("color_type, bit_depth", [(0, 16), (6, 8)])
def test_decoding_a_huge_png_costs_about_its_pixels_not_gigabytes(tmp_path, color_type, bit_depth):
    # 7000x7000 in a few hundred KB: 98 MB as 16-bit grey, 196 MB as RGBA once decoded. Without a
    # byte bound these took 1.7 GB (16-bit through float64) and 1.2 GB (RGBA copies).
    path = big_png(tmp_path / "huge.png", color_type, bit_depth)
    peak, count, spread = peak_decoding([path])
    assert count == 1 and spread > 10  # the picture, not a blank
    assert peak < 450 * 1024**2, f"peak {peak / 1024**2:.0f} MB"


@linux_only
def test_parallel_decoders_share_one_byte_budget(tmp_path):
    # Six decoders at once, each on a 7000x7000 RGBA PNG (196 MB decoded): without a shared budget
    # they hold about 1.2 GB each; with it, only what fits in DECODE_BUDGET_BYTES at once.
    first = big_png(tmp_path / "huge0.png", 6)
    files = [first]
    for i in range(1, 6):
        files.append(tmp_path / f"huge{i}.png")
        files[-1].hardlink_to(first)
    peak, count, _ = peak_decoding(files)
    assert count == 6
    assert peak < DECODE_BUDGET_BYTES + 400 * 1024**2, f"peak {peak / 1024**2:.0f} MB"
