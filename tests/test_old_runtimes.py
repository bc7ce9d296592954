"""Devices with older runtimes, for real: edgeopt's light install in a second virtual environment
with ai-edge-litert 1.0.1 (on numpy 2, as pip resolves it, and on numpy 1) or onnxruntime 1.16.3
alone, running `device bench`, `device profile`, `classify` and `inspect` there as a device does.
(tflite-runtime 2.14: tests/test_device.py.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from edgeopt.choose import choose_for_device
from edgeopt.objective import Objective
from edgeopt.results import Results, load_results
from tests.device_venvs import device_venv, versions
from tests.test_device import _sha

pytestmark = pytest.mark.slow


def _edgeopt(python, *args, timeout=600):
    return subprocess.run([str(python), "-m", "edgeopt", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _photo(run):
    run_data = load_results(run).data
    return f"{run_data.root}/{run_data.test_items[0][0]}"


def test_ai_edge_litert_1_0_1_on_numpy_2_is_refused_with_its_fix(tiny_optimized, tmp_path):
    run, _ = tiny_optimized
    python = device_venv("litert-1.0.1-numpy-2", ["ai-edge-litert==1.0.1"])  # the light install lets numpy 2 in
    installed = versions(python, "ai-edge-litert", "numpy")
    assert installed["ai-edge-litert"] == "1.0.1" and installed["numpy"].startswith("2.")
    fix = (f"ai-edge-litert 1.0.1 is built for numpy<2 and numpy {installed['numpy']} is installed; "
           "install numpy<2 or ai-edge-litert>=2")
    out = tmp_path / "device.json"
    bench = _edgeopt(python, "device", "bench", run, "--out", out, "--rounds", "1", "--invocations", "2")
    assert (bench.returncode, bench.stderr.strip()) == (2, f"error: {fix}")
    assert not out.exists()
    profile = _edgeopt(python, "device", "profile", "--out", tmp_path / "profile.json")
    assert profile.returncode == 0 and f"warning: {fix}" in profile.stderr
    health = json.loads((tmp_path / "profile.json").read_text())["runtime_health"]
    assert health == {"litert": {"package": "ai-edge-litert 1.0.1", "healthy": False, "problem": fix}}
    classify = _edgeopt(python, "classify", run / "variants" / "f0_float32.tflite", _photo(run))
    assert (classify.returncode, classify.stderr.strip()) == (2, f"error: {fix}")


def test_ai_edge_litert_1_0_1_crashing_on_one_variant_costs_that_row_only(tiny_optimized, tmp_path):
    """It segfaults releasing the dynamic-range model after the accuracy pass resized it to batch 16."""
    run, _ = tiny_optimized
    python = device_venv("litert-1.0.1", [], extra="litert-1")
    assert versions(python, "ai-edge-litert")["ai-edge-litert"] == "1.0.1"
    out = tmp_path / "device.json"
    bench = _edgeopt(python, "device", "bench", run, "--out", out, "--rounds", "2", "--invocations", "3")
    assert bench.returncode == 0, bench.stderr
    device = Results.model_validate_json(out.read_text())
    f1 = device.variant("f1_dynamic_range")
    assert not f1.loadable
    assert f1.load_error == ("does not run here: SIGSEGV (ai-edge-litert 1.0.1 crashed releasing it after the accuracy "
                             "pass (at batch 16))")
    for name in ("f0_float32", "f2_int8", "f3_int8_uint8io", "f4_float16"):
        v = device.variant(name)
        assert v.loadable and v.runtime == "ai-edge-litert 1.0.1" and len(v.latency.round_medians_ms) == 2, name
    chosen = choose_for_device(load_results(run), _sha(run), device, Objective())
    assert chosen.choice.selected != "f1_dynamic_range" and chosen.choice.target == ["litert"]
    profile = _edgeopt(python, "device", "profile", "--out", tmp_path / "profile.json")
    assert profile.returncode == 0 and profile.stderr == ""
    assert json.loads((tmp_path / "profile.json").read_text())["runtime_health"]["litert"]["healthy"] is True


def test_onnxruntime_1_16_3_alone_runs_the_ort_variants_and_names_the_op_it_lacks(tiny_optimized, tmp_path):
    run, _ = tiny_optimized
    python = device_venv("onnxruntime-1.16.3", [], extra="ort-1-16")
    installed = versions(python, "onnxruntime", "onnx", "ai-edge-litert", "numpy")
    assert installed["onnxruntime"] == "1.16.3" and installed["onnx"] is None and installed["ai-edge-litert"] is None
    out = tmp_path / "device.json"
    bench = _edgeopt(python, "device", "bench", run, "--out", out, "--rounds", "2", "--invocations", "3")
    assert bench.returncode == 0, bench.stderr
    device = Results.model_validate_json(out.read_text())
    dynamic = device.variant("ort_int8_dynamic")
    assert not dynamic.loadable
    assert dynamic.load_error == ("needs op ConvInteger, which onnxruntime 1.16.3 does not implement for the CPU "
                                  "(opset 10); use a newer runtime or another variant")
    measured = [v.name for v in device.variants if v.loadable]
    assert measured == ["ort_fp32", "ort_int8_static", "ort_fp16"]
    assert all(device.variant(n).runtime == "onnxruntime 1.16.3" for n in measured)
    assert device.variant("f0_float32").load_error == "no litert runtime is installed on this device"
    chosen = choose_for_device(load_results(run), _sha(run), device, Objective())
    assert chosen.choice.selected in measured and chosen.choice.target == ["onnxruntime"]
    inspect = _edgeopt(python, "inspect", run / "variants" / "ort_fp32.onnx")
    assert inspect.returncode == 0 and "need the onnx package, not installed here" in inspect.stdout, inspect.stderr
    classify = _edgeopt(python, "classify", run / "variants" / "ort_fp32.onnx", _photo(run), "--top-k", "1")
    assert classify.returncode == 0 and classify.stdout.startswith(_photo(run)), classify.stderr
