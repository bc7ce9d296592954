"""edgeopt search on Ray: a tiny search on a local Ray the test starts, resumed after a kill; and
trials spread over two Ray nodes joined over loopback. Skipped cleanly where Ray is not installed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgeopt
from edgeopt.results import load_results
from edgeopt.search.ledger import Ledger, student_dir
from edgeopt.search.space import Candidate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'edgeopt[search]')"),
]

SRC = str(Path(edgeopt.__file__).resolve().parents[1])
# Two candidates of the tiny teacher (alpha 0.35, 48 px), two epochs each; a cheap final build.
SETTINGS = {
    "resolutions": [32], "keeps": [1.0, 0.5], "grace_epochs": 1,
    "distill": {"epochs": 2, "batch_size": 32},
    "candidate_methods": ["f0_float32", "f3_int8_uint8io"],
    "optimize": {"methods": ["f0_float32", "f3_int8_uint8io"], "representative_samples": 20,
                 "measure": {"threads": 1, "rounds": 3, "invocations": 5, "warmup": 2, "train_images": 0}},
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0"}


@contextlib.contextmanager
def local_ray(temp_dir: Path) -> Iterator[None]:
    """A local Ray on this machine, started here with little memory, stopped after."""
    import ray

    ray.init(num_cpus=2, object_store_memory=96 * 1024**2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": SRC}}, _temp_dir=str(temp_dir))
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def short_tmp(monkeypatch):
    """A short temporary folder (Ray's socket paths must stay under 108 bytes), and Ray without a token."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    folder = Path(tempfile.mkdtemp(prefix="eo-ray-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_killed_search_resumes_from_its_finished_trials_and_chooses_against_the_teacher(tiny_model, tmp_path, short_tmp):
    from edgeopt.search.space import SearchConfig
    from edgeopt.search.study import run_search

    out = tmp_path / "search"
    config_file = tmp_path / "search.json"
    config_file.write_text(json.dumps({"search": SETTINGS}))
    # 1. the search in a process of its own, killed (SIGTERM) once its first trial is in the ledger
    first = subprocess.Popen([sys.executable, "-m", "edgeopt", "search", str(tiny_model), "--out", str(out), "--config",
                              str(config_file)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ledger = Ledger(out)
    deadline = time.monotonic() + 900
    while not ledger.done() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ledger.done(), f"no trial finished ({first.poll()=}): {first.stderr.read() if first.poll() is not None else ''}"
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 143, first.stderr.read()
    finished = dict(ledger.done())
    assert len(finished) == 1 and not (out / "results.json").exists()
    name = next(iter(finished))
    model_file = student_dir(out, Candidate.from_dict(finished[name].model_dump())) / "model.keras"
    trained_at = model_file.stat().st_mtime_ns

    # 2. run again on the same OUT (on a local Ray this test starts): only the other candidate trains
    with local_ray(short_tmp):
        results = run_search(tiny_model, out, SearchConfig.model_validate(SETTINGS))
    lines = [json.loads(line)["name"] for line in ledger.path.read_text().splitlines()]
    assert lines.count(name) == 1 and model_file.stat().st_mtime_ns == trained_at  # not trained again
    assert set(ledger.done()) == {"r32_a0.35", "r32_a0.35_k0.5"}

    # one results file: the teacher's float32 is the baseline, every candidate's variants beside its own
    assert results.variants[0].name == "f0_float32" and results.choice.baseline == "f0_float32"
    names = {v.name for v in results.variants}
    teacher_f0 = results.variants[0]
    for trial in results.search.trials:
        assert trial.status in ("completed", "stopped") and trial.history and trial.node_ip
        if trial.status == "completed":
            assert {f"{trial.name}.f0_float32", f"{trial.name}.f3_int8_uint8io"} <= names
    candidate_f0 = results.variant(f"{name}.f0_float32")
    assert candidate_f0.score.delta_size == pytest.approx(candidate_f0.size_bytes / teacher_f0.size_bytes - 1)
    assert candidate_f0.input.tensor.shape == teacher_f0.input.tensor.shape  # a drop-in: the teacher's input
    assert candidate_f0.paired is not None and candidate_f0.paired.n == len(results.data.test_items)
    # what choose, device bench and publish read
    stored = load_results(out)
    assert stored.search is not None and stored.choice.selected == results.choice.selected
    assert (out / stored.selected.file).is_file() and (out / "search_accuracy_latency.png").stat().st_size > 0
    assert "## Search: the candidates trained" in (out / "report.md").read_text()

    # 3. once more: nothing to train or measure; a budget only chooses again
    fastest = min((v for v in results.variants if v.latency), key=lambda v: v.latency.median_ms)
    tighter = SearchConfig.model_validate({**SETTINGS, "optimize": {**SETTINGS["optimize"], "objective": {
        "max_latency_ms": fastest.latency.median_ms * 1.0001, "max_metric_loss": None}}})
    again = run_search(tiny_model, out, tighter)
    assert again.choice.selected == fastest.name
    assert [v.latency for v in again.variants] == [v.latency for v in results.variants]  # not measured again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], log: Path) -> subprocess.Popen:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray_cli, "start", "--block", "--disable-usage-stats", "--num-cpus=1", "--object-store-memory=80000000",
                             "--node-ip-address=127.0.0.1", *args], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _nodes_alive(address: str) -> int:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    status = subprocess.run([ray_cli, "status", f"--address={address}"], capture_output=True, text=True, env=_env())
    return status.stdout.count(" node_") if status.returncode == 0 else 0


def test_trials_land_on_both_nodes_of_a_two_node_ray_cluster(tiny_model, tmp_path, short_tmp):
    from edgeopt.search.space import SearchConfig
    from edgeopt.search.study import run_search

    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_ray_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={short_tmp}"], tmp_path / "head.log")]
    try:
        deadline = time.monotonic() + 300
        while _nodes_alive(address) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        nodes.append(_ray_node([f"--address={address}"], tmp_path / "worker.log"))
        while _nodes_alive(address) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _nodes_alive(address) == 2, (tmp_path / "head.log").read_text()[-2000:]
        settings = {**SETTINGS, "distill": {"epochs": 1, "batch_size": 32}, "grace_epochs": 1, "ray_address": address,
                    "max_concurrent_trials": 2, "cpus_per_trial": 1, "candidate_methods": ["f0_float32"],
                    "optimize": {**SETTINGS["optimize"], "methods": ["f0_float32"]}}
        results = run_search(tiny_model, tmp_path / "out", SearchConfig.model_validate(settings))
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)  # each node's processes, and only them
        for node in nodes:
            node.wait(timeout=120)
    trials = results.search.trials
    assert len(trials) == 2 and all(t.status == "completed" for t in trials)
    assert len({t.node_id for t in trials}) == 2, [(t.name, t.node_id) for t in trials]  # one on each node
    assert "2 node(s), 2 CPU(s)" in results.search.ray
