"""Measured where it runs: the light device install, device profile and bench, and choosing for a
device from its own figures -- including a real older runtime (tflite-runtime 2.14, numpy < 2) in
a second virtual environment."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeopt.choose import choose_for_device
from edgeopt.config import MeasureConfig
from edgeopt.device.bench import bench_run
from edgeopt.errors import ConfigError
from edgeopt.objective import Objective
from edgeopt.report import table_rows
from edgeopt.results import Results, load_results
from edgeopt.runtimes import litert as litert_runtime

ROOT = Path(__file__).resolve().parents[1]
QUICK = MeasureConfig(rounds=2, invocations=5, warmup=1)
# What the device side may import: none of the build machine's heavy stack.
BUILD_ONLY = ("tensorflow", "keras", "scipy", "matplotlib", "plotly", "starlette", "uvicorn", "onnx", "tf2onnx", "sqlalchemy",
              "alembic", "psycopg")


def _sha(run: Path) -> str:
    return hashlib.sha256((run / "results.json").read_bytes()).hexdigest()


def test_device_bench_measures_every_variant_and_says_what_does_not_load(tiny_optimized, monkeypatch):
    run, _ = tiny_optimized
    real = litert_runtime._interpreter

    def old_runtime(path, threads, delegates=True):  # an older LiteRT: no FULLY_CONNECTED v12
        if path.name == "f1_dynamic_range.tflite":
            raise litert_runtime.UnsupportedOpError(
                f"{path} needs op FULLY_CONNECTED version 12, which tflite-runtime 2.14.0 does not have")
        return real(path, threads, delegates)

    monkeypatch.setattr(litert_runtime, "_interpreter", old_runtime)
    device = bench_run(run, QUICK)
    assert device.kind == "device-bench" and device.source_results_sha256 == _sha(run)
    f1 = device.variant("f1_dynamic_range")
    assert not f1.loadable and "FULLY_CONNECTED version 12" in f1.load_error and f1.latency is None
    assert f1.graph.op_versions["FULLY_CONNECTED"] == [12]  # the op set travels with the variant: explained
    f0 = device.variant("f0_float32")
    assert f0.loadable and f0.latency.median_ms > 0 and len(f0.predictions.test) == len(device.data.test_items)
    chosen = choose_for_device(load_results(run), _sha(run), device, Objective())
    assert chosen.choice.selected != "f1_dynamic_range"
    assert chosen.choice.target == ["litert", "onnxruntime"]  # both runtimes are installed here
    assert any("f1_dynamic_range was not eligible: it does not load here" in r for r in chosen.choice.reasons)


def test_device_results_of_another_run_are_refused(tiny_optimized, tmp_path):
    run, _ = tiny_optimized
    device = bench_run(run, QUICK)
    with pytest.raises(ConfigError, match="measured from another optimize run"):
        choose_for_device(load_results(run), "0" * 64, device, Objective())


def test_labelled_samples_can_replace_the_test_split(tiny_optimized, synthetic_dir, tmp_path):
    run, _ = tiny_optimized
    samples = tmp_path / "samples"
    for cls in ("carton", "tin_can"):
        (samples / cls).mkdir(parents=True)
        for src in sorted((synthetic_dir / cls).glob("*.jpg"))[:3]:
            (samples / cls / src.name).write_bytes(src.read_bytes())
    device = bench_run(run, QUICK, images=samples)
    assert len(device.data.test_items) == 6 and "labelled samples" in device.data.split_note
    classes = load_results(run).model.classes
    assert {label for _, label in device.data.test_items} == {classes.index("carton"), classes.index("tin_can")}


def test_the_device_side_runs_without_tensorflow(tiny_optimized, synthetic_dir, tmp_path):
    """The light install's commands, with TensorFlow and the rest of the build stack unimportable."""
    run, _ = tiny_optimized
    image = sorted((synthetic_dir / "carton").glob("*.jpg"))[0]
    script = textwrap.dedent(f"""
        import sys
        for name in {BUILD_ONLY!r}:
            sys.modules[name] = None  # import fails, as on a device without them
        from edgeopt.cli import main
        codes = [
            main(["--help"]),
            main(["inspect", {str(run / "variants" / "f3_int8_uint8io.tflite")!r}]),
            main(["classify", {str(run / "selected.tflite")!r}, {str(image)!r}]),
            main(["device", "profile", "--out", {str(tmp_path / "profile.json")!r}]),
            main(["device", "bench", {str(run)!r}, "--out", {str(tmp_path / "device.json")!r}, "--rounds", "1",
                  "--invocations", "3"]),
        ]
        print("CODES", codes)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "CODES [0, 0, 0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["runtimes"]["ai-edge-litert"] and profile["cores"] >= 1 and "int8_dot_product" in profile
    assert profile["device_class"].startswith(profile["machine"])
    assert Results.model_validate_json((tmp_path / "device.json").read_text()).kind == "device-bench"


def _device_venv() -> Path:
    """A second virtual environment with tflite-runtime 2.14 and numpy < 2: what many Raspberry Pi
    images ship. Cached between runs (keyed by the light dependencies); edgeopt itself is
    reinstalled from this checkout every time."""
    deps = ["tflite-runtime==2.14.0", "numpy<2"]
    light = json.dumps([deps, (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]])
    key = hashlib.sha256(light.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeopt-tests" / f"tflite-2.14-{key}"
    python = cache / "bin" / "python"
    if not (cache / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(cache)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *deps, f"{ROOT}[tflite-runtime]"], check=True, timeout=900)
        (cache / ".complete").write_text("ok")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)], check=True,
                   timeout=300)
    return python


@pytest.mark.slow
def test_an_older_runtime_cannot_load_dynamic_range_and_choose_does_not_pick_it(tiny_optimized, tmp_path):
    run, _ = tiny_optimized
    python = _device_venv()
    check = subprocess.run([str(python), "-c", "import numpy, tflite_runtime, importlib.util as u; "
                            "print(numpy.__version__, tflite_runtime.__version__, u.find_spec('tensorflow') is None)"],
                           capture_output=True, text=True, check=True)
    numpy_version, runtime_version, no_tensorflow = check.stdout.split()
    assert numpy_version.startswith("1.") and runtime_version == "2.14.0" and no_tensorflow == "True"
    out = tmp_path / "pi.json"
    bench = subprocess.run([str(python), "-m", "edgeopt", "device", "bench", str(run), "--out", str(out),
                            "--rounds", "2", "--invocations", "5"], capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    device = Results.model_validate_json(out.read_text())
    assert "tflite-runtime 2.14.0" in device.variant("f0_float32").runtime
    f1 = device.variant("f1_dynamic_range")
    assert not f1.loadable and "FULLY_CONNECTED version 12" in f1.load_error
    assert all(not v.loadable for v in device.variants if v.backend == "onnxruntime")
    chosen = choose_for_device(load_results(run), _sha(run), device, Objective())
    assert chosen.choice.selected != "f1_dynamic_range" and chosen.choice.target == ["litert"]
    cli = subprocess.run([sys.executable, "-m", "edgeopt", "choose", str(run), "--device-results", str(out),
                          "--out", str(tmp_path / "choice")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    report = (tmp_path / "choice" / "report.md").read_text()
    assert "needs op FULLY_CONNECTED version 12" in report and f"Chosen for this device: **{chosen.choice.selected}**" in report


def test_devices_of_one_class_pool_their_rounds_and_samples(tiny_optimized):
    from edgeopt.choose import pool_devices

    run, _ = tiny_optimized
    a = bench_run(run, QUICK)
    b = bench_run(run, QUICK)
    b = b.model_copy(update={"variants": [v.model_copy(update={"loadable": False, "load_error": "no FC v12", "latency": None})
                                          if v.name == "f1_dynamic_range" else v for v in b.variants]})
    pooled = pool_devices([a, b])
    assert len(pooled.data.test_items) == 2 * len(a.data.test_items)
    f0 = pooled.variant("f0_float32")
    assert len(f0.latency.round_medians_ms) == 2 * QUICK.rounds and len(f0.predictions.test) == len(pooled.data.test_items)
    f1 = pooled.variant("f1_dynamic_range")
    assert not f1.loadable and f1.load_error == "no FC v12"  # loadable only if every device loads it
    chosen = choose_for_device(load_results(run), _sha(run), pooled, Objective())
    assert chosen.choice.selected != "f1_dynamic_range"


def test_what_the_build_machine_proved_clearly_worse_stays_out_on_a_device(tiny_optimized):
    """A device's few samples cannot prove a variant clearly worse; the build machine's test split
    can, and its verdict holds on the device (unless the guard is off)."""
    run_dir, _ = tiny_optimized
    run = load_results(run_dir)
    classes = len(run.model.classes)
    wrong = [(label + 1) % classes for _, label in run.data.test_items]  # f4 gets every test image wrong there
    broken = run.model_copy(update={"variants": [
        v.model_copy(update={"predictions": v.predictions.model_copy(update={"test": wrong}),
                             "test": v.test.model_copy(update={"accuracy": 0.0})}) if v.name == "f4_float16" else v
        for v in run.variants]})
    device = bench_run(run_dir, QUICK)
    device = device.model_copy(update={"variants": [  # and on the device it would look best of all
        v.model_copy(update={"latency": v.latency.model_copy(update={
            "median_ms": 1e-3, "round_medians_ms": [1e-3] * len(v.latency.round_medians_ms)})}) if v.name == "f4_float16" else v
        for v in device.variants]})
    chosen = choose_for_device(broken, _sha(run_dir), device, Objective())
    assert chosen.choice.selected != "f4_float16"
    assert any(r.startswith("f4_float16 was not eligible: clearly worse on the build machine's") for r in chosen.choice.reasons)
    assert next(r for r in table_rows(chosen) if r[0].startswith("f4_float16"))[-1] == "excluded on the build machine"
    unguarded = choose_for_device(broken, _sha(run_dir), device, Objective(max_metric_loss=None))
    assert unguarded.choice.selected == "f4_float16" and not any("build machine" in r for r in unguarded.choice.reasons)
