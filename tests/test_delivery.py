"""Delivery on The Update Framework: keys, repository, server, device agent and sorting loop -- and
every attack of a hostile network, each against a real server on 127.0.0.1: refused, `active`
still a complete signed release, nothing unbounded, and the valid release installable afterwards."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import shutil
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

from edgeopt.device import report as report_module
from edgeopt.device import update as update_module
from edgeopt.device.agent import Agent, AgentConfig
from edgeopt.device.faults import FAULT_POINTS, FAULT_REPORT_ENV, FAULT_STOP_ENV
from edgeopt.device.fetch import Limits
from edgeopt.device.smoke import SmokeLimits
from edgeopt.device.sort import sort_frames
from edgeopt.device.state import DeviceState
from edgeopt.errors import OutputExistsError
from edgeopt.fleet.auth import generate_device_key, load_device_key, sign_request
from edgeopt.fleet.store import open_store
from edgeopt.release import repository as repository_module
from edgeopt.release.keys import generate_keys
from edgeopt.release.repository import Repository, release_custom
from edgeopt.results import load_results
from tests.delivery_helpers import Clock, CuttingProxy, HostileServer, ServerThread, StaticServer, run_loop
from tests.fleet_helpers import enroll_device
from tests.test_images import png_bytes


@pytest.fixture(scope="module")
def runs(tiny_optimized):
    """Two different models of one optimize run to publish: releases that differ in bytes."""
    out, _ = tiny_optimized
    return [(out, "f0_float32"), (out, "f3_int8_uint8io")]


class Setup:
    def __init__(self, tmp: Path, runs: list) -> None:
        self.keys, self.repo_path, self.runs = tmp / "keys", tmp / "repo", runs
        generate_keys(self.keys, ("stable", "beta"))
        self.repo = Repository(self.repo_path)
        self.root = self.repo.init(self.keys, ("stable", "beta"))
        self.state = tmp / "device"
        samples = self.state / "samples"
        data = Path(json.loads((runs[0][0] / "results.json").read_text())["data"]["root"])
        for cls in ("carton", "tin_can"):
            (samples / cls).mkdir(parents=True)
            for src in sorted((data / cls).glob("*.jpg"))[:2]:
                (samples / cls / src.name).write_bytes(src.read_bytes())

    def publish(self, which: int = 0, channel: str = "stable") -> dict:
        run, variant = self.runs[which % len(self.runs)]
        model, labels, custom = release_custom(run, variant)
        return self.repo.publish_release(self.keys, channel, model, labels, custom)

    def model_sha(self, which: int) -> str:
        import hashlib

        run, variant = self.runs[which]
        return hashlib.sha256(release_custom(run, variant)[0].read_bytes()).hexdigest()

    def agent(self, url: str, **options) -> Agent:
        defaults = dict(limits=Limits(timeout_s=5, min_rate_bps=2000, rate_window_s=1.0, deadline_base_s=20))
        return Agent(AgentConfig(server=url, state=self.state, root=self.root, device_id="sorter-1",
                                 **{**defaults, **options}))

    def active(self) -> int | None:
        """The invariant: `active` is absent or a complete release matching signed target metadata."""
        link = self.state / "active"
        if not link.exists() and not link.is_symlink():
            return None
        record = DeviceState.complete(link)
        assert record is not None, f"active -> {os.readlink(link)} is not a complete release"
        from tuf.api.metadata import Metadata

        signed = set()  # every model the channel's key ever signed: the file sent, and what it unpacks to
        for path in (self.repo_path / "metadata").glob("*.stable.json"):
            for target in Metadata.from_file(str(path)).signed.targets.values():
                signed.add(target.hashes["sha256"])
                signed.add(((target.custom or {}).get("uncompressed") or {}).get("sha256"))
        assert record["model"]["sha256"] in signed, "active is not a release the channel's key signed"
        return int(record["release"])


@pytest.fixture
def setup(tmp_path, runs):
    return Setup(tmp_path, runs)


def log_events(setup: Setup) -> list[dict]:
    return [json.loads(line) for line in (setup.state / "agent.log").read_text().splitlines()]


# --- keys, repository, server --------------------------------------------------------------------

def test_keys_are_owner_only_and_never_overwritten(tmp_path):
    paths = generate_keys(tmp_path / "keys", ("stable",))
    assert {p.name for p in paths} == {"root.key", "targets.key", "snapshot.key", "timestamp.key", "channel-stable.key"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
    with pytest.raises(OutputExistsError):
        generate_keys(tmp_path / "keys", ("stable",))


def test_the_agent_installs_updates_and_keeps_the_previous_release(setup):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url)
        assert str(agent.check_once()) == "activated release 1"
        assert str(agent.check_once()) == "up-to-date"
        setup.publish(1)
        assert str(agent.check_once()) == "activated release 2"
    assert setup.active() == 2
    assert DeviceState.complete(setup.state / "previous")["release"] == 1


def test_the_agent_works_against_any_static_web_server(setup):
    setup.publish(0)
    with StaticServer(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
    assert setup.active() == 1


def test_reports_are_authenticated_typed_and_bounded(setup, tmp_path):
    setup.publish(0)
    enroll_device(setup.repo_path, "sorter-1", tmp_path / "device.key")
    key = load_device_key(tmp_path / "device.key")
    with ServerThread(setup.repo_path) as server, httpx.Client(base_url=server.url) as client:
        assert str(setup.agent(server.url, key_file=tmp_path / "device.key").check_once()) == "activated release 1"
        with open_store(setup.repo_path) as store:
            status = store.latest()[0].report
        assert status.active_release == 1 and status.profile["cores"] >= 1 and status.device_class

        def post(report: dict | bytes, device: str = "sorter-1") -> int:
            body = report if isinstance(report, bytes) else json.dumps(report).encode()
            signed = sign_request(key, device, "POST", "/status", body, time.time())
            return client.post("/status", content=body, headers=signed).status_code

        good = {"device_id": "sorter-1", "channel": "stable"}
        assert client.post("/status", json=good).status_code == 401  # not signed
        assert post({**good, "device_id": "intruder"}) == 401  # signed by sorter-1, names someone else
        assert post({**good, "device_id": "intruder"}, device="intruder") == 401  # not enrolled
        assert post({**good, "last_error": "x" * 5_000_000}) == 413
        assert post(b"garbage") == 400
        assert post({**good, "active_release": "v" * 300}) == 400
        assert post(good) == 200
    with open_store(setup.repo_path) as store:
        assert [s.device_id for s in store.latest()] == ["sorter-1"] and store.count_reports() == 2


def test_the_server_serves_only_metadata_and_hash_named_targets(setup):
    setup.publish(0)
    enroll_device(setup.repo_path, "sorter-1", setup.repo_path.parent / "device.key")
    (setup.repo_path / "targets" / "stable" / "keys").mkdir()
    (setup.repo_path / "targets" / "stable" / "keys" / "root.key").write_text("secret")
    (setup.repo_path / "targets" / "stable" / "root.key").write_text("secret")
    model = next((setup.repo_path / "targets" / "stable").glob("*.model"))
    with ServerThread(setup.repo_path) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/metadata/timestamp.json").status_code == 200
        assert client.get(f"/targets/stable/{model.name}").content == model.read_bytes()
        part = client.get(f"/targets/stable/{model.name}", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.headers["content-range"] == f"bytes 100-199/{model.stat().st_size}"
        for path in ("/metadata/../fleet/fleet.db", "/metadata/%2e%2e/fleet/fleet.db", "/fleet/fleet.db",
                     "/targets/stable/root.key", "/targets/stable/keys/root.key", "/targets/../keys/root.key"):
            raw = httpx.Request("GET", server.url + path)
            raw.url = httpx.URL(server.url + path)  # keep the dots: what `curl --path-as-is` sends
            assert client.send(raw).status_code == 404, path


# --- attacks ---------------------------------------------------------------------------------------

def test_1_channel_mixing_is_refused(setup):
    """A beta release copied over stable's metadata: signed, but not by stable's key."""
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        setup.publish(1, channel="beta")
        setup.publish(1)  # stable's next release: the device will fetch stable's new metadata
        meta = setup.repo_path / "metadata"

        def newest(role):
            return max(meta.glob(f"*.{role}.json"), key=lambda p: int(p.name.split(".")[0]))

        stable, beta = newest("stable"), newest("beta")
        saved = stable.read_bytes()
        stable.write_bytes(beta.read_bytes())  # beta's signed release, served as stable's
        outcome = setup.agent(server.url).check_once()
        assert outcome.refused and "metadata does not verify" in str(outcome)
        assert setup.active() == 1
        stable.write_bytes(saved)  # the valid release still installs
        assert str(setup.agent(server.url).check_once()) == "activated release 2"


def _tamper_model(setup: Setup, how):
    def hook(path, data, headers):
        if path.startswith("/targets/stable/") and path.endswith(".model") and data is not None:
            return how(data, headers)
        return None
    return hook


@pytest.mark.parametrize("attack", ["flipped byte", "extra bytes", "wrong content-range", "short answer"])
def test_2_unsigned_faults_never_block_a_valid_release(setup, attack):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
    setup.publish(1)

    def how(data, headers):
        if attack == "flipped byte":
            body = bytearray(data)
            body[len(body) // 2] ^= 1
            return 200, {}, bytes(body)
        if attack == "extra bytes":
            return 200, {}, data + b"\x00" * 4096
        if attack == "short answer":  # a whole, well-formed answer that is shorter than the signed file
            return 200, {}, data[:1000]
        if "Range" not in headers and "range" not in headers:  # cut the transfer: the agent will resume...
            return 200, {"Content-Length": str(len(data))}, iter([(data[:20000], 0.0)])
        return 206, {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}, data  # ...and gets the wrong range
    # However often the network does it: a device cannot tell a lying network from a bad upload,
    # so nothing the network can do refuses a release for good.
    with HostileServer(setup.repo_path, _tamper_model(setup, how)) as hostile:
        for _ in range(3):
            outcome = setup.agent(hostile.url).check_once()
            assert outcome.kind == "retry", outcome
            if attack == "short answer":  # kept, to be resumed
                assert "resumes" in str(outcome) and {p.stat().st_size for p in setup.state.rglob("*.part")} == {1000}
    assert setup.active() == 1
    assert not (setup.state / "rejected.json").exists()
    assert all(p.stat().st_size <= setup.repo.current_release("stable")["length"] for p in setup.state.rglob("*.part"))
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 2"


def test_2_a_release_that_fails_twice_is_refused_for_good_and_reported(setup, monkeypatch):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        setup.publish(1)
        slow = setup.agent(server.url, smoke=SmokeLimits(latency_budget_ms=1e-6))
        first = slow.check_once()
        assert first.kind == "retry" and "smoke test failed" in str(first)  # one slow run: retried
        second = slow.check_once()
        assert second.refused and "(again)" in str(second)
        third = setup.agent(server.url).check_once()
        assert third.kind == "skipped" and third.refused
    assert setup.active() == 1
    assert any(e["event"] == "refused" for e in log_events(setup))


def test_3_endless_metadata_and_oversize_files_are_cut_off(setup):
    setup.publish(0)

    def endless(path, data, headers):
        if path == "/metadata/timestamp.json":
            return 200, {}, ((b"{" + b" " * 65535, 0.0) for _ in range(6400))  # 400 MiB
        return None

    with HostileServer(setup.repo_path, endless) as hostile:
        started = time.monotonic()
        outcome = setup.agent(hostile.url).check_once()
    assert outcome.refused and "longer than allowed" in str(outcome)
    assert time.monotonic() - started < 20
    assert setup.active() is None
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"


def test_4_slow_retrieval_is_stopped_reported_and_retried(setup):
    setup.publish(0)

    def trickle(path, data, headers):
        if path.endswith(".model") and data is not None:
            return 200, {"Content-Length": str(len(data))}, ((data[i:i + 1], 0.05) for i in range(len(data)))
        return None

    with HostileServer(setup.repo_path, trickle) as hostile:
        started = time.monotonic()
        outcome = setup.agent(hostile.url).check_once()
    assert outcome.kind == "retry" and "slow retrieval" in str(outcome)
    assert time.monotonic() - started < 15
    assert any(e["event"] == "retry" and "slow retrieval" in e["reason"] for e in log_events(setup))
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"


def test_5_a_frozen_repository_and_a_metadata_rollback_are_refused(setup, monkeypatch):
    setup.publish(0)
    old_timestamp = (setup.repo_path / "metadata" / "timestamp.json").read_bytes()
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        setup.publish(1)
        assert str(setup.agent(server.url).check_once()) == "activated release 2"
        fresh = (setup.repo_path / "metadata" / "timestamp.json").read_bytes()
        (setup.repo_path / "metadata" / "timestamp.json").write_bytes(old_timestamp)  # replay
        rollback = setup.agent(server.url).check_once()
        assert rollback.refused and "rollback" in str(rollback)
        (setup.repo_path / "metadata" / "timestamp.json").write_bytes(fresh)
        monkeypatch.setitem(repository_module.EXPIRY, "timestamp", dt.timedelta(seconds=-60))
        setup.repo.refresh(setup.keys)  # a timestamp that has expired: what a frozen mirror serves
        frozen = setup.agent(server.url).check_once()
        assert frozen.refused and "expired" in str(frozen)
        monkeypatch.setitem(repository_module.EXPIRY, "timestamp", dt.timedelta(days=1))
        setup.repo.refresh(setup.keys)
        assert str(setup.agent(server.url).check_once()) == "up-to-date"
    assert setup.active() == 2


def test_5_an_absurd_signed_release_number_stops_nothing(setup, monkeypatch):
    setup.publish(0)
    model, labels, custom = release_custom(*setup.runs[1])
    monkeypatch.setattr(repository_module, "MAX_RELEASE", 10**40)
    role = setup.repo.load("stable")
    role.signed.targets["stable/model"].unrecognized_fields["custom"]["release"] = 10**30 - 1
    role.signed.version += 1
    setup.repo._sign(role, "channel-stable", setup.keys)
    setup.repo._write(role, "stable")
    setup.repo._snapshot_and_timestamp(setup.keys, {"stable": role.signed.version})
    setup.repo.publish_release(setup.keys, "stable", model, labels, custom)  # release 10**30
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()).startswith("rejected: release number 1000000000000000000000000000000 is not")
        monkeypatch.setattr(repository_module, "MAX_RELEASE", 2**31 - 1)
        setup.publish(0)  # the next normal publish starts the count again
        assert str(setup.agent(server.url).check_once()) == "activated release 1"


def test_7_the_device_keeps_few_releases_checks_space_and_drops_oversize_parts(setup, monkeypatch):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url, keep_releases=1)
        for i in range(4):
            if i:
                setup.publish(i)
            assert str(agent.check_once()) == f"activated release {i + 1}"
        assert len(list((setup.state / "releases").iterdir())) == 3  # active, previous and one more
        model, labels, custom = release_custom(setup.runs[0][0], "f4_float16")  # a model it does not hold: a download
        setup.repo.publish_release(setup.keys, "stable", model, labels, custom)
        sha = setup.repo.current_release("stable")["sha256"]
        (setup.state / "staging" / sha).mkdir(parents=True)
        oversize = setup.state / "staging" / sha / "model.tflite.zst.part"
        oversize.write_bytes(b"\x00" * (setup.repo.current_release("stable")["length"] + 10))
        monkeypatch.setattr(DeviceState, "free_bytes", lambda self: 1000)
        full = agent.check_once()
        assert full.kind == "retry" and "not enough free space" in str(full) and oversize.exists()
        monkeypatch.undo()
        assert str(agent.check_once()) == "activated release 5"
    assert not list((setup.state / "staging").iterdir()) or not list(setup.state.rglob("*.part"))


def test_8_the_sorting_loop_survives_bad_frames_and_restarts(setup, tmp_path):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
    frames = tmp_path / "frames"
    frames.mkdir()
    data = Path(json.loads((setup.runs[0][0] / "results.json").read_text())["data"]["root"])
    good = sorted((data / "carton").glob("*.jpg"))
    (frames / "a_empty.jpg").write_bytes(b"")
    (frames / "b_text.jpg").write_text("not a picture")
    (frames / "c_bomb.png").write_bytes(png_bytes(14000, 14000, 8, 0, b"\x00" * 64))
    (frames / "d_good.jpg").write_bytes(good[0].read_bytes())
    old = time.time() - 10  # written long ago: not still being written by the camera
    for f in frames.iterdir():
        os.utime(f, (old, old))

    def sort_until(count: int) -> list[dict]:
        out = io.StringIO()
        started = time.process_time()
        sort_frames(setup.state, frames, out=out, poll_s=0.01, stop=lambda: out.getvalue().count("\n") >= count)
        assert time.process_time() - started < 5  # no busy retry loop
        return [json.loads(line) for line in out.getvalue().splitlines()]

    lines = sort_until(4)
    errors = {line["file"]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {"a_empty.jpg", "b_text.jpg", "c_bomb.png"} and "50 MP" in errors["c_bomb.png"]
    assert sorted(p.name for p in (frames / "rejected").iterdir()) == ["a_empty.jpg", "b_text.jpg", "c_bomb.png"]
    assert next(line for line in lines if line["file"] == "d_good.jpg")["model_release"] == 1
    (frames / "e_good.jpg").write_bytes(good[1].read_bytes())  # after a restart only the new frame is emitted
    again = sort_until(1)
    assert [line["file"] for line in again] == ["e_good.jpg"]


def test_9_once_exits_3_when_a_release_or_metadata_is_refused(setup):
    setup.publish(0)
    old_timestamp = (setup.repo_path / "metadata" / "timestamp.json").read_bytes()
    command = [sys.executable, "-m", "edgeopt", "device", "run", "--state", str(setup.state), "--root", str(setup.root),
               "--once", "--device-id", "sorter-1"]
    with ServerThread(setup.repo_path) as server:
        ok = subprocess.run([*command, "--server", server.url], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0 and "activated release 1" in ok.stdout
        setup.publish(1)
        assert subprocess.run([*command, "--server", server.url], capture_output=True, timeout=120).returncode == 0
        (setup.repo_path / "metadata" / "timestamp.json").write_bytes(old_timestamp)
        replay = subprocess.run([*command, "--server", server.url], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 3 and "rollback" in replay.stdout
    assert any(e["event"] == "refused" and "rollback" in e["reason"] for e in log_events(setup))


def test_key_rotation_is_followed_and_a_rotated_key_can_no_longer_sign(setup, tmp_path):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        old_channel_key = tmp_path / "old-channel.key"
        shutil.copy(setup.keys / "channel-stable.key", old_channel_key)
        for role in ("root", "timestamp", "snapshot", "targets", "channel-stable"):
            setup.repo.rotate(setup.keys, role)
        setup.publish(1)
        assert str(setup.agent(server.url).check_once()) == "activated release 2"
        # a release signed with the retired channel key is refused
        shutil.copy(old_channel_key, setup.keys / "channel-stable.key")
        setup.publish(0)
        refused = setup.agent(server.url).check_once()
        assert refused.refused and "does not verify" in str(refused)
    assert setup.active() == 2


# --- faults ------------------------------------------------------------------------------------------

def test_a_nan_model_is_never_activated(setup, monkeypatch):
    from edgeopt.runtimes import registry

    setup.publish(0)
    original = registry.runtime_for

    class NanSession:
        def __init__(self, session):
            self.input, self.output = session.input, session.output

        def predict(self, pixels):
            return np.full((len(pixels), 5), np.nan, np.float32)

    def nan_runtime(path):
        runtime = original(path)

        class Wrapped:
            def open(self, p, threads=1, transform=None):
                return NanSession(runtime.open(p, threads))

        return Wrapped()

    monkeypatch.setattr(registry, "runtime_for", nan_runtime)  # the smoke test imports it at call time
    with ServerThread(setup.repo_path) as server:
        outcome = setup.agent(server.url).check_once()
    assert outcome.kind == "retry" and "non-finite" in str(outcome)
    assert setup.active() is None


def test_the_accuracy_floor_and_the_input_contract_are_enforced(setup):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        outcome = setup.agent(server.url, smoke=SmokeLimits(min_accuracy=1.01)).check_once()
        assert "under 1.01" in str(outcome)
        model, labels, custom = release_custom(*setup.runs[1])
        custom["input"]["tensor"]["shape"] = [1, 96, 96, 3]  # signed, but not what the model takes
        setup.repo.publish_release(setup.keys, "stable", model, labels, custom)
        assert "differs from the signed" in str(setup.agent(server.url).check_once())
    assert setup.active() is None


def test_server_down_backs_off_and_the_device_keeps_its_release(setup):
    """The loop `device run` runs, against a repository that does not answer: every check is
    'unreachable', each wait is a back-off (doubling, capped), never the end of the loop."""
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
    agent = setup.agent("http://127.0.0.1:9")
    clock, checks = Clock(), []
    check = agent.check_once

    def noted():
        checks.append((clock(), check()))
        return checks[-1][1]

    agent.check_once = noted
    run_loop(agent, 5, clock, interval_s=3600.0, backoff_base_s=4.0, max_backoff_s=16.0, min_fault_s=1.0)
    assert [outcome.kind for _, outcome in checks] == ["unreachable"] * 5
    gaps = [b - a for (a, _), (b, _) in zip(checks, checks[1:], strict=False)]
    assert all(1.0 <= gap <= ceiling for gap, ceiling in zip(gaps, [4.0, 8.0, 16.0, 16.0], strict=True)), gaps
    assert setup.active() == 1


def test_cut_connections_resume_the_download_with_range(setup):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        setup.publish(1)
        size = setup.repo.current_release("stable")["length"]
        with CuttingProxy(server.port, cut_after=size // 3) as proxy:
            first = setup.agent(proxy.url).check_once()
        assert first.kind == "retry" and setup.active() == 1
        part = next(setup.state.rglob("model.tflite.zst.part"))
        assert 0 < part.stat().st_size < size
        assert str(setup.agent(server.url).check_once()) == "activated release 2"


def test_the_sorting_loop_picks_up_a_new_release_between_frames(setup, tmp_path):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        setup.publish(1)
        frames = tmp_path / "frames"
        frames.mkdir()
        data = Path(json.loads((setup.runs[0][0] / "results.json").read_text())["data"]["root"])
        sources = sorted((data / "glass_bottle").glob("*.jpg"))[:6]
        out = io.StringIO()
        stop = threading.Event()
        loop = threading.Thread(target=sort_frames, args=(setup.state, frames),
                                kwargs=dict(out=out, poll_s=0.01, stop=stop.is_set))
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
            assert str(setup.agent(server.url).check_once()) == "activated release 2"
            for i in range(3, 6):
                drop(i)
        finally:
            stop.set()
            loop.join(timeout=10)
    lines = emitted()
    assert [line["file"] for line in lines] == [f"frame{i}.jpg" for i in range(6)]
    assert [line["model_release"] for line in lines] == [1, 1, 1, 2, 2, 2]


def test_10_kill_9_at_every_point_of_an_update_never_leaves_a_partial_active_model(setup, tmp_path):
    """30 trials: kill -9 the agent at each point of an update (it reports where it is), restart, check.

    25 trials stop the agent at a named point (mid-download with a partial file, staged, renamed
    into releases/, `previous` switched, `active` switched) and kill it there: 5 at each, always.
    5 more kill it at a random moment and record where it was.
    """
    rng = random.Random(1234)
    report = tmp_path / "fault-points.txt"
    aimed = {point: 0 for point in FAULT_POINTS}
    random_hits = []
    with ServerThread(setup.repo_path, rate_kbps=4000) as server:
        command = [sys.executable, "-m", "edgeopt", "device", "run", "--server", server.url, "--state", str(setup.state),
                   "--root", str(setup.root), "--once", "--device-id", "killed"]
        for trial in range(30):
            before = setup.active()
            active = DeviceState.complete(setup.state / "active")
            # the device keeps only its active release here: a model it holds would be reused from
            # releases/ (nothing downloaded, no download to kill), and every update below downloads
            for folder in (setup.state / "releases").glob("*"):  # none before the first check
                if os.path.realpath(folder) != os.path.realpath(setup.state / "active"):
                    shutil.rmtree(folder)
            # always a model other than the active one: every point of an update is on its way
            other = 1 if active and active["model"]["sha256"] == setup.model_sha(0) else 0
            published = setup.publish(other)["release"]
            report.write_text("")
            target = FAULT_POINTS[trial % len(FAULT_POINTS)] if trial < 25 else None
            env = {**os.environ, FAULT_REPORT_ENV: str(report), **({FAULT_STOP_ENV: target} if target else {})}
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if target:
                deadline = time.monotonic() + 60
                while target not in report.read_text().split() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
            else:
                time.sleep(rng.uniform(0.2, 2.0))
            proc.send_signal(signal.SIGKILL)
            output = proc.communicate(timeout=10)[0]
            reached = report.read_text().split()
            if target:
                assert reached and reached[-1] == target, (trial, target, reached, output[-2000:])
                aimed[target] += 1
            else:
                random_hits.append(reached[-1] if reached else "before download")
            after = setup.active()
            assert after in (before, published), (trial, target, before, after)
        final = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert final.returncode == 0, final.stderr
    assert setup.active() == 30
    assert aimed == {point: 5 for point in FAULT_POINTS}
    print(f"kill -9 trials: aimed {aimed}, random {random_hits}")


def test_a_fleet_benchmark_job_is_run_when_idle_and_chosen_from_by_device_class(setup, tmp_path):
    from edgeopt.choose import choose_for_device, fleet_results, pool_devices
    from edgeopt.objective import Objective

    run = setup.runs[0][0]
    setup.publish(0)
    job = setup.repo.publish_job(setup.keys, run, ("f0_float32", "f1_dynamic_range", "f4_float16"))
    enroll_device(setup.repo_path, "sorter-1", tmp_path / "device.key")
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url, key_file=tmp_path / "device.key", device_class="pi-class")
        assert str(agent.check_once()) == "activated release 1"
        assert str(agent.check_once()) == "up-to-date"  # idle: the job runs now
        assert any(e["event"] == "bench-job-done" for e in log_events(setup))
        assert str(agent.check_once()) == "up-to-date"
    assert sum(e["event"] == "bench-job-done" for e in log_events(setup)) == 1  # once per job
    import hashlib

    run_sha = hashlib.sha256((run / "results.json").read_bytes()).hexdigest()
    classes = fleet_results(setup.repo_path, run_sha)
    assert list(classes) == ["pi-class"] and job["variants"] == ["f0_float32", "f1_dynamic_range", "f4_float16"]
    device = pool_devices(classes["pi-class"])
    assert [v.name for v in device.variants] == job["variants"] and "labelled samples" in device.data.split_note
    chosen = choose_for_device(load_results(run), run_sha, device, Objective())
    assert chosen.choice.selected in job["variants"] and chosen.choice.target == ["litert"]
    cli = subprocess.run([sys.executable, "-m", "edgeopt", "choose", str(run), "--fleet", str(setup.repo_path),
                          "--device-class", "pi-class"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("pi-class (1 device(s)):")


def test_models_travel_compressed_and_are_checked_after_decompression(setup, monkeypatch):
    published = setup.publish(0)
    assert published["length"] < published["uncompressed_length"]  # fewer bytes on the wire
    run, variant = setup.runs[0]
    recorded = {v.name: v for v in load_results(run).variants}[variant]
    assert published["length"] == recorded.transfer_bytes  # what optimize reported as "zstd KB" is what is sent
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        record = DeviceState.complete(setup.state / "active")
        assert record["model"]["length"] == published["uncompressed_length"] and record["download"]["compression"] == "zstd"
        # signed, but the uncompressed hash does not match what the file unpacks to (a bomb, or a bad publish)
        model, labels, custom = release_custom(*setup.runs[1])
        real = setup.repo.publish_release

        def lying(keys, channel, model, labels, custom, compress=True):
            out = real(keys, channel, model, labels, custom, compress)
            role = setup.repo.load(channel)
            role.signed.targets[f"{channel}/model"].unrecognized_fields["custom"]["uncompressed"]["length"] = 1000
            role.signed.version += 1
            setup.repo._sign(role, "channel-stable", setup.keys)
            setup.repo._write(role, channel)
            setup.repo._snapshot_and_timestamp(setup.keys, {channel: role.signed.version})
            return out

        lying(setup.keys, "stable", model, labels, custom)
        first = setup.agent(server.url).check_once()
        assert first.kind == "retry" and "decompressed model does not match" in str(first)
        assert not any(p.stat().st_size > 1000 for p in setup.state.rglob("model.tflite.part"))
        assert setup.agent(server.url).check_once().refused  # the second time: refused for good
        setup.repo.publish_release(setup.keys, "stable", model, labels, custom, compress=False)  # plain works too
        assert str(setup.agent(server.url).check_once()) == "activated release 3"
    assert setup.active() == 3


def test_a_server_that_trickles_its_headers_cannot_hold_the_agent(setup, tmp_path, monkeypatch):
    """Headers sent a byte at a time, each within the read timeout, never reach the pace check
    (it counts body chunks): every exchange -- metadata, downloads, reports -- has a wall clock."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed: the test is over
                return
            def trickle(conn=conn):
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    while not stop.is_set():
                        try:
                            conn.sendall(b"X")  # a header line that never ends
                        except OSError:
                            return
                        time.sleep(0.3)
            threading.Thread(target=trickle, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setattr(update_module, "METADATA_BUDGET_BYTES", 0)
    monkeypatch.setattr(report_module, "REPORT_S", 2.0)
    generate_device_key(tmp_path / "device.key")
    # a minimum rate the trickle keeps up with: the deadline, counted from the first byte, cuts it
    agent = setup.agent(url, limits=Limits(timeout_s=5, min_rate_bps=1, rate_window_s=1.0, deadline_base_s=2),
                        key_file=tmp_path / "device.key")
    try:
        started = time.monotonic()
        outcome = agent.check_once()  # the metadata, then the report of the retry
        assert outcome.kind == "retry" and "not done within 2 s" in str(outcome), outcome
        assert time.monotonic() - started < 12
    finally:
        stop.set()
        listener.close()


def test_a_release_that_only_corrects_the_labels_is_installed(setup, tmp_path):
    setup.publish(0)
    with ServerThread(setup.repo_path) as server:
        assert str(setup.agent(server.url).check_once()) == "activated release 1"
        model, labels, custom = release_custom(*setup.runs[0])
        fixed = tmp_path / "labels.json"
        content = json.loads(labels.read_text())
        content["classes"] = [c.upper() for c in content["classes"]]
        fixed.write_text(json.dumps(content))
        setup.repo.publish_release(setup.keys, "stable", model, fixed, custom)
        assert str(setup.agent(server.url).check_once()) == "activated release 2"
    active = json.loads((setup.state / "active" / "labels.json").read_text())
    assert active["classes"] == content["classes"]


def test_a_failing_benchmark_job_backs_off_and_a_static_server_keeps_the_results_on_the_device(setup, tmp_path):
    run = setup.runs[0][0]
    setup.publish(0)
    setup.repo.publish_job(setup.keys, run, ("f0_float32", "f4_float16"))
    generate_device_key(tmp_path / "device.key")
    with StaticServer(setup.repo_path) as static:  # no /bench: 501 or 404 to a POST
        agent = setup.agent(static.url, key_file=tmp_path / "device.key")
        assert str(agent.check_once()) == "activated release 1"
        assert str(agent.check_once()) == "up-to-date"
    done = [e for e in log_events(setup) if e["event"] == "bench-job-done"]
    assert len(done) == 1 and Path(done[0]["kept"]).is_file()

    job = setup.repo.publish_job(setup.keys, run, ("f0_float32", "f1_dynamic_range"))
    shutil.rmtree(setup.state / "samples" / "carton")
    (setup.state / "samples" / "not_a_class").mkdir()  # a sample class the model does not know: the job fails
    shutil.copy(next((setup.state / "samples" / "tin_can").iterdir()), setup.state / "samples" / "not_a_class")
    with ServerThread(setup.repo_path) as server:
        agent = setup.agent(server.url)
        for _ in range(3):
            assert str(agent.check_once()) == "up-to-date"
    failed = [e for e in log_events(setup) if e["event"] in ("bench-job-failed", "bench-job-abandoned")]
    assert len(failed) == 1 and failed[0]["attempts"] == 1, failed  # not again at every check: it waits
    assert job["variants"] == ["f0_float32", "f1_dynamic_range"] and not list((setup.state / "staging").glob("job-*"))


def test_refresh_renews_root_and_targets_when_due_and_warns_without_their_keys(setup, tmp_path, monkeypatch):
    soon = repository_module._now() + dt.timedelta(days=400)  # a year on: root and targets are due
    monkeypatch.setattr(repository_module, "_now", lambda: soon)
    online = tmp_path / "online-keys"  # what a cron machine holds: no root, no targets key
    online.mkdir()
    for name in ("snapshot.key", "timestamp.key", "channel-stable.key", "channel-beta.key"):
        shutil.copy(setup.keys / name, online / name)
    renewed, warnings = setup.repo.refresh(online)
    assert "root" not in renewed and "targets" not in renewed
    assert [w.split(" ")[0] for w in warnings] == ["root", "targets"]
    renewed, warnings = setup.repo.refresh(setup.keys)
    assert {"root", "targets", "snapshot", "timestamp"} <= set(renewed) and warnings == []
    assert setup.repo.load("root").signed.expires > soon + dt.timedelta(days=300)
    assert setup.repo.load("targets").signed.expires > soon + dt.timedelta(days=300)
