"""The committed benchmark results are well-formed, come from committed code, and agree with
their own tables: every choice in them is what edgeopt's chooser makes from their figures."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from edgeopt.choose import decide
from edgeopt.config import TrainConfig
from edgeopt.objective import Objective
from edgeopt.results import Results

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
REFERENCE = RESULTS / "reference.json"
UPDATE = RESULTS / "update.json"


def _reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip("bench/results/reference.json has not been produced (python bench/reference.py)")
    return json.loads(REFERENCE.read_text())


def _runs(reference: dict) -> dict[str, Results]:
    return {name: Results.model_validate(run) for name, run in reference["runs"].items()}


def test_reference_runs_are_results_of_committed_code():
    reference = _reference()
    assert reference["commit"] and "+uncommitted" not in reference["commit"]
    runs = _runs(reference)
    assert "1 thread" in runs and "LiteRT five, 1 thread" in runs
    for run in [*runs.values(), Results.model_validate(reference["full_evaluation"])]:
        assert run.choice is not None
        for v in run.variants:
            if v.test is None:  # hopeless from the short latency pass: says so
                assert v.stopped_early.startswith("hopeless")
                continue
            assert set(v.test.per_class) == set(run.model.classes)
            # every test image, unless the race stopped it (and then it says after how many)
            assert len(v.predictions.test) == len(run.data.test_items) or v.stopped_early.startswith("stopped after")


def predates_issue_29(run: Results) -> bool:
    """Results written before the paired interval, the guard's modes and the margin (issue 29): their
    stored intervals and choices are the old rules', which the current code does not remake."""
    return run.choice is not None and "guard" not in run.choice.objective


def _everything(reference: dict) -> dict[str, Results]:
    return {**_runs(reference), "full evaluation": Results.model_validate(reference["full_evaluation"]),
            "LiteRT five, full evaluation": Results.model_validate(reference["litert_full_evaluation"])}


def test_reference_choices_follow_from_the_stored_figures():
    reference = _reference()
    current = [run for run in _everything(reference).values() if not predates_issue_29(run)]
    for run in current:
        objective = Objective.model_validate(run.choice.objective)
        redone = decide(run.model_copy(update={"choice": None}), objective, tuple(run.choice.target))
        assert redone.choice == run.choice
        for v, w in zip(redone.variants, run.variants, strict=True):
            assert v.score == w.score and v.paired == w.paired and v.fidelity == w.fidelity


@pytest.mark.parametrize("guard", ["bounded", "benefit-of-doubt"])
def test_the_reference_runs_of_one_build_choose_one_variant(guard):
    """Issue 29's done-when: the five runs of the same files (raced and full, 1 and 2 threads) choose the
    same variant, under the default guard and under the rule before it, with the margin; remade from the
    stored measurements, so it holds for results written before issue 29 too."""
    reference = _reference()
    chosen = {}
    for label, run in _everything(reference).items():
        objective = Objective.model_validate({**run.choice.objective, "guard": guard, "margin": Objective().margin})
        chosen[label] = decide(run.model_copy(update={"choice": None}), objective, tuple(run.choice.target)).choice.selected
    assert len(set(chosen.values())) == 1, chosen
    if not any(predates_issue_29(run) for run in _everything(reference).values()) and guard == Objective().guard:
        assert all(run.choice.selected == chosen["1 thread"] for run in _everything(reference).values())


def test_reference_records_one_choice_for_the_five_runs_when_it_records_them():
    reference = _reference()
    if "choices" not in reference:  # written before issue 29; the test above remakes the choices instead
        return
    assert len(reference["choices"]) == 5 and len(set(reference["choices"].values())) == 1, reference["choices"]
    text = (RESULTS / "reference.md").read_text()
    assert all(f"- {label}: **{name}**" in text for label, name in reference["choices"].items())


DEVICE = RESULTS / "device.json"


def test_device_benchmark_reports_no_changed_choice_inside_the_margin():
    if not DEVICE.is_file():
        pytest.skip("bench/results/device.json has not been produced (python bench/device.py)")
    device = json.loads(DEVICE.read_text())
    for label, entry in device["devices"].items():
        if "changed_within_margin" not in entry:  # written before issue 29
            continue
        assert not entry["changed_within_margin"], label
        if entry["changed"] and entry["L_gap_to_build_choice"] is not None:
            assert entry["L_gap_to_build_choice"] >= entry["margin"], label


CHOICE = RESULTS / "choice.json"


def test_the_choice_figures_are_of_committed_code_and_show_what_the_docs_claim():
    if not CHOICE.is_file():
        pytest.skip("bench/results/choice.json has not been produced (python bench/choice.py)")
    record = json.loads(CHOICE.read_text())
    assert record["commit"] and "+uncommitted" not in record["commit"]
    assert record["grid_summary"]["now_min"] >= 0.95 > record["grid_summary"]["before_min"]
    two = [r for r in record["guard_eligible_at_478"] if r["true loss pp"] == 2.0]
    assert all(r["bounded"] < 0.03 and r["before"] > 0.4 for r in two)


def test_reference_markdown_shows_the_stored_numbers_and_every_target():
    reference = _reference()
    text = (RESULTS / "reference.md").read_text()
    assert reference["commit"] in text
    for label, run in _runs(reference).items():
        if label.startswith("LiteRT"):
            continue
        for v in run.variants:
            if v.score is not None:
                assert f"{v.score.L:.2f} [{v.score.L_low:.2f},{v.score.L_high:.2f}]" in text
            if v.test is not None:
                assert f"{100 * v.test.accuracy:.2f}" in text
    for target in reference["targets"]:
        assert f"{'MET' if target['met'] else 'NOT MET'}: {target['target']}" in text


def test_update_benchmark_is_well_formed():
    if not UPDATE.is_file():
        pytest.skip("bench/results/update.json has not been produced (python bench/update.py)")
    update = json.loads(UPDATE.read_text())
    base, selected = update["deliveries"][:2]
    assert update["bytes_ratio"] == pytest.approx(base["bytes"] / selected["bytes"])
    assert update["seconds_ratio"] == pytest.approx(base["seconds_median"] / selected["seconds_median"])
    for row in update["deliveries"]:
        # nothing arrives faster than the bandwidth allows
        assert row["seconds_median"] >= 0.9 * row["transfer_seconds_at_rate"]


RETRAIN = RESULTS / "retrain.json"


def _retrain() -> dict:
    if not RETRAIN.is_file():
        pytest.skip("bench/results/retrain.json has not been produced (python bench/retrain.py)")
    return json.loads(RETRAIN.read_text())


def test_retrain_benchmark_is_a_full_run_of_committed_code_and_its_choice_follows():
    record = _retrain()
    assert record["commit"] and "+uncommitted" not in record["commit"]
    run = Results.model_validate(record["run"])
    names = [v.name for v in run.variants]
    assert names[0] == "f0_float32" and {"qat_int8", "pruned_int8", "clustered_int8"} <= set(names)
    for v in run.variants:
        assert len(v.predictions.test) == len(run.data.test_items)  # every variant on every image
        assert (v.training is not None) == (v.name in ("qat_int8", "pruned_int8", "clustered_int8"))
    if not predates_issue_29(run):  # written before issue 29: the old rules' choice, not remade
        objective = Objective.model_validate(run.choice.objective)
        assert decide(run.model_copy(update={"choice": None}), objective, tuple(run.choice.target)).choice == run.choice


def test_retrain_markdown_shows_the_stored_numbers_and_every_target():
    record = _retrain()
    text = (RESULTS / "retrain.md").read_text()
    assert record["commit"] in text
    run = Results.model_validate(record["run"])
    for v in run.variants:
        assert f"| {v.name} | {v.size_bytes / 1024:.0f} |" in text and f"{100 * v.test.accuracy:.2f}" in text
    for label, target in record["targets"].items():
        assert f"{label}: {target['value']} — **{'met' if target['met'] else 'NOT MET'}**" in text


BASELINE = RESULTS / "baseline.json"


def test_baseline_benchmark_covers_two_seeds_of_one_recipe_and_judges_the_lowest():
    if not BASELINE.is_file():
        pytest.skip("bench/results/baseline.json has not been produced (python bench/baseline.py)")
    record = json.loads(BASELINE.read_text())
    assert record["commit"] and "+uncommitted" not in record["commit"]
    # the recipe is edgeopt train's defaults, as the README says (the weights aside: a local file there)
    assert TrainConfig(**{**record["recipe"], "weights": "imagenet"}) == TrainConfig()
    seeds = record["seeds"]
    assert len({r["seed"] for r in seeds}) == len(seeds) >= 2
    lowest = min(r["test_accuracy"] for r in seeds)
    assert record["summary"]["min"] == lowest and record["summary"]["met"] == (lowest >= 0.92)
    text = (RESULTS / "baseline.md").read_text()
    assert record["commit"] in text
    for r in seeds:
        assert f"| {r['seed']} | {100 * r['test_accuracy']:.2f} |" in text
    assert f"lowest {100 * lowest:.2f}% — **{'met' if record['summary']['met'] else 'NOT MET'}**" in text


def _provenance():
    """bench/provenance.py, the benchmarks' writer (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_provenance", RESULTS.parent / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_results_are_written_with_paths_relative_to_the_repository(tmp_path, monkeypatch):
    provenance = _provenance()
    checkout, shared, elsewhere = tmp_path / "checkout", tmp_path / "shared", tmp_path / "main-cache"
    (checkout / "bench").mkdir(parents=True)
    elsewhere.mkdir()
    (checkout / "bench" / "cache").symlink_to(elsewhere)  # a worktree's cache is the main checkout's
    monkeypatch.setattr(provenance, "ROOT", checkout)
    monkeypatch.setattr(provenance, "SHARED", shared)
    record = {
        "source": f"{checkout}/bench/cache/trashnet5-mnv2-a1.0-224", "root": f"{shared}/data/trashnet5",
        "runs": [{"notes": [f"Measured from the optimize run {elsewhere}/device-run (5 variants)."]}],
        "other": f"{checkout}-old/x", "figure": 3.5,
    }
    provenance.write_json(tmp_path / "r.json", record)
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "source": "bench/cache/trashnet5-mnv2-a1.0-224", "root": "../shared/data/trashnet5",
        "runs": [{"notes": ["Measured from the optimize run bench/cache/device-run (5 variants)."]}],
        "other": f"{checkout}-old/x", "figure": 3.5,  # another folder that merely starts alike is left alone
    }
    provenance.write_text(tmp_path / "r.md", f"Model `{checkout}/bench/cache/m` on `{shared}`; code in {checkout}.")
    assert (tmp_path / "r.md").read_text() == "Model `bench/cache/m` on `../shared`; code in .."


def _absolute_paths(value) -> list[str]:
    if isinstance(value, str):
        return re.findall(r"(?:^|[\s`(\"'])(/(?:[\w.-]+/)+[\w.-]*)", value)
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return []


def test_committed_results_name_no_absolute_path_of_the_machine_that_made_them():
    found = {}
    for path in sorted(RESULTS.glob("*")):
        text = path.read_text()
        paths = _absolute_paths(json.loads(text) if path.suffix == ".json" else text)
        if paths:
            found[path.name] = sorted(set(paths))[:3]
    assert found == {}
