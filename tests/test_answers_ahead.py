"""answers_ahead: answers computed while the build waits are the answers the evaluation would compute, and
are not computed twice."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt import answers_ahead as ahead
from edgeopt.answers_ahead import AnswersAhead
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


def test_blocks_keep_the_evaluations_batches():
    # a batch of a runtime's evaluation (16 images) holds the same images ahead as in the race's chunks
    from edgeopt.evaluate import CHUNK
    from edgeopt.runtimes.litert import EVAL_BATCH

    assert ahead.BLOCK % EVAL_BATCH == 0 and CHUNK % ahead.BLOCK == 0


def test_answers_ahead_at_one_thread_are_the_evaluations_at_two(tiny_optimized, tiny_model):
    # the build's share of the cores answers ahead; the evaluation would have used every core
    from pathlib import Path

    from edgeopt.data.imagefolder import decode_images
    from edgeopt.data.split import load_split
    from edgeopt.runtimes.registry import get_runtime
    from tests.conftest import TINY_SIZE

    out, results = tiny_optimized
    split = load_split(tiny_model / "split.json")
    pixels = decode_images(Path(split.data_root), split.test, TINY_SIZE).pixels
    names = [v.name for v in results.variants if v.backend == "litert"]
    backend = {v.name: v.backend for v in results.variants}
    files = {v.name: out / v.file for v in results.variants}
    answers = AnswersAhead([(n, "test") for n in names], {"test": pixels}, results.model.classes,
                           open_session=lambda n: get_runtime(backend[n]).open(files[n], 1), is_built=lambda n: True)
    while answers.step():
        pass
    for name in names:
        evaluator = get_runtime(backend[name]).open(files[name], 2)
        served = answers.predict(name, "test", evaluator, 0, len(pixels))
        direct = predict_top1(evaluator, pixels, results.model.classes)
        np.testing.assert_array_equal(served[0], direct[0], err_msg=name)
        np.testing.assert_allclose(served[1], direct[1], atol=1e-5, err_msg=name)
