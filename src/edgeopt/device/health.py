"""In-service health: what the sorting loop sees of each model it runs, over its recent frames.

The sorting loop (`device sort`, a process of its own) records every frame it classifies -- the
model's sha256, the latency, the top-1 confidence -- and keeps the last WINDOW_FRAMES frames of
each of the last KEEP_MODELS models in <state>/health.json (rewritten whole, atomically, at most
every FLUSH_S seconds and when the loop ends). The agent reads the file for its reports: the
current model's window beside the window of the model the device ran before it, so the release
side compares the two on the same device, belt and camera.

<state>/installs.json keeps the agent's last install outcomes (activated, smoke-failed, rolled-back,
refused) per model, and <state>/starts.<process> counts the starts of each process (agent, sort):
restarts are reported too.
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
# Install outcomes kept (and reported), newest last.
KEEP_INSTALLS = 10
# Frames of each model kept (the window), and models kept.
WINDOW_FRAMES = 500
KEEP_MODELS = 3
# A frame whose top-1 confidence is under this is a low-confidence frame.
LOW_CONFIDENCE = 0.5
# Seconds between writes of health.json while frames come in.
FLUSH_S = 5.0


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

    def record(self, model_sha256: str, latency_ms: float, confidence: float, now: float) -> None:
        entry = self.models.setdefault(model_sha256, {"frames": []})
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


def summarize(frames: list[list[float]], low_confidence: float = LOW_CONFIDENCE) -> dict[str, Any] | None:
    """A window's figures: frames, span, latency p50/p90, mean top-1 confidence, low-confidence share."""
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
        "frames": len(rows), "window_s": round(rows[-1][0] - rows[0][0], 3),
        "latency_ms_p50": round(p50, 3), "latency_ms_p90": round(p90, 3),
        "mean_confidence": round(statistics.fmean(confidences), 4),
        "low_confidence_share": round(sum(c < low_confidence for c in confidences) / len(rows), 4),
        "low_confidence_below": low_confidence,
    }


def read_health(state: Path, low_confidence: float = LOW_CONFIDENCE) -> list[dict[str, Any]]:
    """Each recent model's window summary, newest first, as a report carries them."""
    models = _read_json(Path(state) / HEALTH_FILE).get("models", {})
    out = []
    for sha, entry in (models.items() if isinstance(models, dict) else ()):
        summary = summarize(entry.get("frames", []) if isinstance(entry, dict) else [], low_confidence)
        if summary is not None:
            out.append({"model_sha256": sha, **summary, "_last": entry.get("last", 0)})
    out.sort(key=lambda w: w.pop("_last"), reverse=True)
    return out[:KEEP_MODELS]


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


def record_install(state: Path, model_sha256: str, release: int, outcome: str, now: float | None = None) -> None:
    """Remember an install outcome of a model (the agent's side of the rollout's evidence). Best effort."""
    import time

    path = Path(state) / INSTALLS_FILE
    entries = _read_json(path).get("installs", [])
    entries = [e for e in entries if isinstance(e, dict)][-(KEEP_INSTALLS - 1):]
    entries.append({"model_sha256": model_sha256, "release": release, "outcome": outcome,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})
    with contextlib.suppress(OSError):
        _write_json(path, {"installs": entries})


def read_installs(state: Path) -> list[dict[str, Any]]:
    entries = _read_json(Path(state) / INSTALLS_FILE).get("installs", [])
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
