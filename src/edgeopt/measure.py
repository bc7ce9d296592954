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
from edgeopt.images import load_pixels
from edgeopt.invoke import SessionTimer, Timer, TimingFailed, predict_top1
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
    results, _ = measure_interleaved({name: SessionTimer(s, pixels) for name, s in sessions.items()}, config, progress)
    return results


def measure_interleaved(
    timers: Mapping[str, Timer], config: MeasureConfig, progress: Progress | None = None
) -> tuple[dict[str, LatencyResult], dict[str, str]]:
    """The latency protocol over any timers (see module doc): results, and for each timer that
    raised TimingFailed, why (it leaves the rounds; the others go on)."""
    progress = progress or NullProgress()
    failed: dict[str, str] = {}
    for name, timer in timers.items():
        try:
            timer.warm_up(config.warmup)
        except TimingFailed as exc:
            failed[name] = str(exc)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    round_medians: dict[str, list[float]] = {name: [] for name in timers}
    progress.start("latency rounds", config.rounds * len(timers))
    for _ in range(config.rounds):
        for name, timer in timers.items():
            if name not in failed:
                try:
                    times = timer.time(config.invocations)
                except TimingFailed as exc:
                    failed[name] = str(exc)
                else:
                    samples[name].extend(times)
                    round_medians[name].append(statistics.median(times))
            progress.advance(1, name)
    progress.finish()
    return {name: latency_of(round_medians[name], samples[name]) for name in timers if name not in failed}, failed


def latency_of(medians: Sequence[float], samples: Sequence[float]) -> LatencyResult:
    """A variant's latency from its round medians and every timed invocation."""
    median = statistics.median(medians)
    return LatencyResult(
        median_ms=median,
        p90_ms=float(np.percentile(samples, 90)),
        spread=(max(medians) - min(medians)) / median if median else 0.0,
        round_medians_ms=tuple(medians),
        invocations=len(samples),
    )


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
