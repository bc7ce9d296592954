"""methods.build: a second runtime's methods built in a worker process give the files, answers and
errors that building everything in one process gives."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from multiprocessing import Pipe
from pathlib import Path

import numpy as np
import pytest

from edgeopt.data.imagefolder import decode_images
from edgeopt.data.split import load_split
from edgeopt.errors import ModelError
from edgeopt.methods import build, registry
from edgeopt.methods.base import BuildContext
from edgeopt.methods.build import build_variants
from edgeopt.methods.registry import get_method
from edgeopt.progress import NullProgress
from edgeopt.runtimes.registry import get_runtime
from tests.conftest import TINY_SIZE, build_workers

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")

NAMES = ("f0_float32", "f2_int8", "ort_fp32", "ort_int8_static")
ORT = ("ort_fp32", "ort_int8_static")


@pytest.fixture(scope="module")
def split_pixels(tiny_model):
    split = load_split(tiny_model / "split.json")
    return (decode_images(Path(split.data_root), split.train[:20], TINY_SIZE).pixels,
            decode_images(Path(split.data_root), split.test, TINY_SIZE).pixels)


def _context(tiny_model, folder: Path, calibration: np.ndarray, **changes) -> BuildContext:
    (folder / "variants").mkdir(parents=True)
    (folder / "work").mkdir()
    return BuildContext(**{"source": tiny_model, "representative": calibration, "log_path": folder / "convert.log",
                           "work_dir": folder / "work", **changes})


def _build(tiny_model, folder: Path, calibration: np.ndarray, processes: int, names=NAMES, **changes):
    ctx = _context(tiny_model, folder, calibration, **changes)
    return build_variants([get_method(n) for n in names], ctx, folder / "variants", NullProgress(), processes), ctx


def test_a_runtime_built_in_a_worker_gives_the_variants_one_process_gives(tiny_model, tmp_path, split_pixels,
                                                                           monkeypatch):
    calibration, test = split_pixels
    one, _ = _build(tiny_model, tmp_path / "one", calibration, processes=1)
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    for name in ORT:
        monkeypatch.setitem(registry.METHODS, name, replace(registry.METHODS[name], build=_fail_here))
    two, ctx = _build(tiny_model, tmp_path / "two", calibration, processes=2)

    assert list(two.artifacts) == list(one.artifacts) == list(NAMES)
    assert set(ctx.built) == set(NAMES)  # the worker's files are known to the methods after them
    for name in ("f0_float32", "f2_int8"):
        assert two.artifacts[name].sha256 == one.artifacts[name].sha256
    for name in ORT:  # tf2onnx's bytes differ between exports, the answers do not
        a, b = (get_runtime("onnxruntime").open(r.artifacts[name].path).predict(test) for r in (one, two))
        assert np.array_equal(a.argmax(axis=1), b.argmax(axis=1))
        assert np.abs(a - b).max() < 1e-5
    assert build_workers(os.getpid()) == []


def _names(chains):
    return [[m.name for m in chain] for chain in chains]


FIVE = ("f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16")


@pytest.mark.parametrize(("names", "processes", "chains"), [
    (FIVE, 2, [["f0_float32", "f1_dynamic_range", "f4_float16"], ["f2_int8", "f3_int8_uint8io"]]),
    ((*FIVE, "f2_int8_guarded"), 2,  # the guarded one goes with the file it repairs and the calibration
     [["f0_float32", "f1_dynamic_range", "f4_float16"], ["f2_int8", "f3_int8_uint8io", "f2_int8_guarded"]]),
    (("f2_int8", "f0_float32", "f3_int8_uint8io"), 2, [["f2_int8", "f3_int8_uint8io"], ["f0_float32"]]),
    (FIVE, 1, [list(FIVE)]),
    (("f0_float32", "f2_int8", "ort_fp32", "ort_int8_static"), 2,  # a chain per runtime already fills both
     [["f0_float32", "f2_int8"], ["ort_fp32", "ort_int8_static"]]),
    (("ort_fp32", "ort_int8_static", "ort_int8_guarded"), 2,  # they share the exported float file
     [["ort_fp32", "ort_int8_static", "ort_int8_guarded"]]),
    (("f0_float32", "f2_int8", "qat_int8"), 2, [["f0_float32", "f2_int8", "qat_int8"]]),  # fine-tuning takes the cores
    (("f0_float32", "f1_dynamic_range"), 2, [["f0_float32", "f1_dynamic_range"]]),  # nothing calibrated
], ids=["five", "guarded", "calibrated baseline", "one process", "two runtimes", "onnx runtime", "retraining",
        "nothing to split"])
def test_litert_alone_builds_its_calibrated_methods_apart_only_where_nothing_is_shared(names, processes, chains):
    assert _names(build.chains_of([get_method(n) for n in names], processes)) == chains


def test_litert_alone_builds_its_calibrated_variants_in_a_worker_and_gives_the_same_files(tiny_model, tmp_path,
                                                                                          split_pixels, monkeypatch):
    calibration, _ = split_pixels
    names = ("f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io")
    one, _ = _build(tiny_model, tmp_path / "one", calibration, processes=1, names=names)
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    for name in ("f2_int8", "f3_int8_uint8io"):
        monkeypatch.setitem(registry.METHODS, name, replace(registry.METHODS[name], build=_fail_here))
    two, ctx = _build(tiny_model, tmp_path / "two", calibration, processes=2, names=names)
    assert list(two.artifacts) == list(one.artifacts) == list(names)
    assert {n: a.sha256 for n, a in two.artifacts.items()} == {n: a.sha256 for n, a in one.artifacts.items()}
    assert set(ctx.built) == set(names)  # the worker's files are known to the methods after them
    assert build_workers(os.getpid()) == []


def _fail_here(ctx, path):
    raise AssertionError("a method meant for the worker was built in the calling process")


def test_a_user_error_in_the_worker_reaches_the_caller_as_itself(tiny_model, tmp_path, split_pixels, monkeypatch):
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    monkeypatch.setitem(registry.METHODS, "ort_fp32", replace(registry.METHODS["ort_fp32"], build=_fail_here))
    with pytest.raises(ModelError, match="an ONNX export needs a work folder"):  # raised in the worker only
        _build(tiny_model, tmp_path, split_pixels[0], 2, ("f0_float32", "ort_fp32"), work_dir=None)
    assert build_workers(os.getpid()) == []


# The real worker, but a SIGINT reaches it (its pid alone, from another terminal) as it starts to build.
_INTERRUPTED = build._BOOT.replace(
    "run_build_worker()", "import edgeopt.methods.build as b, os, signal, time; "
    "b._build_one = lambda *a: os.kill(os.getpid(), signal.SIGINT) or time.sleep(60); run_build_worker()")


@pytest.mark.parametrize(("boot", "ended"), [("import os; os._exit(3)", "ended (exit code 3)"),
                                             (_INTERRUPTED, "was killed by SIGINT")],
                         ids=["dies at once", "SIGINT to the worker alone"])
@pytest.mark.parametrize("names", [("f0_float32", "ort_fp32"), ("f0_float32", "f2_int8")],
                         ids=["another runtime", "litert's calibrated methods"])
def test_what_a_dead_worker_did_not_build_is_built_here_with_a_warning(tiny_model, tmp_path, split_pixels,
                                                                        monkeypatch, caplog, boot, ended, names):
    monkeypatch.setattr(build, "usable_cores", lambda: 2)
    monkeypatch.setattr(build, "_BOOT", boot)  # a worker that dies at once (say, OOM), or is sent a SIGINT
    threads = {}  # the held-out threads each method built here had: both cores once no worker runs
    real = build._build_one

    def recording(method, ctx, out_dir):
        threads[method.name] = ctx.holdout_threads
        return real(method, ctx, out_dir)

    monkeypatch.setattr(build, "_build_one", recording)
    with caplog.at_level(logging.WARNING):
        built, _ = _build(tiny_model, tmp_path, split_pixels[0], 2, names)
    assert list(built.artifacts) == list(names) and built.artifacts[names[1]].path.is_file()
    assert f"{ended} after 0 of them; building the rest here" in caplog.text
    assert threads == {names[0]: 1, names[1]: 2}


@pytest.mark.parametrize(("cores", "processes", "threads"),
                         [(1, 1, 1), (2, 1, 2), (2, 2, 1), (4, 2, 2), (6, 2, 2), (6, 3, 2), (8, 8, 1), (16, 1, 2)])
def test_a_held_out_pass_gets_two_threads_or_its_share_of_the_cores_when_fewer(cores, processes, threads):
    assert build._holdout_threads(cores, processes) == threads


def test_while_a_worker_builds_this_process_does_other_work_until_none_is_left(monkeypatch):
    reader, writer = Pipe(duplex=False)
    worker = object.__new__(build._Worker)
    worker.chain, worker._conn = [get_method("ort_fp32")], reader
    outcome = build.Outcome("ort_fp32", None, not_built="test")
    calls = []

    def meanwhile():
        calls.append(1)
        if len(calls) == 3:
            writer.send(("built", outcome))  # the worker reports while the third piece runs
        return True

    assert worker.receive(meanwhile) == [outcome] and len(calls) == 3  # not called once the worker has reported

    calls.clear()
    timers = []

    def nothing_left():  # the worker reports a little later, while this process just waits
        calls.append(1)
        timers.append(threading.Timer(0.3, writer.send, args=(("built", outcome),)))
        timers[-1].start()
        return False

    assert worker.receive(nothing_left) == [outcome] and calls == [1]
    timers[0].join()
    reader.close()
    writer.close()
