"""Budgets (edgeopt.budgets): constraints applied before the objective -- a variant over one is
never chosen nor part of a tie, whatever its L or the guard's word -- stored with the objective and
applied again by `choose`, on the device's own latencies."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgeopt.budgets import describe_budgets, over_budget
from edgeopt.choose import choose_for_device, decide
from edgeopt.errors import ConfigError
from edgeopt.objective import Candidate, Objective, select
from edgeopt.report import table_rows
from edgeopt.results import load_results

N = 400  # test images of the paired candidates below


def _cand(name: str, ms: float, kb: float, acc: float = 0.9, **more: object) -> Candidate:
    return Candidate(name=name, size_bytes=kb * 1024, latency_ms=ms, metric=acc, **more)  # type: ignore[arg-type]


def _paired(name: str, ms: float, kb: float, lost: int, **more: object) -> Candidate:
    """A candidate that gets `lost` of the baseline's right answers wrong (the baseline: 360 of 400 right)."""
    base = [i < 360 for i in range(N)]
    correct = tuple(b and not (i < lost) for i, b in enumerate(base))
    return _cand(name, ms, kb, sum(correct) / N, correct=correct, **more)


BASELINE = _paired("f0", 5.0, 8000, 0)


def test_a_variant_over_a_budget_is_not_eligible_whatever_its_L_and_the_baseline_neither():
    objective = Objective(max_latency_ms=2.0, max_file_kb=1000, max_metric_loss=None)
    cands = [_cand("f0", 5.0, 8000), _cand("fast_big", 1.0, 2000), _cand("slow_small", 3.0, 500), _cand("fits", 1.8, 900, 0.89)]
    choice = select(cands, "f0", objective)
    assert choice.selected == "fits"
    assert choice.score_of("fast_big").excluded_because == "is 2000 KB, over the file budget of 1000 KB"
    assert choice.score_of("slow_small").excluded_because == "takes 3.00 ms, over the latency budget of 2 ms"
    assert not choice.score_of("f0").eligible
    assert "Budgets (at most 2 ms per image and 1000 KB of file), constraints before the objective: 3 variant(s) over them " \
           "(fast_big, slow_small, f0)." in choice.reasons
    assert "f0 was excluded: it takes 5.00 ms, over the latency budget of 2 ms, and is 8000 KB, over the file budget of " \
           "1000 KB." in choice.reasons


def test_when_nothing_fits_the_budgets_the_refusal_says_which_flag_to_relax():
    with pytest.raises(ConfigError, match=r"over the latency budget of 0.5 ms.*--max-latency-ms"):
        select([_cand("f0", 5.0, 8000)], "f0", Objective(max_latency_ms=0.5))


def test_a_variant_over_budget_is_never_part_of_a_tie():
    """Without a budget, 'lighter' ties with 'fast' within the margin and wins the tie on its much
    smaller transfer; over the file budget it is out before L, so 'fast' wins, tied with nothing."""
    fast = _paired("fast", 2.0, 2000, 0, transfer_bytes=1800 * 1024.0)
    lighter = _paired("lighter", 1.95, 2100, 0, transfer_bytes=1000 * 1024.0)
    free = select([BASELINE, fast, lighter], "f0", Objective())
    assert free.selected == "lighter" and set(free.tie) == {"fast", "lighter"}
    budget = select([BASELINE, fast, lighter], "f0", Objective(max_file_kb=2050))
    assert budget.selected == "fast" and budget.tie == ()
    assert budget.score_of("lighter").excluded_because == "is 2100 KB, over the file budget of 2050 KB"


def test_the_budget_and_the_guard_both_say_why_and_the_budget_comes_first():
    # 40 of 400 answers lost: 10 pp, far beyond the 1 pp the guard allows
    choice = select([BASELINE, _paired("bad_slow", 9.0, 100, 40)], "f0", Objective(max_latency_ms=6.0))
    s = choice.score_of("bad_slow")
    assert s.over_budget == "takes 9.00 ms, over the latency budget of 6 ms"
    assert s.excluded_because.startswith(s.over_budget + ", and loses 10.00")
    assert s.guard == "clearly worse"  # the guard's own word stays for the report


def test_the_file_budget_reads_the_file_and_the_transfer_budget_the_transfer():
    """With S = transfer, size_bytes is the transfer; the file budget still reads the file's bytes."""
    small_transfer = _cand("v", 1.0, 300, file_bytes=900 * 1024.0, transfer_bytes=300 * 1024.0)
    small_file = _cand("w", 2.0, 450, file_bytes=450 * 1024.0, transfer_bytes=450 * 1024.0)
    cands = [_cand("f0", 5.0, 8000), small_transfer, small_file]
    objective = Objective(size="transfer", max_metric_loss=None)
    by_file = select(cands, "f0", objective.replaced(max_file_kb=500))
    assert by_file.score_of("v").excluded_because == "is 900 KB, over the file budget of 500 KB" and by_file.selected == "w"
    assert select(cands, "f0", objective.replaced(max_transfer_kb=500)).selected == "v"
    # without a transfer size measured, the file is what a delivery sends
    assert over_budget(Objective(max_transfer_kb=500), 1.0, 900 * 1024, None) == "sends 900 KB, over the transfer budget of 500 KB"
    assert describe_budgets(Objective()) == ""


def test_budgets_travel_in_the_results_so_choose_applies_them_again(tiny_optimized):
    _, results = tiny_optimized
    litert = sorted((v for v in results.variants if v.backend == "litert" and v.latency), key=lambda v: v.latency.median_ms)
    slowest = litert[-1]
    budget = Objective(max_latency_ms=(litert[-2].latency.median_ms + slowest.latency.median_ms) / 2, max_metric_loss=None)
    again = decide(results.model_copy(update={"choice": None}), budget)
    assert again.choice.objective["max_latency_ms"] == budget.max_latency_ms  # `choose` rebuilds the objective from it
    assert again.selected.latency.median_ms <= budget.max_latency_ms
    verdict = again.variant(slowest.name).score
    assert not verdict.eligible and verdict.over_budget.startswith("takes ")
    assert next(r for r in table_rows(again) if r[0].split()[0] == slowest.name)[-1] == "over budget"
    assert any(r.startswith("Budgets (at most") and slowest.name in r for r in again.choice.reasons)
    stored = json.loads(again.to_json())
    assert stored["variants"][0]["score"].get("over_budget", "") == ("" if again.variants[0].score.eligible else
                                                                     again.variants[0].score.over_budget)
    # without budgets the key is left out: an older reader knows the file
    assert all("over_budget" not in v["score"] for v in json.loads(results.to_json())["variants"] if v.get("score"))


def test_on_a_device_the_budget_reads_its_latencies_and_the_build_machines_guard_verdicts_still_hold(tiny_optimized):
    """A latency budget that nothing meets on the build machine but everything meets on the device:
    the device's choice honours it, and what the build machine's test split proved worse stays out."""
    from edgeopt.config import MeasureConfig
    from edgeopt.device.bench import bench_run

    run_dir, _ = tiny_optimized
    run = load_results(run_dir)
    classes = len(run.model.classes)
    wrong = [(label + 1) % classes for _, label in run.data.test_items]  # f4 wrong on every test image there
    broken = run.model_copy(update={"variants": [
        v.model_copy(update={"predictions": v.predictions.model_copy(update={"test": wrong}),
                             "test": v.test.model_copy(update={"accuracy": 0.0})}) if v.name == "f4_float16" else v
        for v in run.variants]})
    device = bench_run(run_dir, MeasureConfig(rounds=2, invocations=5, warmup=1))
    fast = {"f4_float16": 1e-4}  # the broken one would be the fastest of all on the device
    device = device.model_copy(update={"variants": [
        v.model_copy(update={"latency": v.latency.model_copy(update={
            "median_ms": fast.get(v.name, 1e-3), "round_medians_ms": [fast.get(v.name, 1e-3)] * len(v.latency.round_medians_ms)})})
        if v.latency is not None else v for v in device.variants]})
    budget = Objective(max_latency_ms=0.01)
    assert min(v.latency.median_ms for v in run.variants if v.latency) > 0.01  # nothing fits on the build machine
    sha = hashlib.sha256((run_dir / "results.json").read_bytes()).hexdigest()
    chosen = choose_for_device(broken, sha, device, budget)
    assert chosen.choice.selected != "f4_float16"
    assert any(r.startswith("f4_float16 was not eligible: clearly worse on the build machine's") for r in chosen.choice.reasons)
    assert chosen.selected.latency.median_ms <= 0.01
