"""ahead: answers computed while the build waits are the answers the evaluation would compute, and
are not computed twice."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt import ahead
from edgeopt.ahead import AnswersAhead
from edgeopt.measure import predict_top1

CLASSES = ("a", "b", "c")


class FakeSession:
    """Answers class (pixel value % 3) with a confidence that depends on the image; counts the images asked."""

    def __init__(self, shift: int = 0) -> None:
        self.asked = 0
        self.shift = shift

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.asked += len(pixels)
        values = pixels[:, 0, 0, 0].astype(int) + self.shift
        probs = np.full((len(pixels), 3), 0.1, dtype=np.float32)
        probs[np.arange(len(pixels)), values % 3] = 0.5 + (values % 7) / 20
        return probs


def images(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8).reshape(-1, 1, 1, 1)


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setattr(ahead, "BLOCK", 4)
    sessions = {"f0": FakeSession(), "f1": FakeSession(1)}
    built = {"f0"}
    answers = AnswersAhead([("f0", "test"), ("f1", "test"), ("f0", "train"), ("f1", "unknown set")],
                           {"test": images(10), "train": images(6)}, CLASSES, open_session=sessions.__getitem__,
                           is_built=built.__contains__)
    return answers, sessions, built


def test_steps_answer_built_variants_a_block_at_a_time_in_the_order_asked(setup):
    answers, sessions, built = setup
    assert [answers.step() for _ in range(3)] == [True] * 3 and sessions["f0"].asked == 10  # blocks 4, 4, 2
    assert answers.step() and sessions["f0"].asked == 14 and sessions["f1"].asked == 0  # f1 is not built yet
    built.add("f1")
    while answers.step():
        pass
    assert sessions["f0"].asked == 16 and sessions["f1"].asked == 10 and answers.images_answered == 26


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5])
def test_what_is_served_is_what_the_session_answers_and_only_the_rest_is_computed(setup, steps):
    answers, sessions, built = setup
    for _ in range(steps):
        answers.step()
    ahead_count = min(10, 4 * steps)
    evaluator = FakeSession()  # the evaluation's own session of f0 (more threads)
    for start, stop in [(0, 10), (0, 3), (2, 9), (8, 10), (5, 5)]:
        evaluator.asked = 0
        served = answers.predict("f0", "test", evaluator, start, stop)
        expected = predict_top1(FakeSession(), images(10)[start:stop], CLASSES)
        np.testing.assert_array_equal(served[0], expected[0])
        np.testing.assert_array_equal(served[1], expected[1])
        assert evaluator.asked == max(0, stop - max(start, ahead_count))  # never an image answered ahead
    # nothing was computed ahead for f1 (not built) or for a set not asked ahead: all computed now
    evaluator = FakeSession(1)
    np.testing.assert_array_equal(answers.predict("f1", "train", evaluator, 0, 6)[0],
                                  predict_top1(FakeSession(1), images(6), CLASSES)[0])
    assert evaluator.asked == 6
