"""methods.build: a second runtime's methods built in a worker process give the files, answers and
errors that building everything in one process gives."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeopt.data.imagefolder import decode_images
from edgeopt.data.split import load_split
from edgeopt.errors import ModelError
from edgeopt.methods import registry
from edgeopt.methods.base import BuildContext
from edgeopt.methods.build import build_variants
from edgeopt.methods.registry import get_method
from edgeopt.progress import NullProgress
from edgeopt.runtimes.registry import get_runtime
from tests.conftest import TINY_SIZE

NAMES = ("f0_float32", "f2_int8", "ort_fp32", "ort_int8_static")


@pytest.fixture(scope="module")
def split_pixels(tiny_model):
    split = load_split(tiny_model / "split.json")
    return (decode_images(Path(split.data_root), split.train[:20], TINY_SIZE).pixels,
            decode_images(Path(split.data_root), split.test, TINY_SIZE).pixels)


def _context(tiny_model, folder: Path, calibration: np.ndarray, **changes) -> BuildContext:
    (folder / "variants").mkdir(parents=True)
    (folder / "work").mkdir()
    return BuildContext(source=tiny_model, representative=calibration, log_path=folder / "convert.log",
                        work_dir=folder / "work", **changes)


def _children() -> list[int]:
    return [int(p) for p in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]


def _built_here_only(ctx, path):
    raise AssertionError("an ONNX Runtime method was built in the calling process")


def test_a_runtime_built_in_a_worker_gives_the_variants_one_process_gives(tiny_model, tmp_path, split_pixels,
                                                                           monkeypatch):
    calibration, test = split_pixels
    one = build_variants([get_method(n) for n in NAMES], _context(tiny_model, tmp_path / "one", calibration),
                         tmp_path / "one" / "variants", NullProgress(), processes=1)
    # From here on this process cannot build an ONNX Runtime variant: two processes must build them elsewhere.
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    for name in ("ort_fp32", "ort_int8_static"):
        monkeypatch.setitem(registry.METHODS, name, replace(registry.METHODS[name], build=_built_here_only))
    ctx = _context(tiny_model, tmp_path / "two", calibration)
    two = build_variants([get_method(n) for n in NAMES], ctx, tmp_path / "two" / "variants", NullProgress(), processes=2)

    assert list(two.artifacts) == list(one.artifacts) == list(NAMES)
    assert set(ctx.built) == set(NAMES)  # the worker's files are known to the methods after them
    for name in ("f0_float32", "f2_int8"):
        assert two.artifacts[name].sha256 == one.artifacts[name].sha256
    for name in ("ort_fp32", "ort_int8_static"):  # tf2onnx's bytes differ between exports, the answers do not
        a, b = (get_runtime("onnxruntime").open(r.artifacts[name].path).predict(test) for r in (one, two))
        assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))
        assert np.abs(a - b).max() < 1e-5
    assert _children() == []


def test_a_user_error_in_the_worker_reaches_the_caller_as_itself_and_the_worker_is_gone(tiny_model, tmp_path,
                                                                                         split_pixels, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    ctx = replace(_context(tiny_model, tmp_path, split_pixels[0]), work_dir=None)  # an ONNX export needs one
    with pytest.raises(ModelError, match="an ONNX export needs a work folder"):
        build_variants([get_method(n) for n in ("f0_float32", "ort_fp32")], ctx, tmp_path / "variants",
                       NullProgress(), processes=2)
    assert _children() == []
