"""Breaking a tie between candidates whose L lie within the margin (edgeopt.objective's module doc
gives the order), and the paired comparisons it rests on. Plain numbers, no runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # objective imports this module: its types are needed for annotations only
    from edgeopt.objective import Candidate, Objective, Score

# In a tie, a transfer smaller by less than this share is no smaller (a few bytes of zstd output).
TRANSFER_TIE = 0.01
# In a tie, the simpler input contract: a uint8 input takes a camera's raw bytes as they are; any
# other needs a conversion on the device (a cast to float, or a shift to int8).
_INPUT_RANK = {"uint8": 0}


@dataclass(frozen=True)
class TieSteps:
    """How a tie was broken (module doc): what each step kept, and the names of those that decided."""

    winner: Score
    kept: list[Score]  # after setting aside
    shown: list[Score]  # shown within the tolerance, when any of the kept is
    top: Score  # the most accurate of `shown`
    leaders: list[Score]  # of `shown`, those not measurably less accurate than `top`
    lightest: list[Score]  # of `leaders`, those within TRANSFER_TIE of the smallest transfer
    simplest: list[Score]  # of `lightest`, those with the simplest input contract
    deciders: list[str]


def break_tie(tied: list[Score], by_name: dict[str, Candidate], baseline: Candidate, objective: Objective) -> TieSteps:
    limit = objective.max_metric_loss

    def better_metric(s: Score) -> float:
        m = by_name[s.name].metric
        return -m if objective.metric.higher_is_better else m

    def transfer(s: Score) -> float:
        c = by_name[s.name]
        return c.transfer_bytes if c.transfer_bytes else c.size_bytes

    # Set aside: a tied variant the test images show to lose against the baseline; one whose point loss
    # is beyond the tolerance (benefit-of-doubt kept it: its loss is unproven); one that could lose more
    # than twice the tolerance. A smaller file must not buy a loss the user did not allow.
    kept = [s for s in tied if not measurably_worse(by_name[s.name], baseline, objective)] or tied
    kept = [s for s in kept if s.guard != "loss unproven"] or kept
    if limit is not None:
        kept = [s for s in kept if s.metric_loss_high <= 2 * limit + 1e-12] or kept
    shown = [s for s in kept if limit is not None and s.metric_loss_high <= limit + 1e-12] or kept
    # The better metric only where it is measurably better: those not measurably worse than the most
    # accurate stay.
    top = min(shown, key=lambda s: (better_metric(s), transfer(s)))
    leaders = [s for s in shown if s is top or not measurably_worse(by_name[s.name], by_name[top.name], objective)]
    smallest = min(transfer(s) for s in leaders)
    lightest = [s for s in leaders if transfer(s) <= smallest * (1 + TRANSFER_TIE)]
    simplest_rank = min(_INPUT_RANK.get(by_name[s.name].input_dtype, 1) for s in lightest)
    simplest = [s for s in lightest if _INPUT_RANK.get(by_name[s.name].input_dtype, 1) == simplest_rank]
    winner = min(simplest, key=lambda s: (transfer(s), better_metric(s), s.L, s.name))
    deciders = [name for name, before, after in (
        ("set aside", tied, kept), ("shown within", kept, shown), ("metric", shown, leaders), ("size", leaders, lightest),
        ("input", lightest, simplest)) if len(after) < len(before)]
    if len(simplest) > 1 and "size" not in deciders and len({transfer(s) for s in simplest}) > 1:
        deciders.append("size")
    return TieSteps(winner, kept, shown, top, leaders, lightest, simplest, deciders)


def rounds_pair(a: Candidate, b: Candidate) -> bool:
    """Whether a and b carry latency ratios of the same interleaved rounds."""
    return bool(a.latency_ratios and b.latency_ratios and len(a.latency_ratios) == len(b.latency_ratios))


def images_pair(a: Candidate, b: Candidate) -> bool:
    """Whether a and b carry right-or-wrong answers on the same test images."""
    return bool(a.correct and b.correct and len(a.correct) == len(b.correct))


def measurably_worse(a: Candidate, b: Candidate, objective: Objective) -> bool:
    """Whether a's metric is measurably worse than b's: the paired interval of a - b (on the same
    images) lies wholly on the worse side of 0. Unpaired figures: only an exact difference counts."""
    if images_pair(a, b):
        import numpy as np

        from edgeopt.stats import paired_difference

        paired = paired_difference(np.array(b.correct), np.array(a.correct), objective.confidence)
        return paired.high < 0 if objective.metric.higher_is_better else paired.low > 0
    if a.metric_delta_interval is None and b.metric_delta_interval is None:
        return a.metric < b.metric if objective.metric.higher_is_better else a.metric > b.metric
    return False
