"""Accuracy (overall and per class), latency per image, and decode time.

Latency protocol: on a small shared CPU one round of timings can move by +-20%, and the
objective uses latency *ratios*, so all variants are timed in interleaved rounds
(f0 f1 f2 f3 f4, f0 f1 ...). A variant's latency is the median of its round medians; the p90
is over every timed invocation; the spread is (slowest - fastest round median) / median.
A timed invocation is what a device does per frame once it holds the pixels: encode them for
the input tensor, invoke, read and dequantize the output. Image decoding is timed apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.config import MeasureConfig
from edgeopt.errors import ModelError
from edgeopt.images import load_pixels
from edgeopt.progress import NullProgress, Progress
from edgeopt.results import Accuracy, Latency, Predictions
from edgeopt.runtimes.base import Session


@dataclass(frozen=True)
class AccuracyResult:
    accuracy: float  # fraction 0..1
    per_class: dict[str, float]  # fraction per class name
    count: int
    # confusion[i][j]: images of class i predicted as class j
    confusion: tuple[tuple[int, ...], ...]
    # per image: the top-1 class and its probability (as the runtime returned it)
    predicted: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    spread: float  # (max - min) of round medians over the median
    round_medians_ms: tuple[float, ...]
    invocations: int


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


def measure_accuracy(
    session: Session, pixels: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> AccuracyResult:
    predicted, confidence = predict_top1(session, pixels, classes)
    return accuracy_of(predicted, confidence, labels, classes)


def accuracy_of(predicted: np.ndarray, confidence: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> AccuracyResult:
    """Accuracy, per class and the confusion matrix of top-1 predictions."""
    labels = np.asarray(labels)[: len(predicted)]
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {
        name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else float("nan")
        for i, name in enumerate(classes)
    }
    return AccuracyResult(
        accuracy=float(np.mean(predicted == labels)) if len(labels) else float("nan"),
        per_class=per_class,
        count=int(len(labels)),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        predicted=np.asarray(predicted),
        confidence=np.asarray(confidence, dtype=np.float32),
    )


def measure_latency(
    sessions: Mapping[str, Session],
    pixels: np.ndarray,
    config: MeasureConfig,
    progress: Progress | None = None,
) -> dict[str, LatencyResult]:
    """Time every session at batch 1 in interleaved rounds (see module doc)."""
    progress = progress or NullProgress()
    frames = [pixels[i : i + 1] for i in range(len(pixels))]
    for session in sessions.values():
        for k in range(config.warmup):
            session.predict(frames[k % len(frames)])
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    round_medians: dict[str, list[float]] = {name: [] for name in sessions}
    clock = time.perf_counter_ns
    progress.start("latency rounds", config.rounds * len(sessions))
    for _ in range(config.rounds):
        for name, session in sessions.items():
            times = []
            for k in range(config.invocations):
                frame = frames[k % len(frames)]
                start = clock()
                session.predict(frame)
                times.append((clock() - start) / 1e6)
            samples[name].extend(times)
            round_medians[name].append(statistics.median(times))
            progress.advance(1, name)
    progress.finish()
    results = {}
    for name in sessions:
        medians = round_medians[name]
        median = statistics.median(medians)
        results[name] = LatencyResult(
            median_ms=median,
            p90_ms=float(np.percentile(samples[name], 90)),
            spread=(max(medians) - min(medians)) / median if median else 0.0,
            round_medians_ms=tuple(medians),
            invocations=len(samples[name]),
        )
    return results


def measure_decode_ms(paths: Sequence[Path], size: tuple[int, int], limit: int = 50) -> float:
    """Median milliseconds to decode and resize one image file (not part of a model's latency)."""
    times = []
    for path in list(paths)[:limit]:
        start = time.perf_counter_ns()
        load_pixels(path, size)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times) if times else float("nan")


def accuracy_record(a: AccuracyResult) -> Accuracy:
    """An accuracy as a results file keeps it."""
    return Accuracy(accuracy=a.accuracy, count=a.count, confusion=[list(r) for r in a.confusion],
                    per_class={k: (None if v != v else v) for k, v in a.per_class.items()})


def latency_record(lat: LatencyResult, threads: int) -> Latency:
    return Latency(median_ms=lat.median_ms, p90_ms=lat.p90_ms, spread=lat.spread,
                   round_medians_ms=list(lat.round_medians_ms), invocations=lat.invocations, threads=threads)


def predictions_record(test: AccuracyResult, train: AccuracyResult | None = None) -> Predictions:
    return Predictions(test=[int(p) for p in test.predicted], test_confidence=[round(float(c), 5) for c in test.confidence],
                       train=[int(p) for p in train.predicted] if train is not None else None)
