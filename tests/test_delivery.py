"""Delivery: signed releases, the update server, the device agent and the sorting loop,
including the faults and attacks a device must survive. Servers run on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeopt.delivery import release as release_module
from edgeopt.delivery.agent import (
    FAULT_POINTS,
    FAULT_REPORT_ENV,
    FAULT_STOP_ENV,
    Agent,
    AgentConfig,
    release_is_complete,
)
from edgeopt.delivery.release import (
    SignatureError,
    generate_keys,
    load_private_key,
    load_public_key,
    sign,
    verify,
)
from edgeopt.delivery.sort import sort_frames
from edgeopt.errors import OutputExistsError
from tests.delivery_helpers import CuttingProxy, ServerThread


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("keys"))


class Run:
    """An optimize run and the variant to publish from it: releases 1 and 2 differ in bytes."""

    def __init__(self, folder: Path, variant: str) -> None:
        self.folder, self.variant = folder, variant


@pytest.fixture(scope="module")
def runs(tiny_optimized):
    out, _ = tiny_optimized
    return Run(out, "f0_float32"), Run(out, "f3_int8_uint8io")


def publish(run: Run, repo: Path, key: Path):
    return release_module.publish(run.folder, repo, key, variant=run.variant)


@pytest.fixture
def device(tmp_path, keys, synthetic_dir):
    """A device state folder with a few sample frames for the smoke test."""
    state = tmp_path / "device"
    samples = state / "samples"
    for cls in ("carton", "tin_can"):
        (samples / cls).mkdir(parents=True)
        for src in sorted((synthetic_dir / cls).glob("*.jpg"))[:2]:
            (samples / cls / src.name).write_bytes(src.read_bytes())
    return state


def agent_for(url, state, keys, **options):
    return Agent(AgentConfig(server=url, state=state, pubkey=keys[1], device_id="sorter-1", timeout_s=5, **options))


def assert_active_is_signed_and_complete(state: Path, public_key_path: Path) -> int | None:
    """The invariant: `active` is absent or a complete release matching its signed manifest."""
    active = state / "active"
    if not active.exists() and not active.is_symlink():
        return None
    manifest = release_is_complete(active, load_public_key(public_key_path))
    assert manifest is not None, f"active -> {os.readlink(active)} is not a complete signed release"
    return manifest["version"]


def test_keys_private_file_is_owner_only_and_never_overwritten(keys, tmp_path):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    data = b'{"a": 1}'
    assert verify(load_public_key(public), data, sign(load_private_key(private), data)) == {"a": 1}
    with pytest.raises(SignatureError):
        verify(load_public_key(public), b'{"a": 2}', sign(load_private_key(private), data))
    with pytest.raises(OutputExistsError):
        generate_keys(private.parent)


def test_publish_makes_monotonic_signed_releases_and_points_the_channel(runs, keys, tmp_path):
    repo = tmp_path / "repo"
    first = publish(runs[0], repo, keys[0])
    second = publish(runs[1], repo, keys[0])
    assert (first.version, second.version) == (1, 2)
    public = load_public_key(keys[1])
    pointer = verify(public, (repo / "channels/stable.json").read_bytes(), (repo / "channels/stable.json.sig").read_bytes())
    assert pointer["version"] == 2 and pointer["manifest"] == "releases/2/manifest.json"
    manifest = release_is_complete(repo / "releases" / "2", public)
    assert manifest["chosen_by"]["method"] == "f3_int8_uint8io"
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["scale"] == pytest.approx(1.0, rel=0.02)
    assert manifest["model"]["size_bytes"] == (repo / "releases/2/model.tflite").stat().st_size


def test_server_supports_range_etag_and_status_reports(runs, keys, tmp_path):
    repo = tmp_path / "repo"
    publish(runs[0], repo, keys[0])
    model = (repo / "releases/1/model.tflite").read_bytes()
    with ServerThread(repo) as server, httpx.Client(base_url=server.url) as client:
        full = client.get("/releases/1/model.tflite")
        assert full.status_code == 200 and full.content == model
        etag = full.headers["etag"]
        part = client.get("/releases/1/model.tflite", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == model[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(model)}"
        assert client.get("/releases/1/model.tflite", headers={"If-None-Match": etag}).status_code == 304
        assert client.get("/releases/1/model.tflite", headers={"Range": f"bytes={len(model)}-"}).status_code == 416
        assert client.get("/../keys/edgeopt-release.key").status_code == 404
        assert client.get("/fleet/status.json").status_code == 404
        assert client.post("/status", json={"device_id": "d1", "active_version": 1}).status_code == 200
        assert client.post("/status", content=b"garbage").status_code == 400
    assert json.loads((repo / "fleet/status.json").read_text())["d1"]["active_version"] == 1


def test_agent_installs_reports_and_updates_keeping_the_previous_release(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    publish(runs[0], repo, keys[0])
    with ServerThread(repo) as server:
        agent = agent_for(server.url, device, keys)
        assert agent.check_once() == "activated 1"
        assert agent.check_once() == "up-to-date"
        publish(runs[1], repo, keys[0])
        assert agent.check_once() == "activated 2"
    assert os.readlink(device / "active") == "releases/2" and os.readlink(device / "previous") == "releases/1"
    assert assert_active_is_signed_and_complete(device, keys[1]) == 2
    report = json.loads((repo / "fleet/status.json").read_text())["sorter-1"]
    assert report["active_version"] == 2 and report["last_error"] is None and report["latency_ms"] > 0


def _activated(runs, keys, repo, device):
    publish(runs[0], repo, keys[0])
    with ServerThread(repo) as server:
        assert agent_for(server.url, device, keys).check_once() == "activated 1"


def test_flipped_byte_in_the_model_is_rejected_and_reported(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    publish(runs[1], repo, keys[0])
    model = repo / "releases/2/model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with ServerThread(repo) as server:
        outcome = agent_for(server.url, device, keys).check_once()
    assert "does not match the signed sha256" in outcome
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1
    assert "sha256" in json.loads((repo / "fleet/status.json").read_text())["sorter-1"]["last_error"]
    assert any(json.loads(line)["event"] == "rejected" for line in (device / "agent.log").read_text().splitlines())


def test_manifest_signed_by_another_key_is_rejected(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    intruder, _ = generate_keys(tmp_path / "intruder")
    publish(runs[1], repo, intruder)
    with ServerThread(repo) as server:
        outcome = agent_for(server.url, device, keys).check_once()
    assert "signature does not verify" in outcome
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1


@pytest.mark.parametrize("evil_name", ["../../escape.tflite", "/etc/passwd", "sub/dir.tflite", ".."])
def test_manifest_naming_a_path_outside_the_state_folder_is_rejected(runs, keys, tmp_path, device, evil_name):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    release = publish(runs[1], repo, keys[0])
    resign(repo, release, dict(release.manifest, model=dict(release.manifest["model"], file=evil_name)), keys[0])
    with ServerThread(repo) as server:
        outcome = agent_for(server.url, device, keys).check_once()
    assert "not a plain file name" in outcome
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1
    assert not (tmp_path / "escape.tflite").exists() and not list(device.rglob("*escape*"))


def test_an_old_signed_release_cannot_be_replayed(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    old_pointer = (repo / "channels/stable.json").read_bytes(), (repo / "channels/stable.json.sig").read_bytes()
    publish(runs[1], repo, keys[0])
    with ServerThread(repo) as server:
        agent = agent_for(server.url, device, keys)
        assert agent.check_once() == "activated 2"
        (repo / "channels/stable.json").write_bytes(old_pointer[0])  # replay the signed pointer to v1
        (repo / "channels/stable.json.sig").write_bytes(old_pointer[1])
        assert agent.check_once() == "up-to-date"
        assert agent.check_once() == "up-to-date"  # equal version: nothing to do either
    assert assert_active_is_signed_and_complete(device, keys[1]) == 2
    assert any(json.loads(line)["event"] == "ignored" for line in (device / "agent.log").read_text().splitlines())


def resign(repo: Path, release, manifest: dict, private_key: Path) -> None:
    """Replace a release's manifest with `manifest`, validly signed (a publisher's mistake, or a
    stolen key): what the device must still refuse."""
    data = json.dumps(manifest, sort_keys=True).encode()
    private = load_private_key(private_key)
    (release.folder / "manifest.json").write_bytes(data)
    (release.folder / "manifest.json.sig").write_bytes(sign(private, data))
    pointer = json.loads((repo / "channels/stable.json").read_text())
    pointer["manifest_sha256"] = hashlib.sha256(data).hexdigest()
    pointer_bytes = json.dumps(pointer).encode()
    (repo / "channels/stable.json").write_bytes(pointer_bytes)
    (repo / "channels/stable.json.sig").write_bytes(sign(private, pointer_bytes))


def _publish_tampered_input_shape(runs, keys, repo):
    """A release signed by the real key whose model does not take the input the manifest says."""
    release = publish(runs[1], repo, keys[0])
    resign(repo, release, dict(release.manifest, input=dict(release.manifest["input"], shape=[1, 96, 96, 3])), keys[0])


def test_a_model_failing_its_smoke_test_is_never_activated(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    _publish_tampered_input_shape(runs, keys, repo)
    with ServerThread(repo) as server:
        agent = agent_for(server.url, device, keys)
        outcome = agent.check_once()
        assert "input shape" in outcome
        assert agent.check_once().startswith("skipped 2")  # rejected once, not retried
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1
    assert not (device / "releases" / "2").exists()


def test_a_nan_model_is_never_activated(runs, keys, tmp_path, device, monkeypatch):
    """The staged model outputs NaN (as a model converted with unfrozen weights does)."""
    from edgeopt.runtimes import registry

    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    publish(runs[1], repo, keys[0])

    class NanSession:
        def __init__(self, session):
            self.input, self.output = session.input, session.output

        def predict(self, pixels):
            return np.full((len(pixels), 5), np.nan, np.float32)

    original = registry.runtime_for

    def nan_runtime(path):
        runtime = original(path)
        if "staging" not in str(path):
            return runtime

        class Wrapped:
            def open(self, p, threads=1, transform=None):
                return NanSession(runtime.open(p, threads))

        return Wrapped()

    monkeypatch.setattr(registry, "runtime_for", nan_runtime)  # the smoke test imports it at call time
    with ServerThread(repo) as server:
        outcome = agent_for(server.url, device, keys).check_once()
    assert "non-finite" in outcome
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1


def test_latency_budget_and_accuracy_floor_are_enforced(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    publish(runs[0], repo, keys[0])
    with ServerThread(repo) as server:
        assert "exceeds the budget" in agent_for(server.url, device, keys, latency_budget_ms=1e-6).check_once()
        assert not (device / "active").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "samples").symlink_to(device / "samples")
    with ServerThread(repo) as server:
        assert "under 1.01" in agent_for(server.url, other, keys, min_accuracy=1.01).check_once()


def test_smoke_test_accuracy_uses_only_labelled_samples_in_their_order(runs, keys, tmp_path, device, synthetic_dir):
    from edgeopt.delivery.agent import smoke_test
    from edgeopt.images import load_pixels
    from edgeopt.runtimes.registry import runtime_for

    repo = tmp_path / "repo"
    release = publish(runs[0], repo, keys[0])
    # an unlabelled frame that sorts before the class folders
    (device / "samples" / "a_unlabelled.jpg").write_bytes(next((synthetic_dir / "pet_bottle").glob("*.jpg")).read_bytes())
    config = AgentConfig(server="http://127.0.0.1:9", state=device, pubkey=keys[1], min_accuracy=0.0)
    result = smoke_test(release.folder, release.manifest, device / "samples", config)
    session = runtime_for(release.folder / "model.tflite").open(release.folder / "model.tflite")
    classes = release.manifest["classes"]
    labelled = sorted(p for p in (device / "samples").rglob("*.jpg") if p.parent.name in classes)
    hits = [session.predict(load_pixels(p, session.input.image_size)[None])[0].argmax() == classes.index(p.parent.name)
            for p in labelled]
    assert result["samples"] == len(labelled) + 1
    assert result["accuracy"] == pytest.approx(np.mean(hits))


def test_server_down_keeps_the_device_classifying_and_backs_off(runs, keys, tmp_path, device, synthetic_dir):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    agent = agent_for("http://127.0.0.1:9", device, keys, interval_s=0.01, max_backoff_s=0.04)
    sleeps = []
    real_sleep = time.sleep
    time.sleep = lambda s: sleeps.append(s)
    try:
        agent.run(max_checks=4)
    finally:
        time.sleep = real_sleep
    assert sleeps == [0.02, 0.04, 0.04]  # doubling, capped
    assert assert_active_is_signed_and_complete(device, keys[1]) == 1
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "f1.jpg").write_bytes(next((synthetic_dir / "carton").glob("*.jpg")).read_bytes())
    out = io.StringIO()
    stop_after_one = lambda: out.getvalue().count("\n") >= 1  # noqa: E731
    sort_frames(device, frames, out=out, poll_s=0.01, stop=stop_after_one)
    assert json.loads(out.getvalue())["model_version"] == 1


def test_slow_server_and_cut_connections_resume_the_download(runs, keys, tmp_path, device):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    publish(runs[1], repo, keys[0])
    size = (repo / "releases/2/model.tflite").stat().st_size
    with ServerThread(repo, rate_kbps=2000) as server:
        with CuttingProxy(server.port, cut_after=size // 3) as proxy:
            first = agent_for(proxy.url, device, keys).check_once()
        assert first != "activated 2"
        assert assert_active_is_signed_and_complete(device, keys[1]) == 1
        part = device / "staging/2/model.tflite.part"
        assert 0 < part.stat().st_size < size
        partial = part.stat().st_size
        assert agent_for(server.url, device, keys).check_once() == "activated 2"
    # the second request asked only for the rest (Range): the part file kept its first bytes
    assert partial > 0 and not part.exists()


def test_sort_loop_picks_up_a_new_model_between_frames_without_dropping_one(runs, keys, tmp_path, device, synthetic_dir):
    repo = tmp_path / "repo"
    _activated(runs, keys, repo, device)
    publish(runs[1], repo, keys[0])
    frames = tmp_path / "frames"
    frames.mkdir()
    sources = sorted((synthetic_dir / "glass_bottle").glob("*.jpg"))[:6]
    out = io.StringIO()
    stop = threading.Event()
    loop = threading.Thread(target=sort_frames, args=(device, frames), kwargs=dict(out=out, poll_s=0.01, stop=stop.is_set))
    loop.start()

    def emitted():
        return [json.loads(line) for line in out.getvalue().splitlines()]

    def drop(i):
        (frames / f"frame{i}.jpg").write_bytes(sources[i].read_bytes())
        deadline = time.monotonic() + 20
        while len(emitted()) <= i and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        for i in range(3):
            drop(i)
        with ServerThread(repo) as server:
            assert agent_for(server.url, device, keys).check_once() == "activated 2"
        for i in range(3, 6):
            drop(i)
    finally:
        stop.set()
        loop.join(timeout=10)
    lines = emitted()
    assert [line["file"] for line in lines] == [f"frame{i}.jpg" for i in range(6)]
    assert [line["model_version"] for line in lines] == [1, 1, 1, 2, 2, 2]
    assert all(set(line) == {"file", "class", "confidence", "model_version", "latency_ms"} for line in lines)


def test_kill_9_at_every_point_of_an_update_never_leaves_a_partial_active_model(runs, keys, tmp_path, device):
    """30 trials: kill -9 the agent at each point of an update (it reports where it is), restart, check.

    25 trials stop the agent at a named point (mid-download with a partial file, staged, renamed
    into releases/, `previous` switched, `active` switched) and kill it there: 5 at each, always.
    5 more kill it at a random moment and record where it was.
    """
    repo = tmp_path / "repo"
    rng = random.Random(1234)
    report = tmp_path / "fault-points.txt"
    aimed = {point: 0 for point in FAULT_POINTS}
    random_hits = []
    published = 0
    with ServerThread(repo, rate_kbps=4000) as server:
        command = [sys.executable, "-m", "edgeopt", "device", "run", "--server", server.url, "--state", str(device),
                   "--pubkey", str(keys[1]), "--once", "--device-id", "killed"]
        for trial in range(30):
            before = assert_active_is_signed_and_complete(device, keys[1])
            publish(runs[trial % 2], repo, keys[0])  # always something new: every point is on its way
            published += 1
            report.write_text("")
            target = FAULT_POINTS[trial % len(FAULT_POINTS)] if trial < 25 else None
            env = {**os.environ, FAULT_REPORT_ENV: str(report), **({FAULT_STOP_ENV: target} if target else {})}
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if target:
                deadline = time.monotonic() + 60
                while target not in report.read_text().split() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
            else:
                time.sleep(rng.uniform(0.2, 2.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            reached = report.read_text().split()
            if target:
                assert reached and reached[-1] == target, (trial, target, reached)
                aimed[target] += 1
            else:
                random_hits.append(reached[-1] if reached else "before download")
            after = assert_active_is_signed_and_complete(device, keys[1])
            assert after in (before, published), (trial, target, before, after)
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
    assert assert_active_is_signed_and_complete(device, keys[1]) == published
    assert aimed == {point: 5 for point in FAULT_POINTS}
    print(f"kill -9 trials: aimed {aimed}, random {random_hits}")
