"""ImageFolder scanning, decoding, the split, and the synthetic generator."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest

from edgeopt.data.imagefolder import decode_images, scan_image_folder
from edgeopt.data.split import build_split, load_split, save_split
from edgeopt.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic, is_synthetic
from edgeopt.errors import DataError
from edgeopt.images import IMAGE_KINDS, IMAGE_SUFFIXES, load_pixels
from tests.conftest import SYNTHETIC_PER_CLASS, write_image


def test_scan_lists_classes_sorted_and_images_of_every_accepted_kind(tmp_path):
    for i, ext in enumerate(["jpg", "jpeg", "png", "bmp", "JPG"]):
        write_image(tmp_path / "b_cls" / f"img{i}.{ext}", seed=i)
    write_image(tmp_path / "a_cls" / "x.png")
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    folder = scan_image_folder(tmp_path)
    assert folder.classes == ("a_cls", "b_cls")
    assert folder.count_per_class() == {"a_cls": 1, "b_cls": 5}


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("no_classes", "found no class folders"),
        ("empty_class", "hold no images"),
        ("one_class", "only one class folder"),
    ],
)
def test_unusable_folders_give_a_fix_it_error(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout in ("empty_class", "one_class"):
        write_image(root / "cans" / "a.jpg")
    if layout == "empty_class":
        (root / "bottles").mkdir()
    with pytest.raises(DataError, match=message) as err:
        scan_image_folder(root)
    assert "\n" not in str(err.value)


def test_images_of_any_mode_and_size_decode_to_rgb_pixels(tmp_path):
    grey = write_image(tmp_path / "g.png", "L", (50, 20))
    rgba = tmp_path / "t.png"
    from PIL import Image

    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(rgba)  # fully transparent
    for path in (grey, rgba):
        px = load_pixels(path, (16, 24))
        assert px.shape == (16, 24, 3) and px.dtype == np.uint8
    assert load_pixels(rgba, (4, 4)).min() == 255  # composited on white, not black


def test_unreadable_images_are_skipped_and_counted_or_fatal_with_strict(tmp_path, caplog):
    good = write_image(tmp_path / "c" / "good.jpg", size=(64, 64))
    truncated = tmp_path / "c" / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    (tmp_path / "c" / "junk.png").write_bytes(b"not a png at all")
    items = [("c/good.jpg", 0), ("c/truncated.jpg", 0), ("c/junk.png", 0)]
    decoded = decode_images(tmp_path, items, (8, 8))
    assert decoded.pixels.shape == (1, 8, 8, 3)
    assert [s[0] for s in decoded.skipped] == ["c/truncated.jpg", "c/junk.png"]
    assert "skipped 2 unreadable image(s)" in caplog.text
    with pytest.raises(DataError, match="drop --strict"):
        decode_images(tmp_path, items, (8, 8), strict=True)


def test_split_is_stratified_disjoint_and_seeded(synthetic_dir):
    folder = scan_image_folder(synthetic_dir)
    split = build_split(folder, test_fraction=0.25, val_fraction=0.1, seed=1)
    test_counts = np.bincount([c for _, c in split.test], minlength=5)
    assert list(test_counts) == [round(SYNTHETIC_PER_CLASS * 0.25)] * 5
    sets = [set(p for p, _ in part) for part in (split.train, split.validation, split.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(s) for s in sets) == len(folder.items)
    assert build_split(folder, 0.25, 0.1, seed=1) == split
    assert build_split(folder, 0.25, 0.1, seed=2).test != split.test


def test_saved_split_finds_its_data_after_both_move_together(tmp_path, synthetic_dir):
    run = tmp_path / "run"
    shutil.copytree(synthetic_dir, run / "data")
    (run / "model").mkdir()
    split = build_split(scan_image_folder(run / "data"), seed=0)
    save_split(split, run / "model" / "split.json")
    moved = tmp_path / "elsewhere"
    run.rename(moved)
    loaded = load_split(moved / "model" / "split.json")
    assert loaded.data_root == str((moved / "data").resolve())
    assert loaded.test == split.test


def test_synthetic_set_is_deterministic_labelled_and_marked(tmp_path):
    a = generate_synthetic(tmp_path / "a", per_class=2, size=32, seed=7)
    b = generate_synthetic(tmp_path / "b", per_class=2, size=32, seed=7)
    c = generate_synthetic(tmp_path / "c", per_class=2, size=32, seed=8)

    def digest(root):
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))]

    assert digest(a) == digest(b) != digest(c)
    assert scan_image_folder(a).classes == SYNTHETIC_CLASSES
    assert is_synthetic(a) and not is_synthetic(tmp_path)


def test_images_in_subfolders_of_a_class_are_left_out_and_said(tmp_path, caplog):
    write_image(tmp_path / "cans" / "a.jpg")
    write_image(tmp_path / "cans" / "old" / "b.jpg")
    write_image(tmp_path / "bottles" / "c.jpg")
    folder = scan_image_folder(tmp_path)
    assert [p for p, _ in folder.items] == ["bottles/c.jpg", "cans/a.jpg"]
    assert "ignored 1 image(s) in subfolders" in caplog.text and "cans/old/b.jpg" in caplog.text


# What cameras and export tools write; each must be used in a data folder, not silently left out.
PHOTO_KINDS = ("jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff", "JPG", "WebP", "TIFF")


def test_every_kind_of_image_the_decoder_reads_is_used_and_counted_in_a_data_folder(tmp_path, caplog):
    assert {f".{kind.lower()}" for kind in PHOTO_KINDS} <= set(IMAGE_SUFFIXES)
    for i, kind in enumerate(PHOTO_KINDS):
        write_image(tmp_path / "cans" / f"can{i}.{kind}", seed=i)
        write_image(tmp_path / "bottles" / f"bottle{i}.{kind}", seed=100 + i)
    (tmp_path / "cans" / "notes.txt").write_text("taken on the line, Tuesday")
    (tmp_path / "cans" / "iphone.heic").write_bytes(b"not a kind edgeopt reads")
    folder = scan_image_folder(tmp_path)
    assert folder.count_per_class() == {"bottles": len(PHOTO_KINDS), "cans": len(PHOTO_KINDS)}
    decoded = decode_images(tmp_path, folder.items, (8, 8), strict=True)
    assert decoded.pixels.shape == (2 * len(PHOTO_KINDS), 8, 8, 3) and not decoded.skipped
    # what is left out is said, with the kinds that would be used
    assert "ignored 2 file(s)" in caplog.text and "cans/iphone.heic" in caplog.text and IMAGE_KINDS in caplog.text
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(f"add images ({IMAGE_KINDS})")):
        scan_image_folder(tmp_path)


def test_a_truncated_image_in_a_data_folder_is_skipped_and_counted_or_stops_strict(tmp_path, caplog):
    from tests.test_images import jpeg_claiming

    write_image(tmp_path / "c" / "good.jpg", size=(64, 64))
    jpeg_claiming(tmp_path / "c" / "claims.jpg", (7000, 7000))
    items = [("c/good.jpg", 0), ("c/claims.jpg", 0)]
    decoded = decode_images(tmp_path, items, (8, 8))
    assert decoded.paths == ("c/good.jpg",) and [s[0] for s in decoded.skipped] == ["c/claims.jpg"]
    assert "skipped 1 unreadable image(s)" in caplog.text and "truncated" in caplog.text
    with pytest.raises(DataError, match="claims.jpg is not a readable image: truncated.*drop --strict"):
        decode_images(tmp_path, items, (8, 8), strict=True)
