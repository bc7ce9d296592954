"""Measured where it runs: the light device install, device profile and bench, and choosing for a
device from its own figures -- including a real older runtime (tflite-runtime 2.14, numpy < 2) in
a second virtual environment."""

from __future__ import annotations

import hashlib
import json
import os
import signal
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
from edgeopt.progress import NullProgress
from edgeopt.report import table_rows
from edgeopt.results import Results, load_results
from edgeopt.runtimes import litert as litert_runtime
from tests.conftest import _read
from tests.device_venvs import device_venv

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
    device = bench_run(run, QUICK, isolate=False)  # measured in this process, where the patch is
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


def _bench_workers() -> dict[str, int]:
    """This process's device-benchmark workers, by variant (Linux: reads /proc)."""
    found = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for child in _read(task / "children").split():
            argv = _read(Path(f"/proc/{child}/cmdline")).split("\0")
            if any("edgeopt.device.variant_worker" in arg for arg in argv):
                found[argv[-2]] = int(child)  # the variant's name is its last argument
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes in /proc (Linux)")
def test_a_variant_that_crashes_its_runtime_costs_its_row_not_the_benchmark(tiny_optimized):
    """A runtime that segfaults on one variant (ai-edge-litert 1.0.1 does on a dynamic-range model)
    ends that variant's process only: the row says so, every other variant is measured in full."""
    run, _ = tiny_optimized

    class CrashAfterLoading(NullProgress):
        crashed = False

        def advance(self, steps=1, info=""):
            if info == "f1_dynamic_range" and not self.crashed:  # loaded, waiting for the latency rounds
                os.kill(_bench_workers()["f1_dynamic_range"], signal.SIGSEGV)
                self.crashed = True

    device = bench_run(run, QUICK, progress=CrashAfterLoading())
    f1 = device.variant("f1_dynamic_range")
    assert not f1.loadable and f1.latency is None
    assert f1.load_error.startswith("does not run here: SIGSEGV (ai-edge-litert") and "latency rounds" in f1.load_error
    rest = [v for v in device.variants if v.name != "f1_dynamic_range"]
    assert len(rest) == len(load_results(run).variants) - 1 and device.variants[0].name == "f0_float32"
    assert all(v.loadable and len(v.latency.round_medians_ms) == QUICK.rounds and v.test.count > 0 for v in rest)
    assert _bench_workers() == {}  # none left behind
    chosen = choose_for_device(load_results(run), _sha(run), device, Objective())
    assert any(r.startswith("f1_dynamic_range was not eligible: it does not load here (does not run here: SIGSEGV")
               for r in chosen.choice.reasons)


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
    """The light install's commands, with TensorFlow and the rest of the build stack unimportable --
    in the processes they start too (device bench measures each variant in one of its own)."""
    run, _ = tiny_optimized
    image = sorted((synthetic_dir / "carton").glob("*.jpg"))[0]
    blocked = tmp_path / "blocked"
    for name in BUILD_ONLY:  # first on the path: an import of any of them fails, as on a device without them
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('the device side imported {name}')")
    script = textwrap.dedent(f"""
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert "CODES [0, 0, 0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr
    device = Results.model_validate_json((tmp_path / "device.json").read_text())
    assert all(v.loadable for v in device.variants), [v.load_error for v in device.variants]  # ORT without onnx too
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert profile["runtimes"]["ai-edge-litert"] and profile["cores"] >= 1 and "int8_dot_product" in profile
    assert profile["device_class"].startswith(profile["machine"])
    assert {name: h["healthy"] for name, h in profile["runtime_health"].items()} == {"litert": True, "onnxruntime": True}
    assert Results.model_validate_json((tmp_path / "device.json").read_text()).kind == "device-bench"


@pytest.mark.slow
def test_an_older_runtime_cannot_load_dynamic_range_and_choose_does_not_pick_it(tiny_optimized, tmp_path):
    run, _ = tiny_optimized
    # what many Raspberry Pi images ship
    python = device_venv("tflite-2.14", ["tflite-runtime==2.14.0", "numpy<2"], extra="tflite-runtime")
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
