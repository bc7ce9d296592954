"""In-service health: what the sorting loop sees of each model it runs, over its recent frames.

The sorting loop (`device sort`, a process of its own) records every frame it classifies -- the
model's sha256, the latency, the top-1 confidence -- and keeps the last WINDOW_FRAMES frames of
each of the last KEEP_MODELS models in <state>/health.json (rewritten whole, atomically, at most
every FLUSH_S seconds and when the loop ends). The agent reads the file for its reports: the
current model's window beside the window of the model the device ran before it, so the release
side compares the two on the same device, belt and camera.

<state>/installs.json keeps the agent's last install attempt (activated, smoke-test-failed,
rolled-back, refused) and counts rollbacks, and <state>/starts.<process> counts the starts of each process (agent, sort):
restarts are reported too.

A window holds frames of normal service only. While an install does its work on the device (the
smoke tests, the switch and the check after it: from the staged release's smoke test until the
install is done, activated or rolled back) the agent competes with the sorting loop for the CPU,
and the new model's first frames are classified before it has passed its post-switch check: the
agent records that interval (installs.json, "busy") and frames classified within it count in no
window. So a new release's window starts once its install is complete, and the model before is not
judged by frames taken under an install's load either.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

HEALTH_FILE = "health.json"
INSTALLS_FILE = "installs.json"
# Frames of each model kept (the window), and models kept.
WINDOW_FRAMES = 500
KEEP_MODELS = 3
# A frame whose top-1 confidence is under this is a low-confidence frame.
LOW_CONFIDENCE = 0.5
# Seconds between writes of health.json while frames come in.
FLUSH_S = 5.0
# Intervals an install was busy, kept: more than the installs (failed attempts included) that the
# windows of KEEP_MODELS models span.
KEEP_BUSY = 10


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, separators=(",", ":")))
    os.replace(tmp, path)


class HealthRecorder:
    """The sorting loop's record of its frames (see module doc). Never raises on a disk fault:
    health is reported best effort, frames are sorted whatever happens to it."""

    def __init__(self, state: Path, window: int = WINDOW_FRAMES, flush_s: float = FLUSH_S) -> None:
        self.path = Path(state) / HEALTH_FILE
        self.window, self.flush_s = window, flush_s
        stored = _read_json(self.path).get("models", {})
        # sha256 -> {"frames": [[time, latency_ms, confidence], ...], "last": time}
        self.models: dict[str, dict[str, Any]] = stored if isinstance(stored, dict) else {}
        self.flushed = -math.inf
        self.dirty = False

    def record(self, model_sha256: str, release: int, latency_ms: float, confidence: float, now: float) -> None:
        entry = self.models.setdefault(model_sha256, {"frames": []})
        entry["release"] = release
        frames = entry["frames"]
        frames.append([round(now, 3), round(float(latency_ms), 3), round(float(confidence), 4)])
        del frames[: max(0, len(frames) - self.window)]
        entry["last"] = now
        self.dirty = True
        if now - self.flushed >= self.flush_s:
            self.flush(now)

    def flush(self, now: float) -> None:
        if not self.dirty:
            return
        newest = sorted(self.models, key=lambda sha: self.models[sha].get("last", 0), reverse=True)[:KEEP_MODELS]
        self.models = {sha: self.models[sha] for sha in newest}
        with contextlib.suppress(OSError):
            _write_json(self.path, {"models": self.models})
            self.flushed, self.dirty = now, False


def summarize(frames: list[list[float]], release: int, model_sha256: str,
              low_confidence: float = LOW_CONFIDENCE) -> dict[str, Any] | None:
    """A window's figures: frames, first and last frame's time, latency p50/p90, mean top-1
    confidence, low-confidence share (the fields of fleet.report.ServiceWindow)."""
    rows = [f for f in frames if isinstance(f, list) and len(f) == 3 and all(isinstance(v, (int, float)) for v in f)]
    if not rows:
        return None
    latencies = sorted(r[1] for r in rows)
    confidences = [r[2] for r in rows]
    if len(latencies) > 1:
        deciles = statistics.quantiles(latencies, n=10, method="inclusive")
        p50, p90 = statistics.median(latencies), deciles[8]
    else:
        p50 = p90 = latencies[0]
    return {
        "release": release, "model_sha256": model_sha256, "start": _iso(rows[0][0]), "end": _iso(rows[-1][0]),
        "frames": len(rows), "latency_p50_ms": round(p50, 3), "latency_p90_ms": round(max(p50, p90), 3),
        "mean_confidence": round(min(1.0, max(0.0, statistics.fmean(confidences))), 4),
        "low_confidence_share": round(sum(c < low_confidence for c in confidences) / len(rows), 4),
        "low_confidence_below": low_confidence,
    }


def service_window(state: Path, model_sha256: str, low_confidence: float = LOW_CONFIDENCE) -> dict[str, Any] | None:
    """The in-service window of one model, as a report carries it (fleet.report.ServiceWindow), or
    None: its frames outside the intervals an install was busy (see module doc)."""
    models = _read_json(Path(state) / HEALTH_FILE).get("models", {})
    entry = models.get(model_sha256) if isinstance(models, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("release"), int):
        return None
    frames = entry.get("frames", [])
    busy = busy_intervals(state)
    if busy and isinstance(frames, list):
        frames = [f for f in frames if not (isinstance(f, list) and f and isinstance(f[0], (int, float))
                                            and any(start <= f[0] <= end for start, end in busy))]
    return summarize(frames, entry["release"], model_sha256, low_confidence)


def record_busy(state: Path, start: float, end: float) -> None:
    """Frames classified from `start` to `end` (an install's work on the device) count in no window.
    Widened to the millisecond frames are stored in, so none rounds its way out. Best effort."""
    path = Path(state) / INSTALLS_FILE
    value = _read_json(path)
    value["busy"] = [*_busy(value), (math.floor(start * 1000) / 1000, math.ceil(end * 1000) / 1000)][-KEEP_BUSY:]
    with contextlib.suppress(OSError):
        _write_json(path, value)


def busy_intervals(state: Path) -> list[tuple[float, float]]:
    """The intervals an install was busy, oldest first (the last KEEP_BUSY)."""
    return _busy(_read_json(Path(state) / INSTALLS_FILE))


def _busy(installs: dict[str, Any]) -> list[tuple[float, float]]:
    busy = installs.get("busy")
    if not isinstance(busy, list):
        return []
    return [(float(b[0]), float(b[1])) for b in busy
            if isinstance(b, list) and len(b) == 2 and all(isinstance(v, (int, float)) for v in b)]


def count_start(state: Path, process: str) -> int:
    """Count one more start of `process` (agent, sort) in <state>/starts.<process>; returns the
    count. A file per process: the two never write the same file. Best effort."""
    path = Path(state) / f"starts.{process}"
    try:
        count = int(path.read_text().strip() or 0) + 1
    except (OSError, ValueError):
        count = 1
    with contextlib.suppress(OSError):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{count}\n")
        os.replace(tmp, path)
    return count


def read_starts(state: Path) -> dict[str, int]:
    """Starts counted per process."""
    counts = {}
    for path in Path(state).glob("starts.*"):
        with contextlib.suppress(OSError, ValueError):
            counts[path.name.removeprefix("starts.")] = int(path.read_text().strip())
    return counts


def record_install(state: Path, release: int, result: str, now: float | None = None, detail: str | None = None) -> None:
    """Remember the agent's last install attempt (fleet.report.InstallOutcome's fields) and count
    rollbacks. Best effort: a disk fault loses a report field, never an install."""
    path = Path(state) / INSTALLS_FILE
    value = _read_json(path)
    smoke = {"activated": "passed", "smoke-test-failed": "failed", "rolled-back": "failed"}.get(result)
    value["last"] = {"release": release, "result": result, "smoke_test": smoke, "time": _iso(now),
                     "detail": detail[:300] if detail else None}
    value["rollbacks"] = int(value.get("rollbacks", 0)) + (result == "rolled-back")
    with contextlib.suppress(OSError):
        _write_json(path, value)


def report_fields(state: Path, active: dict[str, Any] | None, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The health fields of the agent's report: the active and the previous release's in-service
    windows (same device), the last install attempt, rollbacks and restarts."""
    installs = _read_json(Path(state) / INSTALLS_FILE)
    starts = read_starts(state)
    return {
        "previous_release": previous["release"] if previous else None,
        "install": installs.get("last") if isinstance(installs.get("last"), dict) else None,
        "rollbacks": int(installs.get("rollbacks", 0)),
        "restarts": sum(max(0, n - 1) for n in starts.values()),  # every start of a process after its first
        "service": service_window(state, active["model"]["sha256"]) if active else None,
        "previous_service": service_window(state, previous["model"]["sha256"]) if previous else None,
    }


def _iso(when: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
