"""The sorting loop on the device: classify each new camera frame with the active release.

One JSON line per frame on stdout for the mechanism: {"file", "class", "confidence",
"model_release", "latency_ms"}, the confidence being the model's own output (dequantized). A
frame that cannot be decoded (empty, not an image, too large) is given SETTLE_S seconds after its
last change (the camera may still be writing it), then gets one line {"file", "error"} and is
moved to <watch>/rejected/: it is never retried after that, and never stops the loop. Frames already sorted are
remembered in <state>/sorted.txt, so a restart does not emit them again. Between frames the loop
checks whether the agent switched `active` and, if so, loads the new release before the next
frame: no frame is skipped or classified twice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgeopt.device.health import HealthRecorder, count_start
from edgeopt.device.smoke import contract_of, read_classes
from edgeopt.device.state import RELEASE_RECORD
from edgeopt.images import IMAGE_SUFFIXES, ImageError, load_pixels

SORTED_FILE = "sorted.txt"
REJECTED_DIR = "rejected"
# sorted.txt is compacted to the frames still in the watch folder when it grows past this.
MAX_REMEMBERED = 100_000
# Seconds a frame that does not decode may still be being written by the camera.
SETTLE_S = 1.0


class ActiveModel:
    """The model behind state/active, reloaded when the symlink changes."""

    def __init__(self, state: Path, threads: int = 1) -> None:
        self.link = Path(state) / "active"
        self.threads = threads
        self.target: str | None = None
        self.session: Any = None
        self.resize = "squash"
        self.classes: list[str] = []
        self.release: int | None = None
        self.sha256 = ""

    def refresh(self) -> bool:
        """Load the active release if it changed; False while there is none."""
        from edgeopt.runtimes.registry import runtime_for

        try:
            target = os.readlink(self.link)
        except OSError:
            return self.session is not None
        if target != self.target:
            folder = self.link.parent / target
            record = json.loads((folder / RELEASE_RECORD).read_text())
            model = folder / record["model"]["file"]
            contract = contract_of(record)
            self.session = runtime_for(model).open(model, self.threads, contract.transform)
            self.resize = contract.resize
            # one inference before the first frame: a runtime's first call sets itself up, and that
            # time would otherwise count as the model's latency in service
            self.session.predict(np.zeros((1, *self.session.input.image_size, 3), np.uint8))
            self.classes = read_classes(folder / record["labels"]["file"])
            self.release = int(record["release"])
            self.sha256 = str(record["model"]["sha256"])
            self.target = target
        return True


class Remembered:
    """The frames already sorted (by name), kept across restarts."""

    def __init__(self, path: Path, watch: Path) -> None:
        self.path = path
        names = path.read_text().splitlines() if path.is_file() else []
        if len(names) > MAX_REMEMBERED:
            present = {p.name for p in watch.iterdir()}
            names = [n for n in names if n in present]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(n + "\n" for n in names))
            os.replace(tmp, path)
        self.names = set(names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def add(self, name: str) -> None:
        self.names.add(name)
        with open(self.path, "a") as f:
            f.write(name + "\n")


def sort_frames(
    state: Path, watch: Path, out: TextIO = sys.stdout, threads: int = 1, poll_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Classify frames as they appear in `watch`, oldest first; returns how many were classified."""
    watch = Path(watch)
    model = ActiveModel(state, threads)
    done = Remembered(Path(state) / SORTED_FILE, watch)
    rejected = watch / REJECTED_DIR
    health = HealthRecorder(Path(state))  # in-service latency and confidence per model, for the agent's reports
    count_start(Path(state), "sort")
    count = 0

    def emit(line: dict[str, Any]) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    while not stop():
        frames = sorted(
            (p for p in watch.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in done),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        if not frames or not model.refresh():
            health.flush(time.time())
            time.sleep(poll_s)
            continue
        handled = 0
        for frame in frames:
            model.refresh()  # between frames: pick up a newly activated release
            try:
                pixels = load_pixels(frame, model.session.input.image_size, model.resize)
            except ImageError as exc:
                try:
                    if time.time() - frame.stat().st_mtime < SETTLE_S:
                        continue  # perhaps still being written: looked at again on the next pass
                except OSError:
                    continue  # gone meanwhile
                handled += 1
                rejected.mkdir(exist_ok=True)
                os.replace(frame, rejected / frame.name)
                emit({"file": frame.name, "error": str(exc).replace(str(frame), frame.name), "moved_to": f"{REJECTED_DIR}/"})
                done.add(frame.name)
                continue
            start = time.perf_counter()
            probs = model.session.predict(pixels[None])[0]
            latency = (time.perf_counter() - start) * 1000
            best = int(probs.argmax())
            health.record(model.sha256, model.release or 0, latency, float(probs[best]), time.time())
            emit({"file": frame.name, "class": model.classes[best], "confidence": round(float(probs[best]), 4),
                  "model_release": model.release, "latency_ms": round(latency, 3)})
            done.add(frame.name)
            handled += 1
            count += 1
        if not handled:
            time.sleep(poll_s)
    health.flush(time.time())
    return count
