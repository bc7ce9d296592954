"""Part (b) of bench/fleet.py: 10,000 devices on a simulated clock (no real sleeps), driven by the
agent's own schedule (edgeopt.device.schedule), bucket (edgeopt.rollout.policy.in_share) and the
rollout policy that `edgeopt rollout watch` runs (edgeopt.rollout.policy.decide).

What is simulated rather than run: the network (a check is a request; a server of fixed capacity
answers 503 above it), installs (a device installs at its check when its bucket is inside the
share; a "smoke" bad release fails the smoke test on the devices whose camera sees bright frames,
30 % of them), and each device's in-service figures (frames at a fixed rate; a mean top-1
confidence per device, drawn once; a "confidence" bad release is 0.35 less confident on the same
device). Everything that decides -- when to check, who is in a stage, when to promote or halt --
is the real code.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Any

from edgeopt.device.schedule import PollPolicy, Schedule
from edgeopt.rollout.policy import PPM, Criteria, Evidence, RolloutState, Window, decide, in_share

OLD, NEW, AGAIN = 1, 2, 3  # releases: the model before, the one rolled out, the model before published again


class NoJitter:
    """A random source that always draws the top of the range: the schedule without any jitter
    (a fixed interval, and backoff that doubles deterministically, as the agent before issue 32 did)."""

    def uniform(self, a: float, b: float) -> float:
        return b


def restart_storm(devices: int, policy: PollPolicy, jitter: bool, capacity_rps: int, horizon_s: float,
                  seed: int = 0) -> dict[str, Any]:
    """Every device restarts at t=0 and polls (one idle request a check) against a server that
    answers at most `capacity_rps` requests a second, in random order, and 503 to the rest."""
    rng: Any = random.Random(seed) if jitter else NoJitter()
    order = random.Random(seed + 1)  # which of the requests arriving together the server takes first
    schedules = [Schedule(policy) for _ in range(devices)]
    heap = [(s.first(0.0, rng), order.random(), i) for i, s in enumerate(schedules)]
    heapq.heapify(heap)
    offered: collections.Counter[int] = collections.Counter()
    served: collections.Counter[int] = collections.Counter()
    answered = [False] * devices
    unanswered = devices
    all_answered_at = None
    refused = 0
    while heap and heap[0][0] < horizon_s:
        t, _, i = heapq.heappop(heap)
        second = int(t)
        offered[second] += 1
        if served[second] < capacity_rps:
            served[second] += 1
            unanswered -= not answered[i]
            answered[i] = True
            nxt = schedules[i].after_success(t, rng)
            if unanswered == 0 and all_answered_at is None:
                all_answered_at = t
        else:
            refused += 1
            nxt = schedules[i].after_fault(t, rng)
        heapq.heappush(heap, (nxt, order.random(), i))
    return {"jitter": jitter, "devices": devices, "capacity_rps": capacity_rps, "horizon_s": horizon_s,
            "peak_rps": max(offered.values()), "mean_rps": sum(offered.values()) / horizon_s,
            "requests": sum(offered.values()), "refused_503": refused,
            "every_device_answered_after_s": all_answered_at, "never_answered": unanswered}


@dataclass
class Device:
    name: str
    bright: bool  # its camera sees bright frames: the "smoke" bad release fails its smoke test here
    confidence: float  # the good models' mean top-1 confidence on this device's belt
    active: int = OLD
    since: float = -1e9  # when the active release was activated
    previous: int | None = None
    previous_frames: int = 0
    install: tuple[int, str] | None = None
    smoke_failures: int = 0
    got_bad: bool = False  # downloaded the rolled-out release while it was under rollout
    faults: int = 0


def _window(device: Device, release: int, frames: int, bad: str | None) -> Window:
    confidence = device.confidence - (0.35 if bad == "confidence" and release == NEW else 0.0)
    low = max(0.0, min(1.0, 0.05 + (0.9 - confidence)))
    return Window(frames, 3.0, 4.0, confidence, low)


def rollout(devices: int, bad: str | None, stages: tuple[int, ...], soak_s: float, criteria: Criteria,
            policy: PollPolicy, frame_rate: float, watch_every_s: float, horizon_s: float, seed: int = 0) -> dict[str, Any]:
    """One staged rollout of release NEW over `devices` devices running OLD; `bad` None (a good
    release), "smoke" or "confidence". Returns when it completes or halts and every device runs one
    model again, or at the horizon."""
    rng = random.Random(seed)
    sha = hashlib.sha256(f"release-{bad}-{seed}".encode()).hexdigest()
    fleet = [Device(f"dev-{i:05d}", rng.random() < 0.3, min(0.97, max(0.6, rng.gauss(0.88, 0.03)))) for i in range(devices)]
    schedules = [Schedule(policy) for _ in fleet]
    state = RolloutState(channel="stable", release=NEW, model_sha256=sha, stages_ppm=stages, soak_s=(soak_s,) * len(stages),
                         criteria=criteria, started=0.0, stage_started=0.0, previous_release=OLD, previous_sha256="0" * 64,
                         previous_version=1)
    evidence: dict[str, Evidence] = {}
    heap = [(s.first(0.0, rng), i) for i, s in enumerate(schedules)]
    heapq.heapify(heap)
    requests: collections.Counter[int] = collections.Counter()
    stage_times = [0.0]
    next_watch, halted_at, complete_at, converged_at = watch_every_s, None, None, None

    def report(d: Device, t: float) -> None:
        windows = {d.active: _window(d, d.active, int(min(500, frame_rate * (t - d.since))), bad)}
        if d.previous is not None:
            windows[d.previous] = _window(d, d.previous, d.previous_frames, bad)
        active = OLD if d.active == AGAIN else d.active
        evidence[d.name] = Evidence(d.name, t, active, d.install, windows, sha if active == NEW else "0" * 64, d.previous)

    def activate(d: Device, release: int, t: float) -> None:
        d.previous, d.previous_frames = d.active, int(min(500, frame_rate * (t - d.since)))
        d.active, d.since = release, t

    t = 0.0
    while heap:
        t, i = heapq.heappop(heap)
        while next_watch <= t and state.status in ("running", "paused"):  # `rollout watch` from cron
            decision = decide(state, evidence.values(), next_watch)
            if decision.action == "promote":
                state = state.moved(next_watch, "promoted", decision.reason, stage=state.stage + 1, stage_started=next_watch)
                stage_times.append(next_watch)
            elif decision.action == "halt":
                state = state.moved(next_watch, "halted", decision.reason, status="halted")
                halted_at = next_watch
            elif decision.action == "complete":
                state = state.moved(next_watch, "complete", decision.reason, status="complete")
                complete_at = next_watch
            next_watch += watch_every_s
        if t > horizon_s:
            break
        d = fleet[i]
        requests[int(t)] += 1  # the idle check
        if state.status == "halted":
            if d.active == NEW:  # the model before, published again under a new number
                requests[int(t)] += 5
                activate(d, AGAIN, t)
                d.install = (AGAIN, "activated")
        elif d.active == OLD and d.smoke_failures < 2 and (state.share_ppm >= PPM or in_share(d.name, sha, state.share_ppm)):
            requests[int(t)] += 5  # root, timestamp, snapshot, channel metadata, the model (labels unchanged)
            d.got_bad = True
            if bad == "smoke" and d.bright:
                d.smoke_failures += 1
                d.install = (NEW, "smoke-test-failed" if d.smoke_failures == 1 else "refused")
                report(d, t)
                heapq.heappush(heap, (schedules[i].after_fault(t, rng), i))
                continue
            activate(d, NEW, t)
            d.install = (NEW, "activated")
        report(d, t)
        heapq.heappush(heap, (schedules[i].after_success(t, rng), i))
        settled = state.status in ("halted", "complete")
        if settled and converged_at is None and all(x.active in ((NEW,) if state.status == "complete" else (OLD, AGAIN))
                                                    for x in fleet):
            converged_at = t
        if converged_at is not None:
            break
    reached = [sum(in_share(d.name, sha, s) for d in fleet) for s in stages]
    return {
        "bad": bad, "devices": devices, "status": state.status, "reason": state.reason,
        "stage_reached": state.stage + 1, "share_reached_pct": state.share_ppm / 10_000,
        "devices_per_stage": reached, "stage_started_s": stage_times,
        "halted_after_s": halted_at, "complete_after_s": complete_at, "every_device_settled_after_s": converged_at,
        "devices_that_received_it": sum(d.got_bad for d in fleet),
        "devices_that_ran_it": sum(d.active in (NEW,) or d.previous == NEW for d in fleet),
        "peak_rps": max(requests.values()), "mean_rps": sum(requests.values()) / max(t, 1.0),
    }
