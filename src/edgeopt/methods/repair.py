"""Accuracy-aware selective quantization: keep the most sensitive ops in float until the held-out
damage is repaired, at the least cost.

Shared by the LiteRT and ONNX Runtime guarded methods, which each supply
- the ops ranked by their own quantization error (most sensitive first), measured layer by layer
  on held-out images (LiteRT's quantization debugger; ONNX Runtime's qdq_loss_debug), and
- a builder that writes the int8 model with the first k of them left in float.
The damage a repair measures is the held-out images on which the int8 model's answer differs from
the float model's (in percent). It bounds the accuracy loss from above -- each changed answer
moves accuracy by at most one image -- and unlike the loss it is not hidden by changed answers
that happen to go the right way (on the reference model int8 was 2.6 points *more* accurate than
float on the 192 validation photos while changing 3% of its answers). A guarded variant is built
only when its unguarded sibling changes more than the target share of answers; then the search
looks for the fewest ops in float (more cost size and speed) among k = 0, 1, 2, 4, 8, ... up to a
quarter of the ranked ops. Keeping more ops in float changes fewer answers, up to noise, so after
k = 0 it tries the largest k: when even that misses the target, the repair cannot reach it and the
search ends there. It keeps the largest k only if that changes *significantly* fewer answers than
k = 0 (the exact paired test of stats.conditional_difference on the same images: the two-sided interval
of the difference at the run's confidence lies above zero, a one-sided test at half its error
rate), and else builds no guarded variant: it would be its sibling again, or
a slower copy of it whose gain is noise. Trying the k between would only pick among noise: on the
reference model 1.8, 2.0, 2.0, 1.8, 2.0 and 1.5% changed for k = 0 to 16, each candidate a
conversion and a pass over 1,000 images; and 15 against 18 changed answers of 1,000 (LiteRT) or 16
against 17 (ONNX Runtime, at 2.3x the latency) is no repair.
The largest k is run on the images k = 0 changes first, then on the rest in blocks, and its pass
stops once no answer on the images not yet run could let it meet the target or be significantly
better (on the reference model, LiteRT's after about a fifth of the images, ONNX Runtime's after
its first 17): the verdict is the full pass's, because more images can only add newly changed answers.
When the largest k meets the target, it bisects between the two for the fewest within it (noise
may hide a smaller k that also meets it, as it may in any search that stops). The
held-out images are the split's validation part, then train images not used for calibration;
never the test photos that judge the variant later.

This is the one place a method measures accuracy while it builds, so it opens a runtime session.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError
from edgeopt.methods.base import BuildContext, sha256_of
from edgeopt.pixels import PixelTransform
from edgeopt.stats import PairedDifference, conditional_difference

# Largest share of the ranked ops the search may leave in float: beyond that the "int8" model is
# mostly float and loses its point.
MAX_FLOAT_SHARE = 0.25
# Held-out images the largest k is run on between two looks at whether the rest can still matter.
LOOK_EVERY = 50


class NoGuardedVariant(Exception):
    """No guarded variant is built; the message says why and `label` says it in a progress line."""

    label = "not built"


class RepairNotNeeded(NoGuardedVariant):
    """The unguarded variant already agrees with the float model within the target."""

    label = "not needed"


class RepairNotFound(NoGuardedVariant):
    """The most ops in float change not significantly fewer answers than none does, so the
    "repair" would be its unguarded sibling again, or a slower copy of it whose gain is noise
    (measured and shown twice, at twice the cost)."""

    label = "no repair found"


@dataclass(frozen=True)
class HeldOut:
    """The held-out images a repair is measured on, and how a model is run on them."""

    backend: str  # the runtime the models are run on
    pixels: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # the true class of each image
    # What a float-input source model takes, as in its evaluation (no default: forgetting it
    # judged an .onnx model's answers to the wrong input).
    transform: PixelTransform
    threads: int = 2  # of each pass: the build's share of the cores
    # Each file's answers by runtime and sha256, shared by one build's check and search (None: not kept).
    answers: dict[str, np.ndarray] | None = None


def held_out(ctx: BuildContext, backend: str) -> HeldOut:
    """The build's held-out images for a guarded method of `backend`."""
    if ctx.holdout is None or ctx.holdout_labels is None or len(ctx.holdout_labels) == 0:
        raise ConfigError("a guarded method needs held-out images; the model's split has no validation part")
    return HeldOut(backend, ctx.holdout, ctx.holdout_labels, ctx.pixel_transform, ctx.holdout_threads,
                   ctx.held_out_answers)


@dataclass(frozen=True)
class Step:
    spared: int
    loss_pp: float  # held-out accuracy of the float model minus this model's, percentage points
    changed_pp: float  # held-out images whose top-1 differs from the float model's, percent


def _step(k: int, predicted: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Step:
    loss = 100 * (float(np.mean(reference == labels)) - float(np.mean(predicted == labels)))
    return Step(k, round(loss, 4), round(100 * float(np.mean(predicted != reference)), 4))


def check_needed(sibling: Path, float_model: Path, held: HeldOut, target_pp: float, sibling_name: str) -> None:
    """Raise RepairNotNeeded when the unguarded sibling changes few enough held-out answers."""
    step = _step(0, held_out_answers(sibling, held), held_out_answers(float_model, held), held.labels)
    if step.changed_pp <= target_pp:
        raise RepairNotNeeded(
            f"{sibling_name} changes {step.changed_pp:.2f}% of {len(held.labels)} held-out answers of the float model, "
            f"within the repair target of {target_pp:g}% (held-out loss {step.loss_pp:+.2f} pp): nothing to repair, so "
            "no guarded variant was built"
        )


def _mended(gain: PairedDifference, confidence: float, partial: bool = False) -> str:
    """The paired evidence of a repair, in words. `partial`: from a pass that stopped early, the
    images not run counted as agreeing with the float model; the full pass's low end of the
    interval can only be lower (its high end is no bound, so it is not given)."""
    if partial:
        return (f"{gain.variant_only} answers mended, at least {gain.baseline_only} newly changed: at most "
                f"{100 * gain.low:+.2f} pp more agreement with the float model at the low end of the "
                f"{100 * confidence:g}% interval")
    return (f"{gain.variant_only} answers mended, {gain.baseline_only} newly changed: {100 * gain.low:+.2f} to "
            f"{100 * gain.high:+.2f} pp more agreement with the float model at {100 * confidence:g}% confidence")


def top1_runner(path: Path, backend: str, threads: int,
                transform: PixelTransform) -> Callable[[np.ndarray], np.ndarray]:
    """A model opened once, as a function from held-out pixels to its top-1 answers."""
    from edgeopt.runtimes.registry import get_runtime

    session = get_runtime(backend).open(path, threads, transform)
    return lambda pixels: session.predict(pixels).argmax(axis=1)


def held_out_answers(path: Path, held: HeldOut) -> np.ndarray:
    """The model's answers on every held-out image, run once per distinct file of one build (see
    HeldOut.answers). The float model is asked by the check and by the search, and a search's
    k = 0 candidate is usually the sibling's very bytes; each costs a pass over every held-out image."""
    key = f"{held.backend}:{sha256_of(Path(path))}"
    if held.answers is not None and key in held.answers:
        return held.answers[key]
    answers = top1_runner(path, held.backend, held.threads, held.transform)(held.pixels)
    if held.answers is not None:
        held.answers[key] = answers
    return answers


def _answers_until_settled(path: Path, held: HeldOut, first: np.ndarray,
                           settled: Callable[[np.ndarray], bool]) -> tuple[np.ndarray, int]:
    """The model's held-out answers, run on the images `first` first, then LOOK_EVERY at a time,
    until `settled(answers)` says that the images not yet run cannot change the verdict; -1 marks
    an image not run. Returns the answers and how many images were run."""
    top1 = top1_runner(path, held.backend, held.threads, held.transform)
    rest = np.setdiff1d(np.arange(len(held.labels)), first)
    blocks = [first] + [rest[i:i + LOOK_EVERY] for i in range(0, len(rest), LOOK_EVERY)]
    answers = np.full(len(held.labels), -1)
    run = 0
    for block in blocks:
        if len(block) == 0:
            continue
        answers[block] = top1(held.pixels[block])
        run += len(block)
        if run < len(answers) and settled(answers):
            break
    return answers, run


def search(
    ranked: Sequence[str],
    build: Callable[[Sequence[str], Path], object],
    float_model: Path,
    held: HeldOut,
    target_pp: float,
    out: Path,
    sensitivity: str,
    *,
    sibling_built: bool = True,
    confidence: float = 0.95,
    unguarded: Path | None = None,
) -> dict[str, Any]:
    """Write to `out` the int8 model with the fewest float ops found whose held-out answers differ
    from the float model's on at most `target_pp` percent of the images (when none tried does, the
    one with the most float ops if it changed significantly fewer answers than k = 0, at
    `confidence`; else raise RepairNotFound, or keep k = 0 when the unguarded sibling is not built
    in this run: it is then the only int8 model of its runtime);
    `unguarded` is the k = 0 model when it is built already (copied rather than built again);
    return the repair record (edgeopt.results.Repair fields). No candidate file is left beside
    `out`, whatever happens."""
    labels = held.labels
    reference = held_out_answers(float_model, held)
    limit = max(1, int(len(ranked) * MAX_FLOAT_SHARE))
    ks = [0] + [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= limit]
    steps: dict[int, Step] = {}
    predicted: dict[int, np.ndarray] = {}
    candidates: dict[int, Path] = {}
    images_run = len(labels)  # by the largest k, whose pass may stop early

    def candidate(k: int) -> Path:
        candidates[k] = out.with_name(f".{out.stem}-k{k}{out.suffix}")
        if k == 0 and unguarded is not None:
            shutil.copyfile(unguarded, candidates[k])
        else:
            build(ranked[:k], candidates[k])
        return candidates[k]

    def meets_target(i: int) -> bool:
        """Whether ks[i] ops in float meet the target; builds and measures that candidate once."""
        k = ks[i]
        if k not in steps:
            predicted[k] = held_out_answers(candidate(k), held)
            steps[k] = _step(k, predicted[k], reference, labels)
        return steps[k].changed_pp <= target_pp

    def agreement_gain(answers: np.ndarray) -> PairedDifference:
        """Agreement with the float model, k = 0 against `answers`, on the same images."""
        return conditional_difference(predicted[0] == reference, answers == reference, confidence)

    def largest_misses_target() -> bool:
        """meets_target for the largest k, after k = 0 missed it, negated; with the sibling built (so
        that a miss without significance builds nothing), its pass stops once the verdict is
        settled. The images not run count as agreeing with the float model: the best they could do."""
        nonlocal images_run
        k = ks[-1]
        if not sibling_built:
            return not meets_target(len(ks) - 1)

        def at_best(answers: np.ndarray) -> np.ndarray:
            return np.where(answers < 0, reference, answers)

        def settled(answers: np.ndarray) -> bool:
            best = at_best(answers)
            return _step(k, best, reference, labels).changed_pp > target_pp and not agreement_gain(best).low > 0

        answers, images_run = _answers_until_settled(candidate(k), held, np.flatnonzero(predicted[0] != reference),
                                                     settled)
        predicted[k] = at_best(answers)
        steps[k] = _step(k, predicted[k], reference, labels)
        return steps[k].changed_pp > target_pp

    evidence = ""  # the paired test's, when the largest k misses the target
    try:
        if meets_target(0):
            best = 0
        elif largest_misses_target():
            largest = ks[-1]
            gain = agreement_gain(predicted[largest])
            stopped = images_run < len(labels)
            evidence = _mended(gain, confidence, partial=stopped)
            if sibling_built and not gain.low > 0:
                changed_by_0 = int(np.sum(predicted[0] != reference))
                raise RepairNotFound(
                    f"with {largest} ops in float, the most the search tries, the model still changes "
                    f"{'at least ' if stopped else ''}{steps[largest].changed_pp:.2f}% of {len(labels)} held-out "
                    f"answers of the float model, against {steps[0].changed_pp:.2f}% with none (the repair target is "
                    f"{target_pp:g}%): not significantly fewer ({evidence}"
                    + (f"; its pass stopped after {images_run} images, the {changed_by_0} that k = 0 changes and "
                       f"{images_run - changed_by_0} more, as no answers on the other {len(labels) - images_run} "
                       "could change that" if stopped else "")
                    + "), so no repair found and no guarded variant was built"
                )
            best = largest if gain.low > 0 else 0
        else:
            failing, meeting = 0, len(ks) - 1
            while meeting - failing > 1:
                middle = (failing + meeting) // 2
                failing, meeting = (failing, middle) if meets_target(middle) else (middle, meeting)
            best = ks[meeting]
        candidates.pop(best).replace(out)
    finally:
        for path in candidates.values():
            path.unlink(missing_ok=True)
    chosen = steps[best]
    tried = [steps[k] for k in sorted(steps)]
    met = chosen.changed_pp <= target_pp
    note = (
        f"Searched k = {', '.join(str(s.spared) for s in tried)} on {len(labels)} held-out images; "
        + (f"k = {chosen.spared} is the fewest tried that changes at most {target_pp:g}% of the float model's answers."
           if met else f"none reached the target of {target_pp:g}% changed answers, not even k = {ks[-1]}, the most it "
           f"tries (at most a quarter of the ranked ops); "
           + (f"k = {chosen.spared} changed significantly fewer than none ({evidence})." if chosen.spared else
              "k = 0 is kept: more ops in float changed not significantly fewer, and the run has no other int8 model of "
              "its runtime."))
    )
    return {
        "spared": list(ranked[: chosen.spared]),
        "sensitivity": sensitivity,
        "changed_before_pct": steps[0].changed_pp,
        "changed_after_pct": chosen.changed_pp,
        "loss_before_pp": steps[0].loss_pp,
        "loss_after_pp": chosen.loss_pp,
        "steps": [{"spared": float(s.spared), "changed_pct": s.changed_pp, "loss_pp": s.loss_pp} for s in tried],
        "note": note,
    }
