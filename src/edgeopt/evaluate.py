"""Evaluation that spends its time where it can change the choice.

1. The baseline is evaluated on the whole test split first (everything is judged against it).
2. A short latency pass times every variant: a variant so slow that even a perfect accuracy and
   a latency half as bad as measured leave its L above HOPELESS_L cannot win -- the baseline's L
   is 0, exactly -- and is measured no further.
3. Test accuracy is evaluated in chunks, all variants in turn. After each chunk a variant is
   stopped when two things hold: its paired interval of accuracy loss (against the baseline, on
   the images seen) lies wholly above the guard's tolerance at a stricter confidence that pays for
   the repeated looks (Bonferroni over the chunks); and the full evaluation would exclude it too if
   the remaining images changed nothing (the same discordant images over the whole test split).
   Only answers the variant gets right where the baseline fails, on images not yet seen, could
   then rescue it. A variant that could still win is evaluated on every test image, so the choice
   is the one a full evaluation makes (a test replays the race on a recorded full run).

`race` works on anything that predicts a chunk, so it can be replayed on the predictions a
results file recorded (the tests do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgeopt.objective import Objective
from edgeopt.stats import paired_difference

# Test images per chunk of the race.
CHUNK = 96
# A variant whose best possible L is above this is hopeless (the winner's L is at most 0).
HOPELESS_L = 1.0
# The short latency pass may read this much slower than the full protocol (a noisy moment).
SHORT_PASS_NOISE = 0.5

Predict = Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (start, stop) -> (top-1, confidence)


@dataclass(frozen=True)
class Raced:
    predicted: np.ndarray
    confidence: np.ndarray
    # Why evaluation stopped before the whole test split; "" when it did not.
    stopped: str = ""


def hopeless(size_ratio: float, latency_ratio: float, baseline_accuracy: float, objective: Objective) -> str:
    """Why a variant cannot win on its size and a short latency pass ("" when it can)."""
    if objective.form != "default" or baseline_accuracy <= 0:
        return ""
    best_time = latency_ratio * (1 - SHORT_PASS_NOISE) - 1
    best_accuracy = (baseline_accuracy - 1.0) / baseline_accuracy  # it gets every image right
    best_l = objective.weight_size * (size_ratio - 1) + objective.weight_time * best_time + objective.weight_metric * best_accuracy
    if best_l <= HOPELESS_L:
        return ""
    return (f"hopeless from a short latency pass: {latency_ratio:.1f}x the baseline's time, so even with every test "
            f"image right its L would be at least {best_l:.2f} (the winner's is at most 0)")


def race(
    predictors: Mapping[str, Predict], labels: np.ndarray, baseline: np.ndarray, objective: Objective,
    chunk: int = CHUNK,
) -> dict[str, Raced]:
    """Evaluate every predictor on the test images chunk by chunk, stopping a clearly worse one."""
    n = len(labels)
    base_right = np.asarray(baseline) == labels
    looks = max(1, math.ceil(n / chunk))
    # the tolerance's interval, stricter for each of the looks
    confidence = 1 - (1 - objective.confidence) / looks
    scale = objective.metric.display_scale
    limit = objective.max_metric_loss
    predicted: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    confidences: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    stopped: dict[str, str] = {}
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        for name, predict in predictors.items():
            if name in stopped:
                continue
            top1, conf = predict(start, stop)
            predicted[name].append(np.asarray(top1))
            confidences[name].append(np.asarray(conf))
            if limit is None or stop == n:
                continue
            so_far = np.concatenate(predicted[name]) == labels[:stop]
            paired = paired_difference(base_right[:stop], so_far, confidence)
            loss_low, loss_high = -paired.high * scale, -paired.low * scale
            # the same discordant images, over all n: what the full evaluation would say with nothing more
            projected = paired_difference(np.concatenate([base_right[:stop], np.ones(n - stop, bool)]),
                                          np.concatenate([so_far, np.ones(n - stop, bool)]), objective.confidence)
            if loss_low > limit and -projected.high * scale > limit:
                stopped[name] = (f"stopped after {stop} of {n} test images: it loses {-paired.difference * scale:.2f} "
                                 f"[{loss_low:.2f}, {loss_high:.2f}] {objective.metric.loss_unit} at {confidence:.1%} "
                                 f"confidence ({looks} looks), clearly more than the allowed {limit:g}")
    return {
        name: Raced(np.concatenate(predicted[name]) if predicted[name] else np.zeros(0, np.int64),
                    np.concatenate(confidences[name]) if confidences[name] else np.zeros(0, np.float32),
                    stopped.get(name, ""))
        for name in predictors
    }
