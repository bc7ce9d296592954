"""Evaluation that stops what cannot win: replayed on recorded predictions, the race stops only
what a full evaluation would exclude, and the choice stays the full evaluation's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeopt.choose import decide
from edgeopt.data import imagefolder
from edgeopt.data.imagefolder import cache_dir, decode_images, decode_images_cached
from edgeopt.evaluate import CHUNK, hopeless, race
from edgeopt.objective import Candidate, Objective, select
from edgeopt.results import Results
from edgeopt.stats import paired_difference
from tests.conftest import write_image

REFERENCE = Path(__file__).resolve().parents[1] / "bench" / "results" / "reference.json"


def replay(predicted: np.ndarray, confidence: np.ndarray | None = None):
    confidence = np.ones(len(predicted), np.float32) if confidence is None else confidence
    return lambda start, stop: (predicted[start:stop], confidence[start:stop])


def recorded(n: int = 478, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and four variants' predictions shaped like the reference run: a float baseline right
    on 90%, an int8 that changes 13 answers (net -3), one that loses 8.6 points, an identical one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    base = labels.copy()
    wrong = rng.choice(n, int(0.1 * n), replace=False)
    base[wrong] = (labels[wrong] + 1) % 5
    int8 = base.copy()
    right_now = [i for i in range(n) if base[i] == labels[i]][:8]
    int8[right_now] = (labels[right_now] + 2) % 5
    fixed = [i for i in wrong][:5]
    int8[fixed] = labels[fixed]
    broken = base.copy()
    ruined = [i for i in range(n) if base[i] == labels[i]][::10][:41]
    broken[ruined] = (labels[ruined] + 3) % 5
    return labels, {"f0": base, "int8": int8, "broken": broken, "same": base.copy()}


def test_a_clearly_worse_variant_is_stopped_early_and_the_others_run_to_the_end():
    labels, predictions = recorded()
    raced = race({name: replay(p) for name, p in predictions.items() if name != "f0"}, labels, predictions["f0"], Objective())
    assert raced["broken"].stopped.startswith("stopped after") and len(raced["broken"].predicted) < len(labels)
    assert "clearly more than the allowed 1" in raced["broken"].stopped
    for name in ("int8", "same"):
        assert not raced[name].stopped and np.array_equal(raced[name].predicted, predictions[name])
    # the full evaluation excludes what the race stopped: its interval is wholly above the tolerance
    full = paired_difference(predictions["f0"] == labels, predictions["broken"] == labels)
    assert -100 * full.high > 1.0


def raced_default(predicted, labels, baseline):
    return race({"v": replay(predicted)}, labels, baseline, Objective())["v"]


def test_a_loss_seen_early_is_not_stopped_when_the_whole_split_could_keep_it():
    labels, predictions = recorded()
    # loses 9 images, all in the first chunk: clearly worse there; it gets 4 right later that f0 gets wrong,
    # so over the whole split it loses 5 of 478, which the full evaluation cannot tell from none: it keeps it
    early = predictions["f0"].copy()
    first_right = [i for i in range(CHUNK) if early[i] == labels[i]][:9]
    early[first_right] = (labels[first_right] + 1) % 5
    later_wrong = [i for i in range(CHUNK, len(labels)) if early[i] != labels[i]][:4]
    early[later_wrong] = labels[later_wrong]
    lenient = Objective(guard="benefit-of-doubt")  # the rule under which the full evaluation keeps it
    raced = race({"early": replay(early)}, labels, predictions["f0"], lenient)
    assert not raced["early"].stopped
    full = paired_difference(predictions["f0"] == labels, early == labels)
    assert full.high > 0 and -100 * full.difference > 1.0  # its point loss is above 1 pp, its interval reaches 0
    f0 = Candidate("f0", 1e6, 1.0, float(np.mean(predictions["f0"] == labels)))
    kept = Candidate("early", 1e6, 1.0, float(np.mean(early == labels)), metric_delta_interval=(full.low, full.high))
    assert select([f0, kept], "f0", lenient).score_of("early").eligible
    assert not raced_default(early, labels, predictions["f0"]).stopped  # the race stops only what is shown worse


def test_without_a_guard_nothing_is_stopped():
    labels, predictions = recorded()
    raced = race({"broken": replay(predictions["broken"])}, labels, predictions["f0"], Objective(max_metric_loss=None))
    assert not raced["broken"].stopped and len(raced["broken"].predicted) == len(labels)


def test_a_variant_too_slow_to_win_is_hopeless_and_one_that_could_win_is_not():
    objective = Objective()
    assert hopeless(size_ratio=0.27, latency_ratio=11.7, baseline_accuracy=0.89, objective=objective)  # ORT dynamic
    assert hopeless(0.28, 1.8, 0.89, objective) == ""  # dynamic range: slow, but small enough to matter
    assert hopeless(0.27, 11.7, 0.89, Objective(form="paper")) == ""  # the study's form: never judged this way


def test_the_race_replayed_on_the_recorded_full_reference_run_chooses_as_it_did():
    if not REFERENCE.is_file():
        pytest.skip("bench/results/reference.json has not been produced (python bench/reference.py)")
    reference = json.loads(REFERENCE.read_text())
    if "full_evaluation" not in reference:
        pytest.skip("the reference file predates the recorded full evaluation")
    full = Results.model_validate(reference["full_evaluation"])
    objective = Objective.model_validate(full.choice.objective)
    labels = np.array([c for _, c in full.data.test_items])
    base = np.array(full.baseline.predictions.test)
    others = {v.name: v for v in full.variants[1:] if v.predictions is not None and not v.stopped_early}
    raced = race({n: replay(np.array(v.predictions.test)) for n, v in others.items()}, labels, base, objective)
    kept = [v for v in full.variants if v.name not in {n for n, r in raced.items() if r.stopped}]
    stopped = [v.model_copy(update={"stopped_early": raced[v.name].stopped}) for v in full.variants if v not in kept]
    replayed = decide(full.model_copy(update={"variants": kept + stopped, "choice": None}), objective, tuple(full.choice.target))
    # the full evaluation's choice under the same rules (a file written before issue 29 stored the old rules' choice)
    remade = decide(full.model_copy(update={"choice": None}), objective, tuple(full.choice.target))
    assert replayed.choice.selected == remade.choice.selected
    if "guard" in full.choice.objective:
        assert remade.choice.selected == full.choice.selected


def test_decoded_images_are_cached_by_file_list_and_dates(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))
    for i in range(3):
        write_image(tmp_path / "data" / "c" / f"{i}.png", seed=i)
    items = [(f"c/{i}.png", 0) for i in range(3)]
    first = decode_images_cached(tmp_path / "data", items, (8, 8))
    assert len(list(cache_dir().glob("*.npz"))) == 1
    again = decode_images_cached(tmp_path / "data", items, (8, 8))
    assert np.array_equal(first.pixels, again.pixels) and again.paths == first.paths
    write_image(tmp_path / "data" / "c" / "1.png", seed=99)  # a file changed: decoded again
    changed = decode_images_cached(tmp_path / "data", items, (8, 8))
    assert np.array_equal(changed.pixels, decode_images(tmp_path / "data", items, (8, 8)).pixels)
    assert not np.array_equal(changed.pixels, first.pixels) and len(list(cache_dir().glob("*.npz"))) == 2


def test_a_cache_that_cannot_be_touched_is_still_read_and_kept(tmp_path, monkeypatch):
    # a cache folder shared read-only (another user's, a read-only mount): its dates cannot be changed
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))
    write_image(tmp_path / "data" / "c" / "0.png", seed=0)
    first = decode_images_cached(tmp_path / "data", [("c/0.png", 0)], (8, 8))

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(imagefolder.os, "utime", refused)
    monkeypatch.setattr(imagefolder, "decode_images", lambda *a, **k: pytest.fail("decoded again"))
    again = decode_images_cached(tmp_path / "data", [("c/0.png", 0)], (8, 8))
    assert np.array_equal(again.pixels, first.pixels) and len(list(cache_dir().glob("*.npz"))) == 1
