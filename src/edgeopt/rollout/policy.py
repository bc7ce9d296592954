"""Staged rollout policy: what counts as a stage's evidence, and when a stage is promoted or the
whole rollout halted.

Pure functions of (device evidence, rollout state, now): no I/O, no clock, no randomness, so
`edgeopt rollout watch`, the tests and the 10,000-device simulation of bench/fleet.py run the same
code. Shares are whole parts per million (signed TUF metadata holds no floats).

Who a stage reaches (buckets, the signed share, stages) is rollout.shares, re-exported here.

What counts as a stage's evidence is decided here, not by the devices: a device's report counts
when the server places the device in the stage (its bucket, computed from the signed rollout's
model hash and the device's id) -- or, outside it, when it had no model before (it installs any
share above 0) -- and it runs the release only when the model hash it reports is the release's.
(The caller drops reports of devices that are not enrolled or were revoked.)

A stage is promoted when it has soaked for its time and enough of its devices run the release
healthy: installed, smoke-tested, and (when `min_frames` > 0) classified at least `min_frames`
frames in service with a mean top-1 confidence, share of low-confidence frames and p90 latency
within bounds of the model the same device ran before. The rollout halts when installs or smoke
tests fail above `max_failure_rate`, or the medians of the devices' paired in-service changes are
worse than allowed. Every verdict -- promote or halt -- rests on at least `min_reports` devices; a
stage that holds fewer gets one only from all of its devices, each reporting since the stage
began. A stage none of whose devices reported waits -- unless `allow_empty_stage`, or at least
`min_reports` devices outside it reported since it began (the reports arrive; the stage, a small
share of a small fleet, holds none of the devices): then it is promoted on its soak time. The last
stage holds every device, so a rollout never completes on no evidence but by `allow_empty_stage`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edgeopt.rollout.shares import (  # noqa: F401  (re-exported: callers read them from the policy)
    DEFAULT_STAGES_PPM,
    PPM,
    bucket,
    bucket_ppm,
    held_back,
    in_share,
    model_sha256,
    parse_stages,
    percent,
    signed_share_ppm,
)

# Install results a device reports (fleet.report.InstallOutcome) that count against the release; a
# failed download does not: a device cannot tell a bad network from a bad upload.
FAILED_OUTCOMES = frozenset({"smoke-test-failed", "rolled-back", "refused"})
Status = Literal["starting", "running", "paused", "halted", "aborted", "complete", "superseded"]
ACTIVE: frozenset[str] = frozenset({"running", "paused"})


@dataclass(frozen=True)
class Criteria:
    # Share of the stage's installs that may fail (smoke test, post-switch check, refusal) before it halts.
    max_failure_rate: float = 0.10
    # Devices whose evidence a verdict needs (a stage that holds fewer: all of them, reporting since it began).
    min_reports: int = 5
    # In-service frames a device's window needs before its health counts; 0: health is not required.
    min_frames: int = 50
    # Largest fall of mean top-1 confidence, new model against the same device's model before (0..1).
    max_confidence_drop: float = 0.10
    # Largest rise of the share of low-confidence frames against the model before (0..1).
    max_low_confidence_rise: float = 0.15
    # Largest in-service p90 latency, as a multiple of the model before's on the same device.
    max_latency_ratio: float = 1.5
    # Share of the stage's devices that must run the release healthy before it is promoted.
    promote_share: float = 0.9
    # Promote a stage none of whose devices reported once it soaked (fleets whose devices do not
    # report); False: such a stage waits, and says so.
    allow_empty_stage: bool = False

    def check(self) -> Criteria:
        figures = (self.max_failure_rate, self.max_confidence_drop, self.max_low_confidence_rise, self.max_latency_ratio,
                   self.promote_share)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in figures):
            raise ValueError("--max-failure-rate, --max-confidence-drop, --max-low-confidence-rise, --max-latency-ratio "
                             "and --promote-share must be finite numbers, e.g. 0.1")
        if not 0 <= self.max_failure_rate < 1:
            raise ValueError("--max-failure-rate must be in [0, 1), e.g. 0.1")
        if self.min_reports < 1 or self.min_frames < 0:
            raise ValueError("--min-reports must be >= 1 and --min-frames >= 0")
        if not 0 < self.max_confidence_drop <= 1 or not 0 < self.max_low_confidence_rise <= 1:
            raise ValueError("--max-confidence-drop and --max-low-confidence-rise must be in (0, 1]")
        if self.max_latency_ratio <= 1 or not 0 < self.promote_share <= 1:
            raise ValueError("--max-latency-ratio must be > 1 and --promote-share in (0, 1]")
        return self


@dataclass(frozen=True)
class Window:
    """A device's in-service figures for one model over its recent frames."""

    frames: int
    latency_ms_p50: float
    latency_ms_p90: float
    mean_confidence: float
    low_confidence_share: float


@dataclass(frozen=True)
class Evidence:
    """What one device's latest report says about the rollout's release."""

    device_id: str
    # The server's time of the report (seconds since the epoch).
    reported_at: float
    # The active release, None when the device has none.
    active_release: int | None
    # The device's last install attempt: (release, result), result as fleet.report.InstallOutcome's.
    install: tuple[int, str] | None = None
    # In-service windows per release: the active one's, and the one before it on the same device.
    windows: Mapping[int, Window] = field(default_factory=dict)
    # The sha256 of the model the device runs: it runs the rollout's release only when this is its hash.
    active_sha256: str | None = None
    # The release active before; None when the device had none (or did not say).
    previous_release: int | None = None

    def outcome(self, release: int) -> str | None:
        return self.install[1] if self.install is not None and self.install[0] == release else None


@dataclass(frozen=True)
class RolloutState:
    """One channel's rollout; written whole by rollout.control after every change."""

    channel: str
    release: int
    model_sha256: str
    stages_ppm: tuple[int, ...]
    # Seconds each stage soaks before it may be promoted (one per stage).
    soak_s: tuple[float, ...]
    criteria: Criteria
    started: float
    stage: int = 0
    stage_started: float = 0.0
    status: Status = "running"
    reason: str = ""
    # The release the channel had before (None: the channel was empty): what a halt publishes again.
    previous_release: int | None = None
    previous_sha256: str | None = None
    # The channel metadata version that held the previous release (its target files are kept).
    previous_version: int | None = None
    history: tuple[dict[str, Any], ...] = ()
    # Lifetime of every timestamp signed while the rollout runs (seconds): how long a stale mirror can
    # still serve metadata from before a halt (docs/rollout.md).
    timestamp_expiry_s: float = 7200.0

    @property
    def share_ppm(self) -> int:
        return self.stages_ppm[self.stage]

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        values = dict(data)
        values["stages_ppm"] = tuple(int(s) for s in values["stages_ppm"])
        values["soak_s"] = tuple(float(s) for s in values["soak_s"])
        values["criteria"] = Criteria(**values["criteria"])
        values["history"] = tuple(values.get("history", ()))
        return cls(**values)

    def moved(self, now: float, event: str, reason: str, **changes: Any) -> RolloutState:
        """The state after an event, with the event in its history."""
        entry = {"time": now, "event": event, "stage": changes.get("stage", self.stage), "reason": reason}
        return replace(self, **changes, reason=reason, history=(*self.history, entry))


@dataclass(frozen=True)
class StageStats:
    # Reporting devices of the stage: inside its share, or outside it with no model before and an attempt.
    population: int
    attempted: int
    failed: int
    running: int
    healthy: int
    # Devices with enough frames under both the new model and the one before.
    paired: int
    confidence_drop: float | None = None
    low_confidence_rise: float | None = None
    latency_ratio: float | None = None
    failed_devices: tuple[str, ...] = ()
    # Devices of the stage whose latest report came after the stage began.
    reported_since_start: int = 0
    # Devices whose evidence was given, in the stage or not, and those of them reporting since the stage began.
    known: int = 0
    known_since_start: int = 0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0


Action = Literal["wait", "promote", "halt", "complete"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    stats: StageStats | None = None


def _paired(evidence: Evidence, state: RolloutState) -> tuple[Window, Window] | None:
    """(new, before) windows of a device, each with enough frames, or None."""
    new = evidence.windows.get(state.release)
    if new is None or new.frames < max(1, state.criteria.min_frames):
        return None
    before = evidence.windows.get(state.previous_release) if state.previous_release is not None else None
    if before is None:  # the model the device ran before, if not the channel's previous release
        others = [w for release, w in evidence.windows.items() if release != state.release]
        before = max(others, key=lambda w: w.frames, default=None)
    if before is None or before.frames < max(1, state.criteria.min_frames):
        return None
    return new, before


def runs(evidence: Evidence, state: RolloutState) -> bool:
    """Whether the device runs the rollout's release: its number, and the model hash it reports."""
    return evidence.active_release == state.release and evidence.active_sha256 == state.model_sha256


def member(evidence: Evidence, state: RolloutState) -> bool:
    """Whether the device's evidence counts for the current stage: the server places it inside the
    share; outside it, only a device that had no model before (it installs any share above 0) and
    says it tried the release. A device that merely claims the release cannot join the stage."""
    if in_share(evidence.device_id, state.model_sha256, state.share_ppm):
        return True
    return (evidence.previous_release is None and evidence.active_release in (None, state.release)
            and evidence.outcome(state.release) is not None)


def _healthy(evidence: Evidence, state: RolloutState) -> bool:
    c = state.criteria
    if not runs(evidence, state):
        return False
    if c.min_frames == 0:
        return True
    new = evidence.windows.get(state.release)
    if new is None or new.frames < c.min_frames:
        return False
    pair = _paired(evidence, state)
    if pair is None:
        return True
    new, before = pair
    return (before.mean_confidence - new.mean_confidence <= c.max_confidence_drop
            and new.low_confidence_share - before.low_confidence_share <= c.max_low_confidence_rise
            and (before.latency_ms_p90 <= 0 or new.latency_ms_p90 / before.latency_ms_p90 <= c.max_latency_ratio))


def measure_stage(state: RolloutState, evidence: Iterable[Evidence]) -> StageStats:
    population = attempted = failed = running = healthy = since = known = known_since = 0
    pairs: list[tuple[Window, Window]] = []
    failed_devices = []
    for e in evidence:
        known += 1
        known_since += e.reported_at >= state.stage_started
        if not member(e, state):
            continue
        outcome = e.outcome(state.release)
        running_it = runs(e, state)
        population += 1
        since += e.reported_at >= state.stage_started
        if outcome not in (None, "download-failed") or running_it:
            attempted += 1
        if outcome in FAILED_OUTCOMES:
            failed += 1
            failed_devices.append(e.device_id)
            continue
        if running_it:
            running += 1
            healthy += _healthy(e, state)
            if (pair := _paired(e, state)) is not None:
                pairs.append(pair)
    stats = StageStats(population, attempted, failed, running, healthy, len(pairs), failed_devices=tuple(sorted(failed_devices)),
                       reported_since_start=since, known=known, known_since_start=known_since)
    if pairs:  # medians: a device or two with figures far off cannot move them, nor hide the rest
        ratios = [n.latency_ms_p90 / b.latency_ms_p90 for n, b in pairs if b.latency_ms_p90 > 0]
        stats = replace(
            stats,
            confidence_drop=statistics.median(b.mean_confidence - n.mean_confidence for n, b in pairs),
            low_confidence_rise=statistics.median(n.low_confidence_share - b.low_confidence_share for n, b in pairs),
            latency_ratio=statistics.median(ratios) if ratios else None,
        )
    return stats


def enough(state: RolloutState, count: int, stats: StageStats) -> bool:
    """A verdict rests on min_reports devices; a stage that holds fewer gets one only from all of
    them (at least one), each reporting since the stage began."""
    if count >= state.criteria.min_reports:
        return True
    return 0 < count == stats.population == stats.reported_since_start


def breach(state: RolloutState, stats: StageStats) -> str | None:
    """Why the rollout must halt, or None."""
    c = state.criteria
    if stats.failed and stats.failure_rate > c.max_failure_rate and enough(state, stats.attempted, stats):
        return (f"install or smoke test failed on {stats.failed} of {stats.attempted} devices "
                f"({stats.failure_rate:.0%}, more than {c.max_failure_rate:.0%} allowed)")
    if stats.paired and enough(state, stats.paired, stats):
        if stats.confidence_drop is not None and stats.confidence_drop > c.max_confidence_drop:
            return (f"mean top-1 confidence in service fell by {stats.confidence_drop:.3f} (median) against the model "
                    f"before on the same {stats.paired} devices (more than {c.max_confidence_drop:g} allowed)")
        if stats.low_confidence_rise is not None and stats.low_confidence_rise > c.max_low_confidence_rise:
            return (f"the share of low-confidence frames rose by {stats.low_confidence_rise:.3f} (median) against the "
                    f"model before on the same {stats.paired} devices (more than {c.max_low_confidence_rise:g} allowed)")
        if stats.latency_ratio is not None and stats.latency_ratio > c.max_latency_ratio:
            return (f"in-service p90 latency is {stats.latency_ratio:.2f}x the model before's (median) on the same "
                    f"{stats.paired} devices (more than {c.max_latency_ratio:g}x allowed)")
    return None


def _short_of_promotion(state: RolloutState, stats: StageStats) -> str | None:
    """Why a soaked stage cannot be promoted yet, or None."""
    c = state.criteria
    if stats.population == 0:  # decide() waits on an empty stage unless allow_empty_stage
        return None
    needed = math.ceil(c.promote_share * stats.population)
    if stats.healthy < needed:
        return f"{stats.healthy} of {stats.population} devices run it healthy; {needed} needed"
    if not enough(state, stats.healthy, stats):
        return (f"{stats.healthy} of {stats.population} devices run it healthy; {c.min_reports} needed (--min-reports), "
                f"or every device of the stage reporting since it began ({stats.reported_since_start} of "
                f"{stats.population} have)")
    return None


def decide(state: RolloutState, evidence: Iterable[Evidence], now: float) -> Decision:
    """What `rollout watch` does now: wait, promote the stage, halt, or mark the rollout complete."""
    if state.status not in ACTIVE:
        return Decision("wait", f"the rollout is {state.status}" + (f": {state.reason}" if state.reason else ""))
    stats = measure_stage(state, evidence)
    why = breach(state, stats)
    if why is not None:
        return Decision("halt", why, stats)
    stage = f"stage {state.stage + 1} of {len(state.stages_ppm)} ({percent(state.share_ppm)})"
    if state.status == "paused":
        return Decision("wait", f"paused at {stage}", stats)
    last = state.stage + 1 == len(state.stages_ppm)
    if stats.population == 0 and not state.criteria.allow_empty_stage \
            and (last or stats.known_since_start < state.criteria.min_reports):
        return Decision("wait", f"{stage}: no device of this stage has reported ({stats.known_since_start} devices "
                                "reported on the channel since it began, none in its share); it waits for one. A fleet "
                                "that does not report: --allow-empty-stage", stats)
    left = state.soak_s[state.stage] - (now - state.stage_started)
    if left > 0:
        return Decision("wait", f"{stage} soaks {math.ceil(left)} s more; {stats.healthy} of {stats.population} devices healthy", stats)
    short = _short_of_promotion(state, stats)
    if short is not None:
        return Decision("wait", f"{stage}: {short}", stats)
    if last:
        return Decision("complete", f"{stats.healthy} of {stats.population} devices run release {state.release} healthy", stats)
    if stats.population == 0:
        return Decision("promote", f"{stage} soaked, holding none of the {stats.known_since_start} devices that reported "
                                   "on the channel since it began (none of them installed it)", stats)
    return Decision("promote", f"{stage} soaked: {stats.healthy} of {stats.population} devices healthy", stats)


def window_from(data: Mapping[str, Any] | None) -> Window | None:
    """A report's in-service window (fleet.report.ServiceWindow, as a dict), or None when it has
    no usable figures."""
    if not data:
        return None
    try:
        window = Window(int(data["frames"]), float(data["latency_p50_ms"]), float(data["latency_p90_ms"]),
                        float(data["mean_confidence"]), float(data["low_confidence_share"]))
    except (KeyError, TypeError, ValueError):
        return None
    figures = (window.latency_ms_p90, window.mean_confidence, window.low_confidence_share)
    return window if window.frames > 0 and all(math.isfinite(v) for v in figures) else None


def evidence_from(report: Mapping[str, Any], reported_at: float) -> Evidence:
    """A device report (fleet.report.DeviceReport as a dict) as evidence; what it lacks is absent."""
    install = report.get("install")
    last = (int(install["release"]), str(install["result"])) if isinstance(install, Mapping) else None
    windows = {}
    for key in ("previous_service", "service"):  # the active release's window wins a tie
        entry = report.get(key)
        if isinstance(entry, Mapping) and isinstance(entry.get("release"), int) and (w := window_from(entry)):
            windows[entry["release"]] = w
    return Evidence(str(report["device_id"]), reported_at, report.get("active_release"), last, windows,
                    report.get("active_sha256"), report.get("previous_release"))
