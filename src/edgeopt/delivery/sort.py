"""The sorting loop on the device: classify each new camera frame with the active model.

Emits one JSON line per frame (file, class, confidence, model version, latency) for the
mechanism. Between frames it checks whether the agent switched `active` and, if so, loads the
new model before the next frame: no frame is skipped or classified twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from edgeopt.images import IMAGE_SUFFIXES, load_pixels


class ActiveModel:
    """The model behind state/active, reloaded when the symlink changes."""

    def __init__(self, state: Path, threads: int = 1) -> None:
        self.link = Path(state) / "active"
        self.threads = threads
        self.target: str | None = None
        self.session: Any = None
        self.classes: list[str] = []
        self.version: int | None = None

    def refresh(self) -> bool:
        """Load the active model if it changed; False while there is none."""
        from edgeopt.runtimes.registry import runtime_for

        try:
            target = os.readlink(self.link)
        except OSError:
            return self.session is not None
        if target != self.target:
            folder = self.link.parent / target
            manifest = json.loads((folder / "manifest.json").read_text())
            model = folder / manifest["model"]["file"]
            self.session = runtime_for(model).open(model, self.threads)
            self.classes = json.loads((folder / manifest["labels"]["file"]).read_text())["classes"]
            self.version = int(manifest["version"])
            self.target = target
        return True


def sort_frames(
    state: Path, watch: Path, out: TextIO = sys.stdout, threads: int = 1, poll_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Classify frames as they appear in `watch`, oldest first; returns how many were classified."""
    model = ActiveModel(state, threads)
    done: set[str] = set()
    count = 0
    while not stop():
        frames = sorted(
            (p for p in Path(watch).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in done),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        if not frames or not model.refresh():
            time.sleep(poll_s)
            continue
        for frame in frames:
            model.refresh()  # between frames: pick up a newly activated model
            try:
                pixels = load_pixels(frame, model.session.input.image_size)
            except (OSError, ValueError):
                continue  # still being written by the camera; retried on the next pass
            start = time.perf_counter()
            probs = model.session.predict(pixels[None])[0]
            latency = (time.perf_counter() - start) * 1000
            best = int(probs.argmax())
            out.write(json.dumps({
                "file": frame.name, "class": model.classes[best], "confidence": round(float(probs[best]), 4),
                "model_version": model.version, "latency_ms": round(latency, 3),
            }) + "\n")
            out.flush()
            done.add(frame.name)
            count += 1
    return count
