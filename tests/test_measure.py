"""Accuracy bookkeeping and the interleaved latency protocol, with fake sessions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.config import MeasureConfig
from edgeopt.errors import ModelError
from edgeopt.measure import measure_accuracy, measure_latency


class FakeSession:
    def __init__(self, predicted, n_classes=3, log=None, name=""):
        self.predicted = np.asarray(predicted)
        self.n = n_classes
        self.log = log if log is not None else []
        self.name = name

    def predict(self, pixels):
        self.log.append(self.name)
        out = np.zeros((len(pixels), self.n), np.float32)
        out[np.arange(len(pixels)), self.predicted[: len(pixels)]] = 1
        return out


def test_accuracy_per_class_and_confusion():
    labels = np.array([0, 0, 1, 1, 2, 2])
    session = FakeSession([0, 1, 1, 1, 2, 0])
    result = measure_accuracy(session, np.zeros((6, 2, 2, 3), np.uint8), labels, ["a", "b", "c"])
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.per_class == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert result.confusion == ((1, 1, 0), (0, 2, 0), (1, 0, 1))


def test_a_model_with_another_class_count_is_refused():
    session = FakeSession([0, 0], n_classes=4)
    with pytest.raises(ModelError, match="outputs 4 classes but the data have 3"):
        measure_accuracy(session, np.zeros((2, 2, 2, 3), np.uint8), np.array([0, 1]), ["a", "b", "c"])


def test_latency_rounds_interleave_variants_and_report_median_of_round_medians():
    log: list[str] = []
    sessions = {n: FakeSession([0], log=log, name=n) for n in ("f0", "f1", "f2")}
    config = MeasureConfig(rounds=3, invocations=4, warmup=1)
    results = measure_latency(sessions, np.zeros((2, 2, 2, 3), np.uint8), config)
    timed = log[3:]  # after one warm-up call each
    blocks = [timed[i : i + 4] for i in range(0, len(timed), 4)]
    assert [b[0] for b in blocks] == ["f0", "f1", "f2"] * 3
    for r in results.values():
        assert r.invocations == 12 and len(r.round_medians_ms) == 3
        assert r.median_ms == pytest.approx(sorted(r.round_medians_ms)[1])
        assert r.p90_ms >= r.median_ms * 0.5
