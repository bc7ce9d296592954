"""Answers computed ahead: while the build waits for a worker building another runtime's variants,
this process's core would sit idle. It runs the variants it has already built on the images the
evaluation will ask about, a block at a time between looks at the worker, and the evaluation takes
those answers instead of computing them again. A model's answers do not depend on the thread
count or on when they are computed, so every figure is the one computed without them; only the
time moves (into the build's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeopt.measure import predict_top1
from edgeopt.runtimes.base import Session

# Images a step runs: short, so that a worker's report waits little for this process. A multiple
# of a runtime's evaluation batch (16) and a divisor of the race's chunk (96), so that every batch
# holds the images it holds in the evaluation.
BLOCK = 48


@dataclass
class _Job:
    name: str  # the variant
    images: str  # which image set ("test", "train")
    predicted: np.ndarray  # per image; valid up to `done`
    confidence: np.ndarray
    done: int = 0  # images answered, from the first


class AnswersAhead:
    """Top-1 answers of variants on image sets, computed ahead by `step` in the order of `jobs`,
    served by `predict`. `open_session(name)` opens a built variant for the steps; `is_built(name)`
    says whether it is built yet."""

    def __init__(self, jobs: Sequence[tuple[str, str]], images: dict[str, np.ndarray], classes: Sequence[str],
                 open_session: Callable[[str], Session], is_built: Callable[[str], bool]) -> None:
        self._jobs = {(name, which): _Job(name, which, np.zeros(len(images[which]), np.int64),
                                          np.zeros(len(images[which]), np.float32))
                      for name, which in jobs if which in images}
        self._images, self._classes = images, classes
        self._open, self._is_built = open_session, is_built
        self._sessions: dict[str, Session] = {}
        self.images_answered = 0

    def step(self) -> bool:
        """Answer one block of the first unfinished job whose variant is built; False when there is
        nothing to do now."""
        for job in self._jobs.values():
            total = len(job.predicted)
            if job.done >= total or not self._is_built(job.name):
                continue
            if job.name not in self._sessions:
                self._sessions[job.name] = self._open(job.name)
            stop = min(total, job.done + BLOCK)
            predicted, confidence = predict_top1(self._sessions[job.name], self._images[job.images][job.done:stop],
                                                 self._classes)
            job.predicted[job.done:stop] = predicted
            job.confidence[job.done:stop] = confidence
            self.images_answered += stop - job.done
            job.done = stop
            if all(other.done >= len(other.predicted) for other in self._jobs.values() if other.name == job.name):
                del self._sessions[job.name]  # its last job is done
            return True
        return False

    def give(self, name: str, which: str, predicted: np.ndarray, confidence: np.ndarray) -> None:
        """Answers computed elsewhere (e.g. the baseline's, checked before the other builds)."""
        job = self._jobs.get((name, which))
        if job is not None and len(predicted) == len(job.predicted):
            job.predicted[:], job.confidence[:] = predicted, confidence
            job.done = len(predicted)

    def close(self) -> None:
        """Release the sessions the steps opened (the answers stay)."""
        self._sessions.clear()

    def predict(self, name: str, which: str, session: Session, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """predict_top1 of `session` (variant `name`) on images[which][start:stop]: the answers
        computed ahead where they reach, the rest computed now."""
        job = self._jobs.get((name, which))
        ahead = min(stop, job.done) if job is not None else start
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        if job is not None and start < ahead:
            parts.append((job.predicted[start:ahead].copy(), job.confidence[start:ahead].copy()))
        if max(start, ahead) < stop:
            parts.append(predict_top1(session, self._images[which][max(start, ahead):stop], self._classes))
        if not parts:  # an empty range
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p for p, _ in parts]), np.concatenate([c for _, c in parts])
