"""Staged rollouts end to end: the signed share on a real repository, real agents against a plain
static file server, the sorting loop's in-service health, and `rollout watch` promoting or halting.
No TensorFlow: the models are tiny ONNX classifiers built in code (tests/rollout_helpers.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgeopt.device.agent import Agent, AgentConfig
from edgeopt.device.fetch import Limits
from edgeopt.device.health import report_fields
from edgeopt.device.sort import sort_frames
from edgeopt.device.state import DeviceState
from edgeopt.errors import ConfigError
from edgeopt.methods.base import sha256_of
from edgeopt.release.keys import generate_keys
from edgeopt.release.repository import Repository
from edgeopt.rollout.control import Rollouts
from edgeopt.rollout.policy import PPM, Criteria, evidence_from, in_share
from tests.delivery_helpers import HostileServer, ServerThread, StaticServer
from tests.rollout_helpers import write_frame, write_release

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


class Fleet:
    """A repository with release 1 (a good model) on 'stable', and devices that run it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.keys = tmp, tmp / "keys"
        generate_keys(self.keys, ("stable",))
        self.repo_path = tmp / "repo"
        self.repo = Repository(self.repo_path)
        self.root = self.repo.init(self.keys, ("stable",))
        self.rollouts = Rollouts(self.repo_path)
        self.models = tmp / "models"
        model, labels, custom = write_release(self.models, "good", 0)
        self.repo.publish_release(self.keys, "stable", model, labels, custom)
        self.good_sha = sha256_of(model)

    def agent(self, url: str, device_id: str) -> Agent:
        return Agent(AgentConfig(server=url, state=self.tmp / "devices" / device_id, root=self.root, device_id=device_id,
                                 limits=Limits(timeout_s=10, min_rate_bps=2000, rate_window_s=5.0, deadline_base_s=30)))

    def start(self, kind: str, variant: int = 1, stages=(10_000, PPM), **criteria) -> str:
        model, labels, custom = write_release(self.models, kind, variant)
        # latency in service is not what these tests are about: no bound that this machine's load could breach
        options = dict(min_reports=2, min_frames=5, max_latency_ratio=1e6) | criteria
        self.rollouts.start(self.keys, "stable", model, labels, custom, stages, (0.0,), Criteria(**options), now=1000.0)
        return sha256_of(model)


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


def pick(sha: str, share_ppm: int, inside: bool, count: int = 1) -> list[str]:
    names = (f"sorter-{i}" for i in range(10_000))
    return [n for n in names if in_share(n, sha, share_ppm) == inside][:count]


def active_sha(agent: Agent) -> str | None:
    record = DeviceState(agent.state.root).record_of("active")
    return record["model"]["sha256"] if record else None


def sort_some(agent: Agent, brightness: float, count: int = 6) -> None:
    """The device's sorting loop classifies `count` new frames with its active model."""
    watch = agent.state.root / "camera"
    start = len(list(watch.glob("*.png"))) if watch.is_dir() else 0
    for i in range(start, start + count):
        write_frame(watch / f"frame-{i:04d}.png", brightness, seed=i)
    calls = iter([False, True])
    sort_frames(agent.state.root, watch, out=io.StringIO(), poll_s=0.01, stop=lambda: next(calls))


def evidence(agent: Agent, now: float):
    """What the device's report carries for the rollout (validated as the server would), as evidence."""
    from edgeopt.fleet.report import DeviceReport

    active, previous = agent.state.record_of("active"), agent.state.record_of("previous")
    report = DeviceReport(device_id=agent.config.device_id, channel="stable", active_release=active["release"],
                          active_sha256=active["model"]["sha256"],
                          **report_fields(agent.state.root, active, previous))
    return evidence_from(report.model_dump(), now)


def test_a_device_outside_the_signed_share_keeps_its_model_and_one_inside_installs(fleet):
    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    inside, outside = pick(new, 10_000, True)[0], pick(new, 10_000, False)[0]
    with StaticServer(fleet.repo_path) as server:
        agents = {name: fleet.agent(server.url, name) for name in (inside, outside)}
        assert all(str(a.check_once()) == "activated release 1" for a in agents.values())
        assert fleet.start("good", 1) == new
        assert str(agents[inside].check_once()) == "activated release 2"
        held = agents[outside].check_once()
        assert held.kind == "held" and "1 % of devices" in str(held)
        assert active_sha(agents[outside]) == fleet.good_sha and active_sha(agents[inside]) == new
        assert str(agents[outside].check_once()) == str(held)  # and it keeps polling, still held


def test_a_mirror_cannot_widen_the_stage_share(fleet):
    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    outside = pick(new, 10_000, False)[0]

    def widen(path: str, data: bytes | None, headers: dict):
        if data is None or not path.endswith(".stable.json"):
            return None
        md = json.loads(data)
        for target in md["signed"]["targets"].values():
            if "rollout" in target.get("custom", {}):
                target["custom"]["rollout"]["share_ppm"] = PPM
        return 200, {}, json.dumps(md).encode()

    with StaticServer(fleet.repo_path) as server:
        agent = fleet.agent(server.url, outside)
        assert str(agent.check_once()) == "activated release 1"
    fleet.start("good", 1)
    with HostileServer(fleet.repo_path, widen) as mirror:
        agent = fleet.agent(mirror.url, outside)
        outcome = agent.check_once()
    assert outcome.kind == "refused" and "does not verify" in str(outcome)
    assert active_sha(agent) == fleet.good_sha


def test_abort_publishes_the_previous_model_again_and_every_device_converges_on_it(fleet):
    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    names = pick(new, 500_000, True, 2) + pick(new, 500_000, False, 2)
    with StaticServer(fleet.repo_path) as server:
        agents = [fleet.agent(server.url, n) for n in names]
        for a in agents:
            a.check_once()
        fleet.start("good", 1, stages=(500_000, PPM))
        assert [a.check_once().kind for a in agents] == ["activated", "activated", "held", "held"]
        state = fleet.rollouts.abort(fleet.keys, "stable", now=2000.0, reason="belt 3 jams")
        assert state.status == "aborted" and "release 1 published again as release 3" in state.reason
        assert [a.check_once().kind for a in agents] == ["activated", "activated", "up-to-date", "up-to-date"]
    assert {active_sha(a) for a in agents} == {fleet.good_sha}
    with pytest.raises(ConfigError, match="aborted; start a new one"):
        fleet.rollouts.pause("stable", now=2001.0)


def test_watch_promotes_a_healthy_release_stage_by_stage(fleet):
    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    names = pick(new, 500_000, True, 2) + pick(new, 500_000, False, 2)
    with StaticServer(fleet.repo_path) as server:
        agents = [fleet.agent(server.url, n) for n in names]
        for a in agents:
            a.check_once()
            sort_some(a, 90)
        fleet.start("good", 1, stages=(500_000, PPM))
        for a in agents:
            a.check_once()
            sort_some(a, 90)
        state, decision = fleet.rollouts.watch(fleet.keys, "stable", [evidence(a, 1001.0) for a in agents], now=1001.0)
        assert decision.action == "promote", decision.reason
        assert state.share_ppm == PPM
        assert [a.check_once().kind for a in agents] == ["up-to-date", "up-to-date", "activated", "activated"]
    assert {active_sha(a) for a in agents} == {new}


@pytest.mark.parametrize("kind, why", [("nan", "smoke test failed on 2 of 2"), ("flat", "confidence in service fell")])
def test_watch_halts_a_bad_release_and_every_device_converges_on_the_model_before(fleet, kind, why):
    """'nan' fails the smoke test on devices whose camera sees bright frames; 'flat' passes every
    smoke test but is far less confident in service than the model before on the same devices."""
    new = sha256_of(write_release(fleet.tmp / "peek", kind, 1)[0])
    names = pick(new, 500_000, True, 2) + pick(new, 500_000, False, 2)
    with StaticServer(fleet.repo_path) as server:
        agents = [fleet.agent(server.url, n) for n in names]
        for a in agents:
            write_frame(a.state.root / "samples" / "bright.png", 220)  # the smoke test's sample frame
            a.check_once()
            sort_some(a, 90)
        fleet.start(kind, 1, stages=(500_000, PPM))
        for a in agents:
            a.check_once()
            sort_some(a, 90)
        state, decision = fleet.rollouts.watch(fleet.keys, "stable", [evidence(a, 1001.0) for a in agents], now=1001.0)
        assert decision.action == "halt" and why in decision.reason
        assert state.status == "halted" and "published again as release 3" in state.reason
        for _ in range(2):  # a device whose retry is pending converges on its next check
            for a in agents:
                a.check_once()
    assert {active_sha(a) for a in agents} == {fleet.good_sha}
    log = [json.loads(line) for line in (fleet.repo_path / "rollouts" / "stable.log").read_text().splitlines()]
    assert [e["event"] for e in log] == ["started", "halted"] and why in log[-1]["reason"]


@pytest.mark.parametrize("kept", ["intact", "altered"])
def test_a_device_going_back_to_the_model_before_reuses_it_only_when_its_bytes_match(fleet, kept):
    """After a halt the model before is published again under a new release number (same sha256).
    A device that still holds it in releases/ takes it from there -- nothing downloaded -- after
    checking the bytes against the signed hash; when the kept file's bytes no longer match, whatever
    its folder and release.json say, the model is downloaded again."""
    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    name = pick(new, 500_000, True)[0]
    with HostileServer(fleet.repo_path, lambda path, data, headers: None) as server:  # serves honestly, counts
        agent = fleet.agent(server.url, name)
        assert str(agent.check_once()) == "activated release 1"
        fleet.start("good", 1, stages=(500_000, PPM))
        assert str(agent.check_once()) == "activated release 2"
        kept_model = agent.state.root / "previous" / "model.onnx"
        if kept == "altered":  # same length, one bit off: its release.json still names the signed sha256
            data = bytearray(kept_model.read_bytes())
            data[-1] ^= 1
            kept_model.write_bytes(bytes(data))
        fleet.rollouts.abort(fleet.keys, "stable", now=2000.0)
        server.requests.clear()
        assert str(agent.check_once()) == "activated release 3"
        downloads = [p for p in server.requests if p.startswith("/targets/")]
    assert active_sha(agent) == fleet.good_sha  # record_of checks every file against its record: the bytes are right
    reused = [json.loads(line) for line in (agent.state.root / "agent.log").read_text().splitlines()
              if json.loads(line)["event"] == "reused"]
    if kept == "intact":
        assert downloads == [] and reused[-1]["files"] == ["model.onnx", "labels.json"]
    else:
        assert [p.rsplit(".", 1)[-1] for p in downloads] == ["model"] and reused[-1]["files"] == ["labels.json"]


def test_the_new_releases_window_starts_once_its_install_is_done(fleet, monkeypatch):
    """The sorting loop goes on while the agent installs: frames it classifies during the smoke
    tests (the model before, under the install's load) and after the switch but before the
    post-switch check has passed (the new model) count in neither model's window."""
    from edgeopt.device import activate

    real_smoke_test = activate.smoke_test

    def sorting_meanwhile(*args, **kwargs):
        sort_some(agent, 90, count=3)  # with whatever model is active at this moment
        return real_smoke_test(*args, **kwargs)

    with StaticServer(fleet.repo_path) as server:
        agent = fleet.agent(server.url, "sorter-1")
        assert str(agent.check_once()) == "activated release 1"
        sort_some(agent, 90, count=6)
        fleet.start("good", 1, stages=(PPM,))
        monkeypatch.setattr(activate, "smoke_test", sorting_meanwhile)
        assert str(agent.check_once()) == "activated release 2"
        monkeypatch.undo()
        health = json.loads((agent.state.root / "health.json").read_text())["models"]
        assert [len(health[sha]["frames"]) for sha in (fleet.good_sha, active_sha(agent))] == [9, 3]  # all recorded
        fields = report_fields(agent.state.root, agent.state.record_of("active"), agent.state.record_of("previous"))
        assert fields["service"] is None and fields["previous_service"]["frames"] == 6
        sort_some(agent, 90, count=4)
        fields = report_fields(agent.state.root, agent.state.record_of("active"), agent.state.record_of("previous"))
    assert fields["service"]["frames"] == 4 and fields["previous_service"]["frames"] == 6


def edgeopt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeopt", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_reports_through_the_server_drive_rollout_watch_and_fleet_show(fleet):
    """Agents sign their reports to `edgeopt serve`; the fleet database holds them; `rollout watch`
    (the CLI, one pass as cron runs it) promotes from them, and `fleet show` says where it stands."""
    from tests.fleet_helpers import enroll_device

    new = sha256_of(write_release(fleet.tmp / "peek", "good", 1)[0])
    names = pick(new, 500_000, True, 2) + pick(new, 500_000, False, 2)
    with ServerThread(fleet.repo_path) as server:
        agents = []
        for name in names:
            enroll_device(fleet.repo_path, name, fleet.tmp / f"{name}.key")
            agents.append(Agent(replace(fleet.agent(server.url, name).config, key_file=fleet.tmp / f"{name}.key")))
        for a in agents:
            a.check_once()
            sort_some(a, 90)
        fleet.start("good", 1, stages=(500_000, PPM))
        for a in agents:
            a.check_once()
            sort_some(a, 90)
            a.report()
        status = edgeopt("rollout", "status", "--repo", fleet.repo_path)
        assert "stage devices 2: 2 tried, 0 failed, 2 run it, 2 healthy; 2 paired" in status.stdout, status.stdout
        watch = edgeopt("rollout", "watch", "--repo", fleet.repo_path, "--keys", fleet.keys)
        assert watch.returncode == 0 and "stable release 2: promote" in watch.stdout, watch.stdout + watch.stderr
        assert [a.check_once().kind for a in agents] == ["up-to-date", "up-to-date", "activated", "activated"]
    shown = edgeopt("fleet", "show", fleet.repo_path)
    assert "rollout stable: release 2 running at stage 2 of 2 (100 %)" in shown.stdout, shown.stdout


def test_pause_resume_and_bad_options_from_the_command_line(fleet):
    fleet.start("good", 1)
    paused = edgeopt("rollout", "pause", "--repo", fleet.repo_path, "--reason", "night shift")
    assert paused.returncode == 0 and "paused at stage 1 of 2 (1 %): night shift" in paused.stdout
    assert "running at stage 1" in edgeopt("rollout", "resume", "--repo", fleet.repo_path).stdout
    for option, fragment in ((("--stages", "5,1"), "must increase"), (("--soak", "soon"), "--soak 'soon'"),
                             (("--max-failure-rate", "2"), "--max-failure-rate must be in [0, 1)")):
        bad = edgeopt("rollout", "start", fleet.tmp, "--repo", fleet.repo_path, "--keys", fleet.keys, *option)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    again = edgeopt("rollout", "abort", "--repo", fleet.repo_path, "--keys", fleet.keys)
    assert again.returncode == 0 and "aborted" in again.stdout


def test_a_release_published_meanwhile_supersedes_the_rollout(fleet):
    fleet.start("good", 1)
    model, labels, custom = write_release(fleet.models, "good", 2)
    fleet.repo.publish_release(fleet.keys, "stable", model, labels, custom)
    state, decision = fleet.rollouts.watch(fleet.keys, "stable", [], now=2000.0)
    assert state.status == "superseded" and "published on the channel meanwhile" in state.reason
    assert fleet.repo.current_release("stable")["release"] == 3  # nothing re-signed over the newer release


def test_halting_a_channels_first_release_withdraws_it(fleet):
    fleet.repo.add_channel(fleet.keys, "beta")
    model, labels, custom = write_release(fleet.models, "good", 1)
    fleet.rollouts.start(fleet.keys, "beta", model, labels, custom, (500_000, PPM), (0.0,), Criteria(), now=0.0)
    state = fleet.rollouts.abort(fleet.keys, "beta", now=1.0)
    assert "withdrawn (share 0)" in state.reason
    assert fleet.repo.current_release("beta")["rollout"]["share_ppm"] == 0
    with StaticServer(fleet.repo_path) as server:
        fresh = Agent(replace(fleet.agent(server.url, "new-1").config, channel="beta"))
        assert fresh.check_once().kind == "held" and active_sha(fresh) is None
