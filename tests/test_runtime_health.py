"""Runtimes as a device has them: checked by running a tiny model, named when broken (with the fix),
usable with onnxruntime alone, and saying which op an older runtime lacks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgeopt.errors import BackendUnavailableError
from edgeopt.runtimes import health, probe_models
from edgeopt.runtimes import litert as litert_runtime
from edgeopt.runtimes import onnxruntime as ort_runtime
from edgeopt.runtimes.base import UnsupportedOpError
from edgeopt.runtimes.registry import RUNTIMES, get_runtime, list_runtimes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("runtime", sorted(probe_models.PROBE_FILES))
def test_the_shipped_probe_models_are_what_the_script_builds(runtime):
    pytest.importorskip("flatbuffers" if runtime == "litert" else "onnx")
    assert probe_models.PROBE_FILES[runtime].read_bytes() == probe_models.BUILDERS[runtime](), (
        "run: python -m edgeopt.runtimes.probe_models")


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_an_installed_runtime_that_runs_the_tiny_model_is_healthy(runtime):
    checked = health.check_runtime(runtime)
    assert checked == health.RuntimeHealth(RUNTIMES[runtime].version(), True)


def test_a_runtime_built_for_numpy_1_is_named_with_its_fix_when_it_fails_in_this_process(tmp_path, monkeypatch):
    """ai-edge-litert 1.0.1 on numpy 2 raises SystemError (from an ImportError) creating an interpreter:
    classify, the sorting loop and the smoke test get the fix, not a traceback."""
    module, _ = litert_runtime._interpreter_module()

    class Numpy1Interpreter:
        def __init__(self, *args, **kwargs):
            try:
                raise ImportError("numpy.core.multiarray failed to import")
            except ImportError as exc:
                raise SystemError("<built-in method CreateWrapperFromFile> returned a result with an exception set") from exc

    monkeypatch.setattr(module, "Interpreter", Numpy1Interpreter)
    monkeypatch.setattr(health.metadata, "version", lambda name: {"numpy": "2.4.6"}.get(name, "1.0.1"))
    with pytest.raises(BackendUnavailableError) as caught:
        get_runtime("litert").open(probe_models.PROBE_FILES["litert"])
    assert str(caught.value) == ("ai-edge-litert 1.0.1 is built for numpy<2 and numpy 2.4.6 is installed; "
                                 "install numpy<2 or ai-edge-litert>=2")


def test_a_runtime_that_crashes_on_the_tiny_model_is_unhealthy_with_the_signal(monkeypatch):
    monkeypatch.setattr(health, "_BOOT", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    checked = health.check_runtime("onnxruntime")
    assert not checked.healthy
    assert checked.problem == f"{RUNTIMES['onnxruntime'].version()} crashed (SIGSEGV) running a tiny model; " \
                              "reinstall it or install another version"


def test_a_crash_after_numpys_warning_is_named_as_the_numpy_mismatch(monkeypatch):
    """onnxruntime 1.16.3 on numpy 2 prints numpy's warning on import and segfaults at the first run."""
    monkeypatch.setattr(health, "_BOOT", "import os, signal, sys; sys.stderr.write('A module that was compiled using "
                                         "NumPy 1.x cannot be run in NumPy 2.4.6'); sys.stderr.flush(); "
                                         "os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(health.metadata, "version", lambda name: {"numpy": "2.4.6", "onnxruntime": "1.16.3"}[name])
    checked = health.check_runtime("onnxruntime")
    assert checked.problem == ("onnxruntime 1.16.3 is built for numpy<2 and numpy 2.4.6 is installed; "
                               "install numpy<2 or onnxruntime>=1.19")
    with pytest.raises(BackendUnavailableError, match="onnxruntime 1.16.3 is built for numpy<2"):
        health.require_healthy(["onnxruntime"])


def test_onnxruntime_alone_runs_onnx_models_and_inspect_says_what_needs_onnx(tmp_path, monkeypatch):
    """The README's device install ([ort]) has onnxruntime without the onnx package."""
    real_import = __import__

    def without_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(ort_runtime, "importable", lambda *m: "onnx" not in m)
    monkeypatch.setattr("edgeopt.runtimes.registry.importable", lambda *m: "onnx" not in m)
    monkeypatch.setattr("builtins.__import__", without_onnx)
    assert RUNTIMES["onnxruntime"].available() and "onnxruntime" in list_runtimes(installed_only=True)
    assert "onnxruntime" not in list_runtimes(installed_only=True, for_building=True)  # building needs onnx
    session = get_runtime("onnxruntime").open(probe_models.PROBE_FILES["onnxruntime"])
    assert session.input.shape == probe_models.PROBE_SHAPE
    summary = RUNTIMES["onnxruntime"].describe(probe_models.PROBE_FILES["onnxruntime"])
    assert summary.inputs[0].shape == probe_models.PROBE_SHAPE and summary.op_counts == {}
    assert summary.notes == (f"op counts, weight dtypes and opsets need the onnx package, not installed here "
                             f"(pip install onnx=={ort_runtime.ONNX_VERSION})",)


def test_the_onnx_version_inspect_names_is_the_one_the_extra_pins():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    assert f"onnx=={ort_runtime.ONNX_VERSION}" in extra


def test_an_op_onnxruntime_does_not_implement_is_named_with_the_runtime_version(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shape = list(probe_models.PROBE_SHAPE)  # Erf on doubles: no CPU kernel, as ConvInteger in onnxruntime 1.16.3
    graph = helper.make_graph([helper.make_node("Erf", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = tmp_path / "erf.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOpError) as caught:
        get_runtime("onnxruntime").open(path)
    assert str(caught.value) == (f"{path} needs op Erf, which {RUNTIMES['onnxruntime'].version()} does not implement "
                                 "for the CPU (opset 13); use a newer runtime or another variant")


def test_device_profile_reports_each_runtimes_health(tmp_path):
    import json

    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "device", "profile", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    profile = json.loads(out.read_text())
    assert profile["runtime_health"] == {name: {"package": RUNTIMES[name].version(), "healthy": True, "problem": ""}
                                         for name in ("litert", "onnxruntime")}
