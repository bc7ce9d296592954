"""The agent's loop against real servers on 127.0.0.1, with a simulated clock (no real waits):
an idle check costs one small request, a change is still seen, Retry-After is honoured, and
nothing a check raises ends the loop."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import replace

import pytest

from edgeopt.device.poll import LoopConfig, run_agent
from edgeopt.device.schedule import PollPolicy
from tests.delivery_helpers import Clock, HostileServer, ServerThread, StaticServer
from tests.test_rollout import Fleet, active_sha

pytest.importorskip("onnxruntime")


@pytest.fixture
def fleet(tmp_path):
    return Fleet(tmp_path)


@pytest.mark.parametrize("server_kind", [StaticServer, ServerThread])
def test_an_idle_check_is_one_conditional_request_for_the_timestamp(fleet, server_kind):
    """Python's http.server (Last-Modified) and `edgeopt serve` (ETag) both answer 304."""
    clock = Clock()
    config = LoopConfig(policy=PollPolicy(interval_s=60.0), report_every_s=1e9)
    with server_kind(fleet.repo_path) as server:
        agent = fleet.agent(server.url, "sorter-1")
        statuses: list[tuple[str, int]] = []
        agent.client.event_hooks["response"] = [lambda r: statuses.append((r.url.path, r.status_code))]
        # a Last-Modified counts as a validator only a second after the change (RFC 9110): the
        # timestamp was re-signed a minute ago
        stamp = fleet.repo_path / "metadata" / "timestamp.json"
        os.utime(stamp, (time.time() - 60, time.time() - 60))
        run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(0), max_checks=6)
        assert active_sha(agent) == fleet.good_sha
        installed = next(i for i, (path, _) in enumerate(statuses) if path.endswith(".labels.json"))
        # the check after an install refreshes fully; the next one learns the validators from a
        # timestamp.json byte for byte the trusted one; from then on an idle check is one 304
        assert statuses[installed + 1:] == [("/metadata/2.root.json", 404), ("/metadata/timestamp.json", 200),
                                            ("/metadata/timestamp.json", 200)] + [("/metadata/timestamp.json", 304)] * 3
        # near the trusted timestamp's expiry (a day), the check is TUF's full one again: a mirror
        # answering 304 forever cannot hide a frozen repository
        statuses.clear()
        clock.now += 23.5 * 3600
        run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(1), max_checks=1)
        assert statuses[0] == ("/metadata/2.root.json", 404)
        # a new release is still seen by the next check
        fleet.start("good", 1, stages=(1_000_000,))
        statuses.clear()
        run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(2), max_checks=1)
        assert active_sha(agent) != fleet.good_sha
        assert ("/metadata/timestamp.json", 200) in statuses and any("/targets/" in p for p, _ in statuses)


def test_503_with_retry_after_is_honoured_with_jitter(fleet):
    clock = Clock()
    attempts: list[float] = []

    def overloaded(path: str, data: bytes | None, headers: dict):
        attempts.append(clock())
        return 503, {"Retry-After": "120"}, b"busy"

    config = LoopConfig(policy=PollPolicy(interval_s=10.0, jitter=0.5, backoff_base_s=1.0), report_every_s=1e9)
    with HostileServer(fleet.repo_path, overloaded) as server:
        agent = fleet.agent(server.url, "sorter-1")
        run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(2), max_checks=5)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False) if b > a]
    assert len(gaps) == 4 and all(120 <= g <= 180 for g in gaps), gaps


def test_unreachable_backs_off_exponentially_with_full_jitter(fleet):
    clock = Clock()
    checks: list[float] = []
    config = LoopConfig(policy=PollPolicy(interval_s=10.0, backoff_base_s=4.0, max_backoff_s=64.0, min_fault_s=1.0),
                        report_every_s=1e9)
    agent = fleet.agent("http://127.0.0.1:9", "sorter-1")
    real = agent.check_once
    agent.check_once = lambda: (checks.append(clock()), real())[1]
    run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(3), max_checks=8)
    gaps = [b - a for a, b in zip(checks, checks[1:], strict=False)]
    ceilings = [4, 8, 16, 32, 64, 64, 64]
    assert all(1.0 <= g <= c + 1.0 for g, c in zip(gaps, ceilings, strict=True)), gaps  # +1: the loop sleeps in whole steps


@pytest.mark.parametrize("where", ["check", "report"])
def test_an_error_nobody_foresaw_never_ends_the_loop(fleet, tmp_path, monkeypatch, where):
    """A bug, or a state file in a shape nobody expected, raising inside a check or while its report
    is built: logged with its traceback, taken as a fault (a back-off, not the interval), and the
    next check goes on -- the loop `device run` runs never ends on it."""
    from edgeopt.device import report as report_module
    from edgeopt.device.state import DeviceState
    from tests.fleet_helpers import enroll_device

    failures = iter([ValueError("nobody expected this")])

    def fails_once(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(*args, **kwargs)

    if where == "check":
        real = DeviceState.recover
        monkeypatch.setattr(DeviceState, "recover", fails_once)  # the first thing a check does
    else:
        real = report_module.report_fields
        monkeypatch.setattr(report_module, "report_fields", fails_once)
    enroll_device(fleet.repo_path, "sorter-1", tmp_path / "device.key")
    clock = Clock()
    config = LoopConfig(policy=PollPolicy(interval_s=600.0, backoff_base_s=4.0, min_fault_s=1.0), report_every_s=1e9)
    with ServerThread(fleet.repo_path) as server:
        agent = fleet.agent(server.url, "sorter-1")
        agent = type(agent)(replace(agent.config, key_file=tmp_path / "device.key"))
        checks: list[tuple[float, str]] = []
        check = agent.check_once

        def noted():
            try:
                outcome = check()
            except Exception as exc:
                checks.append((clock(), type(exc).__name__))
                raise
            checks.append((clock(), outcome.kind))
            return outcome

        agent.check_once = noted
        run_agent(agent, config, clock=clock, sleep=clock.sleep, rng=random.Random(4), max_checks=3)
    events = [json.loads(line)["event"] for line in (agent.state.root / "agent.log").read_text().splitlines()]
    assert active_sha(agent) == fleet.good_sha
    if where == "check":
        assert [kind for _, kind in checks] == ["ValueError", "activated", "up-to-date"] and "internal-error" in events
        assert checks[1][0] - checks[0][0] <= 4.0  # a back-off after the error, not the 600 s interval
    else:  # the install stands; its report is lost, the loop's next one is sent
        assert [kind for _, kind in checks] == ["activated", "up-to-date"] and "report-failed" in events
        from edgeopt.fleet.store import open_store

        with open_store(fleet.repo_path) as store:
            assert store.count_reports("sorter-1") == 1 and store.latest()[0].report.active_sha256 == fleet.good_sha


@pytest.mark.parametrize("retry_after", ["9" * 5000, "\u00b2", "99999999999", "-1", "Tue, 31 Dec 99999 23:59:59 GMT"])
def test_a_hostile_retry_after_never_ends_the_loop(fleet, retry_after):
    """A Retry-After that is no number a device should trust (thousands of digits, a superscript
    digit, a year past any calendar) is ignored or capped: the loop backs off and goes on."""
    clock = Clock()
    attempts: list[float] = []

    def overloaded(path: str, data: bytes | None, headers: dict):
        attempts.append(clock())
        return 503, {"Retry-After": retry_after}, b"busy"

    policy = PollPolicy(interval_s=10.0, jitter=0.5, backoff_base_s=1.0, max_backoff_s=60.0, max_retry_after_s=3600.0)
    with HostileServer(fleet.repo_path, overloaded) as server:
        agent = fleet.agent(server.url, "sorter-1")
        run_agent(agent, LoopConfig(policy=policy, report_every_s=1e9), clock=clock, sleep=clock.sleep,
                  rng=random.Random(5), max_checks=3)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False) if b > a]
    assert len(gaps) == 2 and all(0 < g <= 2 * 3600 for g in gaps), gaps


def test_an_idle_check_whose_headers_trickle_is_cut_by_the_minimum_rate(fleet):
    """The idle check's one small request is held to the same minimum rate as every other fetch,
    from the first byte of its headers: a mirror trickling timestamp.json cannot hold the agent."""
    import threading

    from tests.delivery_helpers import TrickledHeaders

    clock = Clock()
    trickling = threading.Event()

    def hook(path: str, data: bytes | None, headers: dict):
        if trickling.is_set() and path == "/metadata/timestamp.json":
            return 200, {}, TrickledHeaders(0.2)
        return None

    config = LoopConfig(policy=PollPolicy(interval_s=60.0, backoff_base_s=1.0, min_fault_s=1.0), report_every_s=1e9)
    with HostileServer(fleet.repo_path, hook) as server:
        agent = fleet.agent(server.url, "sorter-1")  # at least 2000 B/s over each 5 s window
        kinds: list[str] = []
        real = agent.check_once

        def noted():
            outcome = real()
            kinds.append(outcome.kind)
            if outcome.kind == "up-to-date":  # settled: the next check is the idle one
                trickling.set()
            return outcome

        agent.check_once = noted
        done = threading.Event()
        started = time.monotonic()
        worker = threading.Thread(target=lambda: (run_agent(agent, config, clock=clock, sleep=clock.sleep,
                                                            rng=random.Random(6), max_checks=3), done.set()), daemon=True)
        worker.start()
        assert done.wait(120), "the idle check waited on a trickle of headers"
        seconds = time.monotonic() - started
        trickling.clear()
    events = [json.loads(line) for line in (agent.state.root / "agent.log").read_text().splitlines()]
    assert kinds == ["activated", "up-to-date"]
    cut = [e for e in events if e["event"] == "unreachable" and "timestamp.json" in e.get("error", "")]
    assert cut and "SlowRetrieval" in cut[-1]["error"], events[-3:]
    assert seconds < 100
