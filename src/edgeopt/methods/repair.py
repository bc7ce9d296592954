"""Accuracy-aware selective quantization: keep the most sensitive ops in float until the held-out
damage is repaired, at the least cost.

Shared by the LiteRT and ONNX Runtime guarded methods, which each supply
- the ops ranked by their own quantization error (most sensitive first), measured layer by layer
  on held-out images (LiteRT's quantization debugger; ONNX Runtime's qdq_loss_debug), and
- a builder that writes the int8 model with the first k of them left in float.
The search tries k = 0, 1, 2, 4, 8, ... and stops at the first k whose held-out point loss against
the float model is within the target; more float ops cost size and speed, so fewer is better.
If none is, it keeps the k with the least loss (then the fewest ops). The held-out images are the
split's validation part: never fitted and never the test photos that judge the variant later.

This is the one place a method measures accuracy while it builds, so it opens a runtime session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError

# Largest share of the ranked ops the search may leave in float: beyond that the "int8" model is
# mostly float and loses its point.
MAX_FLOAT_SHARE = 0.25


@dataclass(frozen=True)
class Step:
    kept_float: int
    loss_pp: float  # held-out accuracy of the float model minus this model's, percentage points
    flips: int  # held-out images whose top-1 differs from the float model's


def holdout_top1(path: Path, backend: str, pixels: np.ndarray) -> np.ndarray:
    from edgeopt.runtimes.registry import get_runtime

    return get_runtime(backend).open(path, 2).predict(pixels).argmax(axis=1)


def search(
    ranked: Sequence[str],
    build: Callable[[Sequence[str], Path], object],
    backend: str,
    float_model: Path,
    holdout: np.ndarray | None,
    labels: np.ndarray | None,
    target_pp: float,
    out: Path,
    sensitivity: str,
) -> dict[str, Any]:
    """Write to `out` the int8 model with the fewest float ops whose held-out loss is within
    `target_pp`; return the repair record (edgeopt.results.Repair fields)."""
    if holdout is None or labels is None or len(labels) == 0:
        raise ConfigError("a guarded method needs held-out images; the model's split has no validation part")
    reference = holdout_top1(float_model, backend, holdout)
    float_accuracy = float(np.mean(reference == labels))
    limit = max(1, int(len(ranked) * MAX_FLOAT_SHARE))
    ks = [0] + [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= limit]
    steps: list[Step] = []
    best: tuple[float, int, Path] | None = None
    for k in ks:
        candidate = out.with_name(f".{out.stem}-k{k}{out.suffix}")
        build(ranked[:k], candidate)
        predicted = holdout_top1(candidate, backend, holdout)
        step = Step(k, 100 * (float_accuracy - float(np.mean(predicted == labels))), int(np.sum(predicted != reference)))
        steps.append(step)
        if best is None or (step.loss_pp, step.kept_float) < best[:2]:
            if best is not None:
                best[2].unlink(missing_ok=True)
            best = (step.loss_pp, k, candidate)
        else:
            candidate.unlink(missing_ok=True)
        if step.loss_pp <= target_pp:
            break
    assert best is not None
    best[2].replace(out)
    chosen = next(s for s in steps if s.kept_float == best[1])
    met = chosen.loss_pp <= target_pp
    note = (
        f"Searched k = {', '.join(str(s.kept_float) for s in steps)} ops in float on {len(labels)} held-out images; "
        + (f"k = {chosen.kept_float} is the fewest within the target of {target_pp:g} pp."
           if met else f"none reached the target of {target_pp:g} pp; k = {chosen.kept_float} lost least.")
    )
    return {
        "kept_float": list(ranked[: chosen.kept_float]),
        "sensitivity": sensitivity,
        "loss_before_pp": steps[0].loss_pp,
        "loss_after_pp": chosen.loss_pp,
        "steps": [{"kept_float": float(s.kept_float), "loss_pp": s.loss_pp, "flips": float(s.flips)} for s in steps],
        "note": note,
    }
