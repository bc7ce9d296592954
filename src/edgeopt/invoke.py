"""What runs a session, and nothing more: top-1 answers and timed invocations. Light (numpy and a
runtime only), so that a device benchmark's worker processes (device.variant_worker) load little
besides their runtime; measure.py builds the protocol on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from edgeopt.errors import ModelError
from edgeopt.runtimes.base import Session


def predict_top1(session: Session, pixels: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 class, its probability) per image."""
    probs = session.predict(pixels)
    if probs.shape[1] != len(classes):
        raise ModelError(
            f"the model outputs {probs.shape[1]} classes but the data have {len(classes)} "
            f"({', '.join(classes)}); use the data the model was trained on"
        )
    predicted = probs.argmax(axis=1)
    return predicted, probs[np.arange(len(predicted)), predicted]


class Timer(Protocol):
    """One variant's side of the latency protocol: warm up, then time a round of invocations."""

    def warm_up(self, count: int) -> None: ...

    def time(self, count: int) -> list[float]:
        """Milliseconds of each of `count` invocations at batch 1."""
        ...


class TimingFailed(Exception):
    """A variant cannot be timed any further (its process died): it leaves the rounds."""


def time_invocations(session: Session, frames: Sequence[np.ndarray], count: int) -> list[float]:
    """Milliseconds of each of `count` invocations, cycling through `frames` (batch 1 each)."""
    clock = time.perf_counter_ns
    times = []
    for k in range(count):
        frame = frames[k % len(frames)]
        start = clock()
        session.predict(frame)
        times.append((clock() - start) / 1e6)
    return times


def batch_of_one(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels[i : i + 1] for i in range(len(pixels))]


class SessionTimer:
    """A session in this process, timed on `pixels` one image at a time."""

    def __init__(self, session: Session, pixels: np.ndarray) -> None:
        self.session, self.frames = session, batch_of_one(pixels)

    def warm_up(self, count: int) -> None:
        for k in range(count):
            self.session.predict(self.frames[k % len(self.frames)])

    def time(self, count: int) -> list[float]:
        return time_invocations(self.session, self.frames, count)


