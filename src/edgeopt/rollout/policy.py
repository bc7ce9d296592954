"""Staged rollout policy: which devices a stage reaches, and when a stage is promoted or the whole
rollout halted.

Pure functions of (device evidence, rollout state, now): no I/O, no clock, no randomness, so
`edgeopt rollout watch`, the tests and the 10,000-device simulation of bench/fleet.py run the same
code. Shares are whole parts per million (signed TUF metadata holds no floats).

A device's bucket is a stable hash of its id and the release's model sha256, in [0, 1): it is in a
stage when its bucket is below the stage's share. The same device stays in every later stage of the
release, and each release draws a different first 1 %.

A stage is promoted when it has soaked for its time and enough of its devices run the release
healthy: installed, smoke-tested, and (when `min_frames` > 0) classified at least `min_frames`
frames in service with a mean top-1 confidence, share of low-confidence frames and p90 latency
within bounds of the model the same device ran before. The rollout halts when a breach is shown by
at least `min_reports` devices (or the whole stage, when it has fewer): installs or smoke tests
failing above `max_failure_rate`, or the devices' paired in-service figures worse than allowed.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

PPM = 1_000_000
DEFAULT_STAGES_PPM = (10_000, 50_000, 250_000, PPM)
# Install results a device reports (fleet.report.InstallOutcome) that count against the release; a
# failed download does not: a device cannot tell a bad network from a bad upload.
FAILED_OUTCOMES = frozenset({"smoke-test-failed", "rolled-back", "refused"})
Status = Literal["running", "paused", "halted", "aborted", "complete", "superseded"]
ACTIVE: frozenset[str] = frozenset({"running", "paused"})


def bucket_ppm(device_id: str, model_sha256: str) -> int:
    """The device's place in the rollout of this model, in whole parts per million [0, PPM)."""
    digest = hashlib.sha256(f"{model_sha256}/{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") * PPM) >> 64


def bucket(device_id: str, model_sha256: str) -> float:
    """The same place as a fraction in [0, 1), for people."""
    return bucket_ppm(device_id, model_sha256) / PPM


def in_share(device_id: str, model_sha256: str, share_ppm: int) -> bool:
    return share_ppm >= PPM or bucket_ppm(device_id, model_sha256) < share_ppm


def model_sha256(target: Any) -> str:
    """The model's own sha256 (the uncompressed one of a zstd target): what identifies a release on a device."""
    custom = target.custom or {}
    plain = custom.get("uncompressed") if custom.get("compression") else None
    return str(plain.get("sha256", "")) if isinstance(plain, dict) else str(target.hashes.get("sha256", ""))


def signed_share_ppm(custom: dict[str, Any] | None) -> int:
    """The share a target's signed custom data grants: PPM without a rollout; 0 (nobody new) when
    the field is malformed, so a broken rollout holds devices rather than widening."""
    rollout = (custom or {}).get("rollout")
    if rollout is None:
        return PPM
    share = rollout.get("share_ppm") if isinstance(rollout, dict) else None
    return share if isinstance(share, int) and not isinstance(share, bool) and 0 <= share <= PPM else 0


def held_back(device_id: str, target: Any, has_model: bool) -> str | None:
    """Why this device does not install the channel's release yet (its signed share does not reach
    the device's bucket), or None. A device without any model is held only by a share of 0: it has
    nothing to keep running."""
    share = signed_share_ppm(target.custom)
    sha = model_sha256(target)
    if share >= PPM or (not has_model and share > 0) or in_share(device_id, sha, share):
        return None
    return (f"release {(target.custom or {}).get('release')} is rolling out to {percent(share)} of devices; this "
            f"device's bucket is {percent(bucket_ppm(device_id, sha))}: it keeps its model until the share reaches it")


def percent(ppm: int) -> str:
    return f"{ppm / 10_000:g} %"


def parse_stages(text: str) -> tuple[int, ...]:
    """'1,5,25,100' (percent) -> shares in ppm; increasing, ending at 100. ValueError says why not."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"stages {text!r} must be percentages separated by commas, e.g. 1,5,25,100") from None
    stages = tuple(round(v * 10_000) for v in values)
    if not stages or stages[-1] != PPM or any(not 0 < s <= PPM for s in stages) \
            or any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise ValueError(f"stages {text!r} must increase, each above 0, and end at 100, e.g. 1,5,25,100")
    return stages


@dataclass(frozen=True)
class Criteria:
    # Share of the stage's installs that may fail (smoke test, post-switch check, refusal) before it halts.
    max_failure_rate: float = 0.10
    # Devices whose evidence a verdict needs (the whole stage when it has fewer).
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

    def check(self) -> Criteria:
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
    # Known devices in the stage's share, plus any outside it that tried the release.
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


def _healthy(evidence: Evidence, state: RolloutState) -> bool:
    c = state.criteria
    if evidence.active_release != state.release:
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
    population = attempted = failed = running = healthy = 0
    pairs: list[tuple[Window, Window]] = []
    failed_devices = []
    for e in evidence:
        outcome = e.outcome(state.release)
        runs = e.active_release == state.release
        if not in_share(e.device_id, state.model_sha256, state.share_ppm) and outcome is None and not runs:
            continue
        population += 1
        if outcome not in (None, "download-failed") or runs:
            attempted += 1
        if outcome in FAILED_OUTCOMES:
            failed += 1
            failed_devices.append(e.device_id)
            continue
        if runs:
            running += 1
            healthy += _healthy(e, state)
            if (pair := _paired(e, state)) is not None:
                pairs.append(pair)
    stats = StageStats(population, attempted, failed, running, healthy, len(pairs), failed_devices=tuple(sorted(failed_devices)))
    if pairs:
        stats = replace(
            stats,
            confidence_drop=statistics.fmean(b.mean_confidence - n.mean_confidence for n, b in pairs),
            low_confidence_rise=statistics.fmean(n.low_confidence_share - b.low_confidence_share for n, b in pairs),
            latency_ratio=statistics.median(n.latency_ms_p90 / b.latency_ms_p90 for n, b in pairs if b.latency_ms_p90 > 0)
            if any(b.latency_ms_p90 > 0 for _, b in pairs) else None,
        )
    return stats


def enough(state: RolloutState, count: int, population: int) -> bool:
    """A verdict needs min_reports devices, or the whole stage when it has fewer (and at least one)."""
    return count >= max(1, min(state.criteria.min_reports, population))


def breach(state: RolloutState, stats: StageStats) -> str | None:
    """Why the rollout must halt, or None."""
    c = state.criteria
    if enough(state, stats.attempted, stats.population) and stats.failed and stats.failure_rate > c.max_failure_rate:
        return (f"install or smoke test failed on {stats.failed} of {stats.attempted} devices "
                f"({stats.failure_rate:.0%}, more than {c.max_failure_rate:.0%} allowed)")
    if stats.paired and enough(state, stats.paired, stats.population):
        if stats.confidence_drop is not None and stats.confidence_drop > c.max_confidence_drop:
            return (f"mean top-1 confidence in service fell by {stats.confidence_drop:.3f} against the model before "
                    f"on the same {stats.paired} devices (more than {c.max_confidence_drop:g} allowed)")
        if stats.low_confidence_rise is not None and stats.low_confidence_rise > c.max_low_confidence_rise:
            return (f"the share of low-confidence frames rose by {stats.low_confidence_rise:.3f} against the model "
                    f"before on the same {stats.paired} devices (more than {c.max_low_confidence_rise:g} allowed)")
        if stats.latency_ratio is not None and stats.latency_ratio > c.max_latency_ratio:
            return (f"in-service p90 latency is {stats.latency_ratio:.2f}x the model before's on the same "
                    f"{stats.paired} devices (more than {c.max_latency_ratio:g}x allowed)")
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
    left = state.soak_s[state.stage] - (now - state.stage_started)
    if left > 0:
        return Decision("wait", f"{stage} soaks {math.ceil(left)} s more; {stats.healthy} of {stats.population} devices healthy", stats)
    needed = max(math.ceil(state.criteria.promote_share * stats.population), min(state.criteria.min_reports, stats.population))
    if stats.healthy < needed:
        return Decision("wait", f"{stage}: {stats.healthy} of {stats.population} devices run it healthy; {needed} needed", stats)
    if state.stage + 1 == len(state.stages_ppm):
        return Decision("complete", f"{stats.healthy} of {stats.population} devices run release {state.release} healthy", stats)
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
    return Evidence(str(report["device_id"]), reported_at, report.get("active_release"), last, windows)
