"""The agent's loop against real servers on 127.0.0.1, with a simulated clock (no real waits):
an idle check costs one small request, a change is still seen, Retry-After is honoured."""

from __future__ import annotations

import os
import random
import time

import pytest

from edgeopt.device.poll import LoopConfig, run_agent
from edgeopt.device.schedule import PollPolicy
from tests.delivery_helpers import HostileServer, ServerThread, StaticServer
from tests.test_rollout import Fleet, active_sha

pytest.importorskip("onnxruntime")


class Clock:
    """Simulated time that starts now (TUF checks expiry against the real date) and moves only when slept."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


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
