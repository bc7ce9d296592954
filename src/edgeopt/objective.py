"""The objective L, constraints, the Pareto front and the choice of a variant.

Knows nothing of TensorFlow or of any runtime: it works on plain numbers, so the study's own
table can be fed to it in a test.

L(f) = w_s*dS + w_t*dT + w_m*dM, every term a relative change against the baseline f0:
  dS = (S - S0)/S0 (file size), dT = (T - T0)/T0 (time per image),
  dM = (M0 - M)/M0 for a higher-is-better metric (accuracy) and (M - M0)/M0 for a
  lower-is-better one (MSE), so that a worse model always raises L ("default" form).
The "paper" form reproduces the study's arithmetic, dM = (M - M0)/M0, which rewards a loss
of accuracy; it exists to reproduce the study's table, not to choose models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from edgeopt.errors import ConfigError
from edgeopt.settings import Settings

ObjectiveForm = Literal["default", "paper"]
OBJECTIVE_FORMS: tuple[ObjectiveForm, ...] = ("default", "paper")
# L values that agree to this many decimals (what the report prints) are a tie.
TIE_DECIMALS = 2
# A winner losing more than this (display units: pp for accuracy) gets a warning in its reasons:
# with equal weights a 3x smaller file outweighs a loss of several points.
WARN_METRIC_LOSS = 1.0


class Metric(Settings):
    """The quality measure the objective trades against size and time."""

    name: str = "test_accuracy"
    # accuracy: True; MSE or another error: False.
    higher_is_better: bool = True
    # Multiplier from the stored value to the unit a person reads: 100 turns a fraction into
    # percent, so a loss of 0.006 reads as 0.6 percentage points.
    display_scale: float = 100.0
    # The unit of a loss after display_scale: "pp" for accuracy.
    loss_unit: str = "pp"


ACCURACY = Metric()


class Objective(Settings):
    """How variants are scored and which may be chosen."""

    # "default" penalises a worse metric; "paper" is the study's sign (see module doc).
    form: ObjectiveForm = "default"
    # Weights of the size, time and metric terms.
    weight_size: float = Field(1.0, ge=0)
    weight_time: float = Field(1.0, ge=0)
    weight_metric: float = Field(1.0, ge=0)
    # Exclude variants whose metric is worse than the baseline's by more than this, in the
    # metric's display unit (percentage points for accuracy). None: no limit.
    max_metric_loss: float | None = Field(None, ge=0)
    metric: Metric = ACCURACY


@dataclass(frozen=True)
class Candidate:
    """One variant's measured figures."""

    name: str
    size_bytes: float
    latency_ms: float
    metric: float


@dataclass(frozen=True)
class Score:
    """A candidate's terms of L and whether it may be chosen."""

    name: str
    delta_size: float
    delta_time: float
    delta_metric: float
    L: float
    # How much worse than the baseline the metric is, in display units (negative: better).
    metric_loss: float
    eligible: bool
    # Why an ineligible candidate was excluded; empty when eligible.
    excluded_because: str
    on_pareto_front: bool


@dataclass(frozen=True)
class Choice:
    """The ranking (eligible first, best first) and the winner with its reasons."""

    baseline: str
    selected: str
    ranking: tuple[Score, ...]
    reasons: tuple[str, ...]

    def score_of(self, name: str) -> Score:
        return next(s for s in self.ranking if s.name == name)


def _relative(value: float, base: float, what: str) -> float:
    if base == 0:
        raise ConfigError(f"the baseline's {what} is 0; a relative change needs a non-zero baseline")
    return (value - base) / base


def metric_loss(value: float, base: float, metric: Metric) -> float:
    """How much worse `value` is than `base`, in the metric's display unit."""
    worse_by = (base - value) if metric.higher_is_better else (value - base)
    return worse_by * metric.display_scale


def score(candidate: Candidate, baseline: Candidate, objective: Objective) -> tuple[float, ...]:
    """Return (dS, dT, dM, L) of one candidate against the baseline."""
    d_size = _relative(candidate.size_bytes, baseline.size_bytes, "size")
    d_time = _relative(candidate.latency_ms, baseline.latency_ms, "latency")
    worse = _relative(candidate.metric, baseline.metric, objective.metric.name)
    if objective.metric.higher_is_better:
        worse = -worse
    # The study's form keeps the sign of (M - M0)/M0 for accuracy: a loss lowers L.
    d_metric = -worse if objective.form == "paper" else worse
    total = (
        objective.weight_size * d_size
        + objective.weight_time * d_time
        + objective.weight_metric * d_metric
    )
    return d_size, d_time, d_metric, total


def pareto_front(candidates: list[Candidate], metric: Metric = ACCURACY) -> set[str]:
    """Names of candidates no other candidate beats on size, latency and metric at once."""

    def at_least_as_good(a: Candidate, b: Candidate) -> bool:
        metric_ok = a.metric >= b.metric if metric.higher_is_better else a.metric <= b.metric
        return a.size_bytes <= b.size_bytes and a.latency_ms <= b.latency_ms and metric_ok

    def dominates(a: Candidate, b: Candidate) -> bool:
        return at_least_as_good(a, b) and (
            a.size_bytes,
            a.latency_ms,
            a.metric,
        ) != (b.size_bytes, b.latency_ms, b.metric)

    return {c.name for c in candidates if not any(dominates(o, c) for o in candidates)}


def select(candidates: list[Candidate], baseline_name: str, objective: Objective) -> Choice:
    """Score every candidate against the baseline and choose the eligible argmin of L.

    Ties (equal L at the printed precision) go to the smaller file. The baseline is always
    eligible, so there is always a winner.
    """
    by_name = {c.name: c for c in candidates}
    if baseline_name not in by_name:
        raise ConfigError(
            f"baseline {baseline_name!r} is not among the variants ({', '.join(by_name)}); "
            "build it or name another baseline"
        )
    baseline = by_name[baseline_name]
    front = pareto_front(candidates, objective.metric)
    scores = []
    for cand in candidates:
        d_size, d_time, d_metric, total = score(cand, baseline, objective)
        loss = metric_loss(cand.metric, baseline.metric, objective.metric)
        limit = objective.max_metric_loss
        too_lossy = cand.name != baseline_name and limit is not None and loss > limit + 1e-12
        excluded = (
            f"loses {loss:.2f} {objective.metric.loss_unit} of {objective.metric.name}, "
            f"more than the allowed {limit:g}"
            if too_lossy
            else ""
        )
        scores.append(
            Score(
                name=cand.name,
                delta_size=d_size,
                delta_time=d_time,
                delta_metric=d_metric,
                L=total,
                metric_loss=loss,
                eligible=not too_lossy,
                excluded_because=excluded,
                on_pareto_front=cand.name in front,
            )
        )
    ranking = sorted(
        scores,
        key=lambda s: (not s.eligible, round(s.L, TIE_DECIMALS), by_name[s.name].size_bytes),
    )
    winner = ranking[0]
    return Choice(
        baseline=baseline_name,
        selected=winner.name,
        ranking=tuple(ranking),
        reasons=tuple(_reasons(winner, ranking, by_name, baseline_name, objective)),
    )


def _reasons(
    winner: Score,
    ranking: list[Score],
    by_name: dict[str, Candidate],
    baseline_name: str,
    objective: Objective,
) -> list[str]:
    unit = objective.metric.loss_unit
    eligible = [s for s in ranking if s.eligible]
    reasons = [
        f"{winner.name} has the lowest L among {len(eligible)} eligible variants: "
        f"L = {winner.L:.2f} (size {winner.delta_size:+.1%}, time {winner.delta_time:+.1%}, "
        f"{objective.metric.name} {-winner.metric_loss:+.2f} {unit} against {baseline_name})."
    ]
    if len(eligible) > 1:
        runner = eligible[1]
        tie = round(runner.L, TIE_DECIMALS) == round(winner.L, TIE_DECIMALS)
        if tie:
            reasons.append(
                f"{runner.name} ties at L = {runner.L:.2f}; the tie goes to the smaller file "
                f"({by_name[winner.name].size_bytes:,.0f} vs {by_name[runner.name].size_bytes:,.0f} bytes)."
            )
        else:
            reasons.append(f"Runner-up: {runner.name} with L = {runner.L:.2f}.")
    for s in ranking:
        if not s.eligible:
            reasons.append(f"{s.name} was excluded: it {s.excluded_because}.")
    if winner.metric_loss > WARN_METRIC_LOSS and objective.max_metric_loss is None:
        reasons.append(
            f"Warning: {winner.name} loses {winner.metric_loss:.2f} {unit} of {objective.metric.name} against "
            f"{baseline_name}; the weights trade that for size and speed. If the loss matters, pass "
            f"--max-accuracy-drop (e.g. 1) or a larger --w-accuracy."
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

