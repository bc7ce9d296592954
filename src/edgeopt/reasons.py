"""The prose of a choice: why objective.select chose what it chose, in sentences a person reads.

Works on objective's scores and candidates (plain numbers, no runtime); objective calls it, and
nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeopt.budgets import describe_budgets, has_budget
from edgeopt.guard import rule_in_words

if TYPE_CHECKING:  # objective imports this module: its types are needed for annotations only
    from edgeopt.objective import Candidate, Objective, Score

# A winner losing more than this (display units: pp for accuracy) without a guard gets a warning.
WARN_METRIC_LOSS = 1.0


@dataclass(frozen=True)
class Decision:
    """What select found, for the reasons to tell."""

    winner: Score
    # The lowest L, and the candidates tied with it within noise (best first; [best] alone: no tie).
    best: Score
    tied: Sequence[Score]
    # Choice.tie_broken_by.
    broken_by: str
    # Eligible first, the winner first.
    ranking: Sequence[Score]
    # How the comparisons told of were made: every L against best's (the tied, or the runner-up) on
    # the same latency rounds and images; the metric of those the tie's metric step dropped against
    # `top`'s, and of those set aside against the baseline's, on the same images. False where a
    # candidate lacks per-round ratios or per-image answers (a results file without them, or one
    # whose predictions do not match its labels): its separate intervals against the baseline decided.
    paired: bool
    dropped_on_same_images: bool
    set_aside_on_same_images: bool
    # Tied variants set aside (measurably worse than the baseline, or loss unproven).
    set_aside: Sequence[Score] = ()
    # Among the tied that were kept: those shown within the tolerance (all kept when none is); of
    # them those not measurably worse than the most accurate, `top`; of those, the ones within
    # TRANSFER_TIE of the smallest transfer, and of those the ones with the simplest input.
    leaders: Sequence[Score] = ()
    top: Score | None = None
    shown: Sequence[Score] = ()
    lightest: Sequence[Score] = ()
    simplest: Sequence[Score] = ()


def render_guard_rule(objective: Objective) -> str:
    if objective.max_metric_loss is None:
        return "No accuracy guard (--no-guard): every variant is eligible whatever it loses."
    return rule_in_words(objective.guard, objective.max_metric_loss, objective.metric.loss_unit, objective.metric.name,
                         objective.confidence)


def _signed(value: float) -> str:
    return f"{value + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"


def _fmt_loss(s: Score, unit: str) -> str:
    return f"{_signed(-s.metric_loss)} {unit} [{_signed(-s.metric_loss_high)}, {_signed(-s.metric_loss_low)}]"


def render_reasons(
    decision: Decision, by_name: dict[str, Candidate], baseline_name: str, objective: Objective, rule: str,
) -> list[str]:
    d = decision
    winner, best, tied, ranking = d.winner, d.best, d.tied, d.ranking
    unit = objective.metric.loss_unit
    eligible = [s for s in ranking if s.eligible]
    cand = by_name[winner.name]
    discordant = f", {cand.discordant} discordant image(s)" if cand.discordant is not None else ""
    compared = ("from the same latency rounds and the same images" if d.paired else
                f"partly from separate intervals against {baseline_name} (not every pair shares latency rounds "
                "and images)")
    reasons = [
        f"{winner.name}: L = {winner.L:.2f} [{winner.L_low:.2f}, {winner.L_high:.2f}] (size {winner.delta_size:+.1%}, "
        f"time {winner.delta_time:+.1%}, {objective.metric.name} {_fmt_loss(winner, unit)}{discordant} against "
        f"{baseline_name}); {len(eligible)} of {len(ranking)} variants were eligible."
    ]
    if len(tied) > 1:
        reasons.append(_tie_reason(d, by_name, baseline_name, objective, compared))
    elif len(eligible) > 1:
        runner = eligible[1]
        reasons.append(f"Runner-up: {runner.name} with L = {runner.L:.2f} [{runner.L_low:.2f}, {runner.L_high:.2f}]; "
                       f"the interval of its L minus {best.name}'s, {compared}, lies above 0.")
    if objective.max_metric_loss is not None:
        reasons.append(rule)
        reasons.append(f"Ties: candidates whose L differ by less than the margin, {objective.margin:g}, are tied "
                       "(--margin); a tie goes to the variant shown closer to the baseline in accuracy, then the smaller "
                       "transfer, then the simpler input contract (uint8).")
    if has_budget(objective):
        over = [s.name for s in ranking if s.over_budget]
        reasons.append(f"Budgets ({describe_budgets(objective)}), constraints before the objective: "
                       + (f"{len(over)} variant(s) over them ({', '.join(over)})." if over else "every variant fits them."))
    for s in ranking:
        if s.guard == "loss unproven" and s.eligible:
            reasons.append(
                f"{s.name} loses {s.metric_loss:.2f} {unit} [{s.metric_loss_low:.2f}, {s.metric_loss_high:.2f}]: more than "
                f"the allowed {objective.max_metric_loss:g} {unit} at its point estimate, but its interval reaches 0 (the "
                "test set cannot tell that loss from none); it stays eligible."
            )
    for s in ranking:
        if s.words and s.guard != "baseline":
            reasons.append(f"{s.name}: {s.words}." + _fidelity_words(by_name[s.name], baseline_name, objective))

    for s in ranking:
        if not s.eligible:
            reasons.append(f"{s.name} was excluded: it {s.excluded_because}.")
    if winner.metric_loss > WARN_METRIC_LOSS and objective.max_metric_loss is None:
        reasons.append(
            f"Warning: {winner.name} loses {winner.metric_loss:.2f} {unit} of {objective.metric.name} against "
            f"{baseline_name}, and no guard is set; the weights trade that for size and speed."
        )
    if objective.form == "paper":
        reasons.append(
            "Objective 'paper' uses the study's sign for the metric term, which rewards a loss "
            "of accuracy; use the default objective to choose a model for production."
        )
    if not winner.on_pareto_front:
        reasons.append(
            f"Note: {winner.name} is not on the Pareto front of size, latency and "
            f"{objective.metric.name}; the weights favour it anyway."
        )
    return reasons


def _fidelity_words(c: Candidate, baseline_name: str, objective: Objective) -> str:
    """The second witness: answers that differ from the baseline's (no labels needed)."""
    if c.fidelity is None or objective.metric.display_scale <= 0:
        return ""
    from edgeopt.stats import share_interval

    test_changed, test_images, changed, images = c.fidelity
    low, high = share_interval(changed, images, objective.confidence)
    scale = objective.metric.display_scale
    unit = objective.metric.loss_unit
    return (f" It answers as {baseline_name} on {images - changed:,} of the {images:,} images decoded "
            f"({changed} changed: {100 * changed / images:.2f}% [{100 * low:.2f}, {100 * high:.2f}]); on the {test_images:,} "
            f"test images it changes {test_changed}, so it cannot have lost more than {scale * test_changed / test_images:.2f} "
            f"{unit} on them.")


def _tie_reason(d: Decision, by_name: dict[str, Candidate], baseline_name: str, objective: Objective,
                compared: str) -> str:
    unit = objective.metric.loss_unit
    members = ", ".join(f"{s.name} {s.L:.2f} [{s.L_low:.2f}, {s.L_high:.2f}]" for s in d.tied)
    scale = objective.metric.display_scale
    rest = [s for s in d.tied if s not in d.set_aside]
    decided = d.broken_by.removeprefix("set aside").removeprefix(", then ")
    from edgeopt.ties import TRANSFER_TIE

    def names(scores: Sequence[Score]) -> str:
        return ", ".join(s.name for s in scores)

    parts = decided.split(", then ") if decided else []
    how_parts = []
    for step in parts:
        if step == "shown within":
            how_parts.append(f"preferring {names(d.shown)}, shown within the allowed {objective.max_metric_loss:g} {unit}")
        elif step == "metric":
            assert d.top is not None  # the most accurate of the tied that were kept (select)
            dropped = [s for s in d.shown if s not in d.leaders]
            how_parts.append(
                f"the measurably better {objective.metric.name} ({d.top.name} {by_name[d.top.name].metric * scale:.2f}; "
                f"{names(dropped)} measurably {'lower' if objective.metric.higher_is_better else 'higher'}"
                f"{' on the same images' if d.dropped_on_same_images else ''})")
        elif step == "size":
            winner = by_name[d.winner.name]
            what = "transfer" if winner.transfer_bytes else "file"
            if "metric" in parts:
                how_parts.append(f"the smaller {what} among {names(d.leaders)} ({d.winner.name}, {_transfer(winner):,.0f} bytes)")
            else:
                spread = sorted(by_name[s.name].metric * scale for s in rest)
                how_parts.append(f"the smaller {what} ({_transfer(winner):,.0f} bytes): their {objective.metric.name} "
                                 + (f"is equal ({spread[0]:.2f})" if spread[0] == spread[-1] else
                                    f"({spread[0]:.2f} to {spread[-1]:.2f}) differs by no more than the test images can tell"))
        elif step == "input":
            how_parts.append(f"the simpler input contract ({d.winner.name} takes uint8: a camera's raw bytes as they are; "
                             f"the others' transfers are within {TRANSFER_TIE:.0%} of each other)")
    how = ", then ".join(how_parts)
    if d.set_aside:
        limit = objective.max_metric_loss

        def why(s: Score) -> str:
            if s.guard == "loss unproven":
                return "beyond the allowed loss at its point estimate"
            if limit is not None and s.metric_loss_high > 2 * limit and s.metric_loss_low <= 0:
                return f"it could lose more than twice the allowed {limit:g} {unit}"
            return f"measurably worse than {baseline_name}{' on the same images' if d.set_aside_on_same_images else ''}"

        how = (f"setting aside {', '.join(f'{s.name} ({_fmt_loss(s, unit)}: {why(s)})' for s in d.set_aside)} "
               "(a tied variant that is neither is preferred to it, whatever its file size)"
               + (f", then among {names(rest)} by {how}" if how else ""))
    within = "reaches 0" if objective.margin <= 0 else f"reaches below the margin of {objective.margin:g}"
    return (f"Tie within measurement noise: {members}; none is measurably worse than the lowest L ({d.best.name}) "
            f"-- the interval of each one's L minus {d.best.name}'s, {compared}, {within} -- so the tie is broken "
            f"by {how}.")


def _transfer(c: Candidate) -> float:
    return c.transfer_bytes if c.transfer_bytes else c.size_bytes
