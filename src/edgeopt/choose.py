"""Measure once, choose for many targets: results (the build machine's, or a device's) in, the
objective's verdicts and the choice out.

The paired accuracy statistics and the latency intervals are computed here from what a results
file stores (per-image predictions, round medians), so a choice can be remade after the fact
with another objective, tolerance or target, or with another machine's latencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError, ModelError
from edgeopt.objective import EXCLUDED_BY_GUARD, Candidate, Objective, ObjectiveForm, select
from edgeopt.results import (
    Accuracy,
    Choice,
    Fidelity,
    Latency,
    Paired,
    PairedClass,
    Predictions,
    Results,
    Variant,
    Verdict,
)
from edgeopt.stats import median_interval, paired_difference, share_interval


def default_target(results: Results) -> tuple[str, ...]:
    """Without device results the target is the baseline's runtime on this machine (LiteRT for a
    Keras model, as the study did; ONNX Runtime for an .onnx model)."""
    return (results.variants[0].backend,)


def paired_against(variant: Variant, baseline: Variant, labels: Sequence[int], classes: Sequence[str],
                   confidence: float) -> Paired | None:
    """The variant's accuracy minus the baseline's on the images both were evaluated on."""
    if variant.predictions is None or baseline.predictions is None:
        return None
    n = min(len(variant.predictions.test), len(baseline.predictions.test))
    truth = np.asarray(labels[:n])
    var = np.asarray(variant.predictions.test[:n]) == truth
    base = np.asarray(baseline.predictions.test[:n]) == truth

    def paired(mask: np.ndarray) -> PairedClass:
        p = paired_difference(base[mask], var[mask], confidence)
        return PairedClass(n=p.n, baseline_only=p.baseline_only, variant_only=p.variant_only,
                           difference=p.difference, low=p.low, high=p.high, p_value=p.p_value)

    whole = paired(np.ones(n, bool))
    per_class = {name: paired(truth == i) for i, name in enumerate(classes) if np.any(truth == i)}
    return Paired(**whole.model_dump(), confidence=confidence, per_class=per_class)


def fidelity_against(variant: Variant, baseline: Variant, confidence: float) -> Fidelity | None:
    """The answers the variant changes against the baseline's, on every image both answered: the test
    images, and the train sample when both carry it."""
    if variant.predictions is None or baseline.predictions is None:
        return None
    n = min(len(variant.predictions.test), len(baseline.predictions.test))
    if n == 0:
        return None
    test_changed = int(np.sum(np.asarray(variant.predictions.test[:n]) != np.asarray(baseline.predictions.test[:n])))
    changed, images = test_changed, n
    train, base_train = variant.predictions.train, baseline.predictions.train
    if train and base_train and len(train) == len(base_train):
        changed += int(np.sum(np.asarray(train) != np.asarray(base_train)))
        images += len(train)
    low, high = share_interval(changed, images, confidence)
    return Fidelity(changed=changed, images=images, test_changed=test_changed, test_images=n, low=low, high=high,
                    confidence=confidence)


def latency_against(variant: Latency, baseline: Latency, confidence: float) -> Latency:
    """The variant's latency with the interval of its ratio to the baseline, one ratio per
    interleaved round (both were timed in the same round, so the machine's slow moments cancel)."""
    rounds = min(len(variant.round_medians_ms), len(baseline.round_medians_ms))
    ratios = [v / b for v, b in zip(variant.round_medians_ms[:rounds], baseline.round_medians_ms[:rounds], strict=True) if b > 0]
    if not ratios:
        return variant
    low, high, coverage = median_interval(ratios, confidence)
    return variant.model_copy(update={"ratio_low": low, "ratio_high": high, "ratio_coverage": coverage})


def _candidate(v: Variant, baseline: Variant, labels: Sequence[int], objective: Objective) -> Candidate:
    assert v.latency is not None and v.test is not None and baseline.latency is not None
    paired = v.paired
    interval = (v.latency.ratio_low, v.latency.ratio_high)
    size = v.transfer_bytes if objective.size == "transfer" and v.transfer_bytes else v.size_bytes
    rounds = min(len(v.latency.round_medians_ms), len(baseline.latency.round_medians_ms))
    ratios = tuple(a / b for a, b in zip(v.latency.round_medians_ms[:rounds], baseline.latency.round_medians_ms[:rounds],
                                         strict=True)) if rounds and min(baseline.latency.round_medians_ms[:rounds]) > 0 else None
    predicted = v.predictions.test if v.predictions is not None else []
    correct = tuple(bool(p == t) for p, t in zip(predicted, labels, strict=False)) if len(predicted) == len(labels) else None
    fidelity = v.fidelity
    return Candidate(
        name=v.name, size_bytes=size, latency_ms=v.latency.median_ms, metric=v.test.accuracy, backend=v.backend,
        latency_ratio_interval=interval if None not in interval else None,  # type: ignore[arg-type]
        metric_delta_interval=(paired.low, paired.high) if paired else None,
        discordant=paired.discordant if paired else None, latency_ratios=ratios, correct=correct,
        transfer_bytes=v.transfer_bytes, file_bytes=v.size_bytes, input_dtype=v.graph.input.dtype if v.graph is not None else "",
        fidelity=(fidelity.test_changed, fidelity.test_images, fidelity.changed, fidelity.images) if fidelity else None,
    )


def measurable(v: Variant) -> bool:
    return v.loadable and v.latency is not None and v.test is not None and not v.stopped_early


def decide(results: Results, objective: Objective, target: tuple[str, ...] | None = None) -> Results:
    """Results with every variant's paired statistics, latency interval and verdict, and the choice."""
    target = target or default_target(results)
    baseline = results.variants[0]
    labels = [label for _, label in results.data.test_items]
    confidence = objective.confidence
    variants = []
    for v in results.variants:
        update: dict[str, object] = {}
        if v.latency is not None and baseline.latency is not None:
            update["latency"] = latency_against(v.latency, baseline.latency, confidence)
        if v is not baseline:
            update["paired"] = paired_against(v, baseline, labels, results.model.classes, confidence)
            update["fidelity"] = fidelity_against(v, baseline, confidence)
        variants.append(v.model_copy(update=update))
    if not measurable(variants[0]):
        why = baseline.load_error or baseline.stopped_early or "no figures"
        raise ModelError(f"the baseline {baseline.name} was not measured here ({why}); "
                         "nothing can be chosen against it: measure on a runtime that loads it")
    candidates = [_candidate(v, variants[0], labels, objective) for v in variants if measurable(v)]
    choice = select(candidates, baseline.name, objective, target)
    other_form: ObjectiveForm = "paper" if objective.form == "default" else "default"
    other = select(candidates, baseline.name, objective.replaced(form=other_form), target)
    scored = []
    for v in variants:
        if measurable(v):
            s, o = choice.score_of(v.name), other.score_of(v.name)
            verdict = Verdict(
                L=s.L, L_low=s.L_low, L_high=s.L_high, L_other_form=o.L, delta_size=s.delta_size,
                delta_time=s.delta_time, delta_metric=s.delta_metric, metric_loss=s.metric_loss,
                metric_loss_low=s.metric_loss_low, metric_loss_high=s.metric_loss_high, eligible=s.eligible,
                excluded_because=s.excluded_because, pareto=s.on_pareto_front, guard=s.guard, over_budget=s.over_budget,
            )
            scored.append(v.model_copy(update={"score": verdict}))
        else:
            scored.append(v.model_copy(update={"score": None}))
    unmeasured = [v for v in scored if v.score is None]
    reasons = list(choice.reasons) + [
        f"{v.name} was not eligible: " + (f"it does not load here ({v.load_error})." if not v.loadable
                                          else v.stopped_early or "it was not measured.")
        for v in unmeasured
    ]
    return results.model_copy(update={
        "variants": scored,
        "choice": Choice(
            objective=objective.to_jsonable(), target=list(target), baseline=baseline.name, selected=choice.selected,
            reasons=reasons, ranking=[s.name for s in choice.ranking] + [v.name for v in unmeasured],
            tie=list(choice.tie), tie_broken_by=choice.tie_broken_by, guard_rule=choice.guard_rule,
            other_form_selected=other.selected,
        ),
    })


def device_target(device: Results) -> tuple[str, ...]:
    """The runtimes a device ran: only variants for them can be chosen for it."""
    return tuple(sorted({v.backend for v in device.variants if v.loadable}))


def choose_for_device(run: Results, run_sha256: str, device: Results, objective: Objective) -> Results:
    """The device's own choice: its latencies, its accuracy, its runtime; what it cannot load is out."""
    if device.kind != "device-bench":
        raise ConfigError("a --device-results file must be written by 'edgeopt device bench'")
    if device.source_results_sha256 != run_sha256:
        raise ConfigError(
            "the device results were measured from another optimize run (its results.json differs); "
            "run 'edgeopt device bench' on a copy of this run"
        )
    known = {v.name for v in run.variants}
    if not {v.name for v in device.variants} <= known:
        raise ConfigError("the device results name variants this run does not have")
    carried = _carry_exclusions(run, device, objective)
    if objective.max_metric_loss is None or objective.guard == "benefit-of-doubt":
        return decide(carried, objective, device_target(device))
    # What the guard allows is for the build machine's test split to show (its exclusions are carried
    # above); a device's few samples show nothing within a tolerance, and can only add what they show worse.
    decided = decide(carried, objective.replaced(guard="benefit-of-doubt"), device_target(device))
    assert decided.choice is not None
    note = (f"On this device the {objective.guard} guard is the build machine's: its {len(run.data.test_items)} test images "
            f"decided what may be chosen; this device's {len(device.data.test_items)} images can only exclude what they "
            "show worse (the benefit-of-doubt rule below).")
    return decided.model_copy(update={"choice": decided.choice.model_copy(update={
        "reasons": [decided.choice.reasons[0], note, *decided.choice.reasons[1:]]})})


# In a device variant's stopped_early: what the build machine's test split excluded (the report's verdict).
ON_BUILD_MACHINE = "on the build machine"


def _carry_exclusions(run: Results, device: Results, objective: Objective) -> Results:
    """A device checks accuracy on a few labelled samples, too few to prove a variant clearly
    worse (or worse than allowed); the build machine's whole test split can. What the guard (at this
    objective's tolerance) or the race found so there stays out on the device."""
    if objective.max_metric_loss is None or run.choice is None:
        return device
    # The budgets are the device's to apply, on its own latencies; here they would only hide verdicts.
    unbudgeted = objective.replaced(max_latency_ms=None, max_file_kb=None, max_transfer_kb=None)
    try:
        judged = decide(run.model_copy(update={"choice": None}), unbudgeted, tuple(run.choice.target))
    except ConfigError:  # nothing of the run passes this objective on its own runtime: no verdicts to carry
        return device
    n = len(run.data.test_items)
    out = {v.name: f"{v.score.guard} {ON_BUILD_MACHINE}'s {n} test images ({v.score.excluded_because})"
           for v in judged.variants if v.score is not None and v.score.guard in EXCLUDED_BY_GUARD}
    out |= {v.name: f"{v.stopped_early} {ON_BUILD_MACHINE}" for v in run.variants
            if v.stopped_early.startswith("stopped after")}
    return device.model_copy(update={"variants": [
        v.model_copy(update={"stopped_early": out[v.name]}) if v.name in out and v.loadable and v is not device.variants[0] else v
        for v in device.variants]})


def fleet_results(repo: Path, run_sha256: str) -> dict[str, list[Results]]:
    """The device benchmarks of one run that the fleet uploaded, by device class. A device is the one
    that signed the upload (its folder, fleet/bench/<device id>/), whatever the file says; the class is
    the one `edgeopt serve` recorded (the device's last reported)."""
    from edgeopt.results import load_results

    classes: dict[str, list[Results]] = {}
    for path in sorted((Path(repo) / "fleet" / "bench").glob(f"*/{run_sha256}.json")):
        results = load_results(path)
        results = results.model_copy(update={"machine": {**results.machine, "device_id": path.parent.name}})
        classes.setdefault(str(results.machine.get("device_class") or "unknown"), []).append(results)
    return classes


def pool_devices(devices: list[Results]) -> Results:
    """Several devices of one class as one: every device's latency rounds, and accuracy over all
    their images (each device checks its own samples). A variant counts as loadable only if every
    device loaded it."""
    from edgeopt.measure import accuracy_of

    if len(devices) == 1:
        return devices[0]
    first = devices[0]
    classes = first.model.classes
    items = [(f"{d.machine.get('device_id', i)}/{p}", c) for i, d in enumerate(devices) for p, c in d.data.test_items]
    labels = np.array([c for _, c in items])
    variants = []
    for v in first.variants:
        copies = [d.variant(v.name) for d in devices]
        broken = next((c for c in copies if not c.loadable), None)
        if broken is not None or any(c.latency is None or c.predictions is None for c in copies):
            variants.append(v.model_copy(update={"loadable": False, "load_error": broken.load_error if broken else "not measured",
                                                 "latency": None, "test": None, "predictions": None, "paired": None}))
            continue
        latencies = [c.latency for c in copies if c.latency is not None]
        predictions = [c.predictions for c in copies if c.predictions is not None]
        rounds = [m for lat in latencies for m in lat.round_medians_ms]
        median = float(np.median(rounds))
        invocations = sum(lat.invocations for lat in latencies)
        latency = latencies[0].model_copy(update={
            "median_ms": median, "round_medians_ms": rounds, "spread": (max(rounds) - min(rounds)) / median,
            "p90_ms": max(lat.p90_ms for lat in latencies), "invocations": invocations})
        predicted = np.array([p for pr in predictions for p in pr.test])
        confidence = np.array([p for pr in predictions for p in pr.test_confidence])
        accuracy = accuracy_of(predicted, confidence, labels, classes)
        test = Accuracy(accuracy=accuracy.accuracy, count=accuracy.count, confusion=[list(r) for r in accuracy.confusion],
                        per_class={k: (None if x != x else x) for k, x in accuracy.per_class.items()})
        variants.append(v.model_copy(update={
            "latency": latency, "test": test, "paired": None,
            "predictions": Predictions(test=[int(p) for p in predicted], test_confidence=[float(c) for c in confidence])}))
    return first.model_copy(update={
        "variants": variants, "choice": None,
        "data": first.data.model_copy(update={"test_items": items, "split_note": f"the labelled samples of {len(devices)} devices"}),
        "notes": [*first.notes, f"Pooled from {len(devices)} devices of class {first.machine.get('device_class')}: "
                  "every device's latency rounds, and accuracy over all their samples."],
    })
