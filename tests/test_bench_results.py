"""The committed benchmark results are well-formed and agree with their own tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeopt.objective import Candidate, Objective, select

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
REFERENCE = RESULTS / "reference.json"
UPDATE = RESULTS / "update.json"
VARIANT_KEYS = {"name", "file", "size_bytes", "latency_ms_median", "latency_ms_p90", "test_accuracy", "train_accuracy", "L"}


def _reference():
    if not REFERENCE.is_file():
        pytest.skip("bench/results/reference.json has not been produced (python bench/reference.py)")
    return json.loads(REFERENCE.read_text())


def test_reference_runs_use_the_keys_of_optimize_results():
    reference = _reference()
    assert reference["commit"] and "+uncommitted" not in reference["commit"]
    assert "1" in reference["runs"]
    for run in reference["runs"].values():
        assert {"baseline", "selected", "objective", "variants", "machine"} <= set(run)
        for v in run["variants"]:
            assert VARIANT_KEYS <= set(v)
            assert set(v["test_per_class"]) == set(run["model"]["classes"])


def test_reference_L_and_winners_follow_from_the_stored_figures():
    for run in _reference()["runs"].values():
        cands = [Candidate(v["name"], v["size_bytes"], v["latency_ms_median"], v["test_accuracy"]) for v in run["variants"]]
        default = select(cands, run["baseline"], Objective())
        paper = select(cands, run["baseline"], Objective(form="paper"))
        assert default.selected == run["selected"]
        assert paper.selected == run["objective"]["other_form_selected"]
        for v in run["variants"]:
            assert v["L_default"] == pytest.approx(default.score_of(v["name"]).L)
            assert v["L_paper"] == pytest.approx(paper.score_of(v["name"]).L)
            assert v["size_ratio"] == pytest.approx(run["variants"][0]["size_bytes"] / v["size_bytes"])


def test_reference_markdown_shows_the_stored_numbers_and_every_target():
    reference = _reference()
    text = (RESULTS / "reference.md").read_text()
    assert reference["commit"] in text
    for run in reference["runs"].values():
        for v in run["variants"]:
            assert f"| {v['L_default']:.2f} |" in text
            assert f"{100 * v['test_accuracy']:.2f}" in text
    for target in reference["targets"]:
        assert f"{'MET' if target['met'] else 'NOT MET'}: {target['target']}" in text


def test_update_benchmark_is_well_formed():
    if not UPDATE.is_file():
        pytest.skip("bench/results/update.json has not been produced (python bench/update.py)")
    update = json.loads(UPDATE.read_text())
    base, selected = update["deliveries"]
    assert update["bytes_ratio"] == pytest.approx(base["bytes"] / selected["bytes"])
    assert update["seconds_ratio"] == pytest.approx(base["seconds_median"] / selected["seconds_median"])
    for row in update["deliveries"]:
        # nothing arrives faster than the bandwidth allows
        assert row["seconds_median"] >= 0.9 * row["transfer_seconds_at_rate"]
