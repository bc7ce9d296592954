"""The exit-code contract, through the real entry point in a subprocess:
0 success, 1 a bug (traceback, said so), 2 a usage or input error (one line), 130 Ctrl-C,
143 SIGTERM -- and after an interrupt nothing is left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeopt.machine import usable_cores
from tests.conftest import build_workers, write_image

EDGEOPT = [sys.executable, "-m", "edgeopt"]


def edgeopt(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEOPT, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def assert_usage_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["optimize", "somewhere"], "Missing option '--out'"),
    (["optimize", "somewhere", "--out", "o", "--threads", "abc"], "Invalid value for '--threads'"),
    (["optimize", "somewhere", "--out", "o", "--no-such-flag"], "No such option: --no-such-flag"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["classify", "m.tflite", "x.jpg", "--threads", "0"], "'--threads'"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, fragment):
    assert_usage_error(edgeopt(*args, cwd=tmp_path), fragment)


def test_bare_edgeopt_prints_help_without_a_traceback():
    proc = edgeopt()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Usage: edgeopt" in proc.stdout + proc.stderr


def test_success_is_0_and_help_is_0():
    assert edgeopt("methods").returncode == 0
    assert edgeopt("optimize", "--help").returncode == 0


def test_a_bug_exits_1_with_the_traceback_and_says_it_is_a_bug(tmp_path):
    script = textwrap.dedent("""
        import sys
        import edgeopt.classify
        from edgeopt.cli import main
        def broken(*args, **kwargs):
            raise ZeroDivisionError("a bug")
        edgeopt.classify.classify = broken
        sys.exit(main(["classify", "m.tflite", "x.jpg"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert "this is a bug in edgeopt" in proc.stderr


def test_ctrl_c_inside_a_library_exec_still_exits_130_under_python_m(tmp_path):
    # CI caught `python -m edgeopt optimize` dying by SIGINT (-2) after printing "interrupted": the
    # Ctrl-C had landed in code a library ran with exec(<string>) while importing, which CPython then
    # treats as unhandled at exit. Only `python -m` takes that path; here it is made to happen every time.
    (tmp_path / "ctrl_c_in_exec.py").write_text(textwrap.dedent("""
        import sys
        import edgeopt.classify
        from edgeopt.cli import entry
        def interrupted(*args, **kwargs):
            exec("raise KeyboardInterrupt", {})
        edgeopt.classify.classify = interrupted
        sys.argv = ["edgeopt", "classify", "m.tflite", "x.jpg"]
        entry()
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "ctrl_c_in_exec"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr


def _start_optimize(model: Path, out: Path, extra_env: dict[str, str] | None = None, script: str | None = None):
    args = ["optimize", str(model), "--out", str(out), "--methods", "f0_float32,f4_float16", "--rounds", "2",
            "--invocations", "5"]
    command = [sys.executable, "-c", script, *args] if script else [*EDGEOPT, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(extra_env or {})})


def _wait_for_staging(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.parent.glob(f".{out.name}.partial-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "optimize never started writing"
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_optimize_exits_130_or_143_and_leaves_nothing(tiny_model, tmp_path, sig, code, word):
    out = tmp_path / "runs" / "opt"
    proc = _start_optimize(tiny_model, out)
    _wait_for_staging(out, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert word in stderr and "Traceback" not in stderr
    assert list((tmp_path / "runs").iterdir()) == []  # no output, no hidden .partial folder


def test_an_interrupt_swallowed_inside_a_library_still_stops_the_output(tiny_model, tmp_path):
    """TensorFlow once caught the KeyboardInterrupt and optimize went on to write its results:
    `optimize && publish` must not go ahead after a Ctrl-C."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        import edgeopt.pipeline as pipeline
        from edgeopt.cli import main
        real = pipeline.measure_latency
        def swallowing(*args, **kwargs):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                pass  # what a library that catches everything does
            return real(*args, **kwargs)
        pipeline.measure_latency = swallowing
        sys.exit(main(sys.argv[1:]))
    """)
    out = tmp_path / "opt"
    proc = _start_optimize(tiny_model, out, script=script)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert not out.exists() and not list(tmp_path.glob(".opt.partial-*"))


def test_unwritable_out_fails_before_any_work(tmp_path, synthetic_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    script = textwrap.dedent(f"""
        import json, sys
        from edgeopt.cli import main
        code = main(["train", {str(synthetic_dir)!r}, "--out", {str(blocker / "model")!r}])
        print(json.dumps([code, "tensorflow" in sys.modules]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    code, tensorflow_loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 2 and not tensorflow_loaded, proc.stderr
    assert "cannot write --out" in proc.stderr and "Traceback" not in proc.stderr


def test_an_error_in_a_user_file_is_2_and_one_line(tmp_path):
    write_image(tmp_path / "photo.jpg")
    assert_usage_error(edgeopt("inspect", tmp_path / "photo.jpg"), "not a model edgeopt can run")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or usable_cores() < 2,
                    reason="a build worker needs two cores; its processes are read from Linux's /proc")
@pytest.mark.parametrize("sig, code, moment", [
    (signal.SIGINT, 130, "while it gets its job"), (signal.SIGINT, 130, "while it builds"),
    (signal.SIGTERM, 143, "while it builds"), (signal.SIGKILL, -9, "while it builds"),
])
def test_a_signal_or_a_kill_during_the_build_also_stops_the_worker_building_the_other_runtime(
        tiny_model, tmp_path, sig, code, moment):
    # ONNX Runtime's variants are built in a worker process beside LiteRT's (methods.build): it must
    # not outlive its command, or it would go on writing into an output folder already removed.
    out = tmp_path / "runs" / "opt"
    args = ["optimize", str(tiny_model), "--out", str(out), "--methods", "f0_float32,ort_fp32"]
    proc = subprocess.Popen([*EDGEOPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120

    def ready() -> list[int]:
        workers = build_workers(proc.pid) if proc.poll() is None else []
        if moment == "while it builds" and not list(out.parent.glob(f".{out.name}.partial-*/work/*")):
            return []  # the worker's ONNX export has not begun
        return workers

    while not (workers := ready()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "optimize never started a build worker"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, f"the build worker {workers} outlived optimize"
        time.sleep(0.1)
    if sig != signal.SIGKILL:  # a kill -9 leaves the hidden staging folder: nothing can remove it
        assert "Traceback" not in stderr and "warning" not in stderr, stderr
        assert list((tmp_path / "runs").iterdir()) == []
