"""Output folders: --force replaces only what edgeopt wrote, and a full disk is one line with
nothing half-written left, also through the real command in a small filesystem."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.errors import DiskFullError, ModelError, OutputExistsError
from edgeopt.methods.build import _portable
from edgeopt.outputs import MARKER, staged_output
from tests.conftest import write_image


def write_output(out: Path, files: dict[str, str], force: bool = False) -> None:
    with staged_output(out, force=force, command="test") as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)


def test_the_marker_lists_every_file_edgeopt_wrote(tmp_path):
    write_output(tmp_path / "out", {"report.md": "r", "variants/f0.tflite": "m"})
    marker = json.loads((tmp_path / "out" / MARKER).read_text())
    assert marker["command"] == "test" and marker["files"] == ["report.md", "variants", "variants/f0.tflite"]


@pytest.mark.parametrize("added", ["notes.txt", "data/cans/a.jpg", "variants/mine.tflite", "variants/old/"])
def test_force_refuses_a_folder_holding_anything_edgeopt_did_not_write_and_names_it(tmp_path, added):
    out = tmp_path / "out"
    write_output(out, {"report.md": "r", "variants/f0.tflite": "m"})
    (out / added).parent.mkdir(parents=True, exist_ok=True)
    if added.endswith("/"):
        (out / added).mkdir()
    else:
        (out / added).write_text("the user's own")
    with pytest.raises(OutputExistsError, match="--force does not replace") as err:
        write_output(out, {"report.md": "new"}, force=True)
    assert added.split("/")[0] in str(err.value) and "move them out of it, or choose another --out" in str(err.value)
    assert (out / "report.md").read_text() == "r" and (out / added).exists()  # nothing replaced, nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and no staging left beside it


def test_force_replaces_an_output_holding_only_what_edgeopt_wrote(tmp_path):
    out = tmp_path / "out"
    write_output(out, {"report.md": "r", "variants/f0.tflite": "m"})
    (out / "report.md").write_text("edited by hand")  # edgeopt's file, changed: still edgeopt's
    (out / "variants" / "f0.tflite").unlink()  # removed: fine too
    write_output(out, {"report.md": "new"}, force=True)
    assert (out / "report.md").read_text() == "new" and not (out / "variants").exists()


def test_a_nested_output_is_checked_against_its_own_list(tmp_path):
    from edgeopt.outputs import check_output, mark_output

    demo = tmp_path / "demo"
    demo.mkdir()
    mark_output(demo, "demo", outputs=("data", "model"))
    write_output(demo / "data", {"cans/a.jpg": "x"})
    write_output(demo / "model", {"model.keras": "k"})
    check_output(demo, force=True)  # all edgeopt's
    (demo / "data" / "cans" / "mine.jpg").write_text("the user's")
    with pytest.raises(OutputExistsError, match=r"data/cans/mine.jpg"):
        check_output(demo, force=True)


def test_an_output_of_an_older_edgeopt_without_a_list_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text('{"command": "optimize", "created": "2026-11-01T10:00:00+0000"}')
    (out / "notes.txt").write_text("mine?")
    with pytest.raises(OutputExistsError, match="older edgeopt that did not list its files"):
        write_output(out, {"report.md": "new"}, force=True)
    assert (out / "notes.txt").exists()


def test_a_full_disk_is_one_line_naming_the_out_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    write_output(out, {"report.md": "old"})
    with pytest.raises(DiskFullError) as err:
        with staged_output(out, force=True, command="test") as staging:
            raise OSError(errno.ENOSPC, "No space left on device", str(staging / "variants" / "f0.tflite"))
    assert str(err.value) == f"disk full writing {out}: free space or choose another --out"
    assert (out / "report.md").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_naming_the_hidden_staging_folder_names_the_out_instead(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ModelError) as err:
        with staged_output(out, command="test") as staging:
            raise ModelError(f"{staging / 'variants' / 'f2_int8.tflite'} is not a valid .tflite model")
    assert str(err.value) == f"{out / 'variants' / 'f2_int8.tflite'} is not a valid .tflite model"
    assert ".partial" not in str(err.value)


def test_a_build_worker_reports_a_full_disk_as_itself_not_as_a_bug():
    sent = _portable(OSError(errno.ENOSPC, "No space left on device", "/somewhere/f0.tflite"))
    assert isinstance(sent, OSError) and sent.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs root, as on the dev and CI machines); skipped where it cannot be mounted."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def edgeopt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def assert_disk_full(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "bug in edgeopt" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: disk full writing {out}: free space or choose another --out"
    assert list(out.parent.iterdir()) == []  # no output, no hidden staging folder


def test_optimize_on_a_disk_that_fills_says_so_and_leaves_nothing(tiny_model, small_disk):
    out = small_disk / "opt"
    assert_disk_full(edgeopt("optimize", tiny_model, "--out", out, "--methods", "f0_float32,f2_int8",
                             "--rounds", "1", "--invocations", "2", "--train-images", "0"), out)


def test_train_on_a_disk_that_fills_says_so_and_leaves_nothing(tmp_path, small_disk):
    for i in range(6):
        write_image(tmp_path / "data" / ("cans" if i % 2 else "bottles") / f"{i}.jpg", seed=i)
    out = small_disk / "model"  # MobileNetV2 0.35 is about 1.7 MB of weights: more than the disk holds
    assert_disk_full(edgeopt("train", tmp_path / "data", "--out", out, "--weights", "none", "--image-size", "32",
                             "--alpha", "0.35", "--epochs-head", "1", "--epochs-finetune", "0", "--batch-size", "2"),
                     out)
