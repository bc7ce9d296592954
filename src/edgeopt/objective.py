"""The objective L, the accuracy guard, ties within measurement noise, the Pareto front and the
choice of a variant.

Knows nothing of TensorFlow or of any runtime: it works on plain numbers, so the study's own
table can be fed to it in a test. The sentences that explain a choice are written by reasons.py.

L(f) = w_s*dS + w_t*dT + w_m*dM, every term a relative change against the baseline f0:
  dS = (S - S0)/S0 (file size), dT = (T - T0)/T0 (time per image),
  dM = (M0 - M)/M0 for a higher-is-better metric (accuracy) and (M - M0)/M0 for a
  lower-is-better one (MSE), so that a worse model always raises L ("default" form).
The "paper" form reproduces the study's arithmetic, dM = (M - M0)/M0, which rewards a loss
of accuracy; it exists to reproduce the study's table, not to choose models.

Budgets a team states (latency, file and transfer size: Objective.max_*) are constraints applied
before the objective: a candidate over one is not eligible, whatever its L or the guard's word, so it
is never the winner nor part of a tie. The baseline has to fit them too.

Measurement noise is part of the choice:
- the guard (edgeopt.guard): each variant's paired interval of metric loss against the baseline
  decides whether it may be chosen, in one of three modes ("bounded" by default);
- L carries an interval from the latency rounds and the metric interval (each against the
  baseline). Whether another candidate is measurably worse than the one with the lowest L is
  judged on their *difference*, paired wherever the figures allow it: the latency ratios of the
  same interleaved rounds, the metric on the same images. A candidate whose interval of
  L - L_lowest reaches below `margin` (0.03 by default: the run-to-run spread of L on the reference
  task, docs/choice.md) is tied with it: a difference smaller than the margin is no reason to
  choose, measurable or not. (Two separate intervals against the baseline overlap far more often
  than the candidates are alike: a variant 1.8x slower than another in every round would be
  "tied" with it.)
- A tie is broken, in this order: tied candidates measurably worse than the baseline, or beyond
  the tolerance at their point estimate, or that could lose more than twice the tolerance, are set
  aside for those that are not; then those shown within the tolerance are preferred; then the
  better metric where it is measurably better (paired, on the same images); then a transfer smaller
  by more than TRANSFER_TIE; then the simpler input contract (uint8: a camera's raw bytes go in as
  they are); then the smaller transfer. A metric a few images apart is noise, and breaking on it, or
  on latency, would hand the choice to the draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from edgeopt.budgets import has_budget, over_budget
from edgeopt.errors import ConfigError
from edgeopt.guard import EXCLUDED_BY_GUARD, GuardMode, GuardWord, in_words, judge
from edgeopt.reasons import Decision, render_guard_rule, render_reasons
from edgeopt.settings import Settings
from edgeopt.ties import TRANSFER_TIE, break_tie, images_pair, rounds_pair

__all__ = ["EXCLUDED_BY_GUARD", "GuardWord", "Candidate", "Choice", "Metric", "Objective", "Score", "TRANSFER_TIE", "select"]

ObjectiveForm = Literal["default", "paper"]


class Metric(Settings):
    """The quality measure the objective trades against size and time."""

    name: str = "test_accuracy"
    # accuracy: True; MSE or another error: False.
    higher_is_better: bool = True
    # Multiplier from the stored value to the unit a person reads: 100 turns a fraction into
    # percent, so a loss of 0.006 reads as 0.6 percentage points.
    display_scale: float = Field(100.0, gt=0)
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
    # The guard's tolerance (display unit: percentage points for accuracy); which variants it
    # leaves eligible is `guard`'s rule (edgeopt.guard). None: no guard.
    max_metric_loss: float | None = Field(1.0, ge=0)
    # The guard's rule: "bounded" (shown within the tolerance, or within it at its point estimate and
    # shown within twice it), "non-inferiority" (shown within only) or "benefit-of-doubt" (excluded
    # only when shown worse, or beyond the tolerance and measurably worse than nothing).
    guard: GuardMode = "bounded"
    # Candidates whose L differ by less than this are tied (module doc); 0: only when their paired
    # interval of the difference reaches 0. The default is the run-to-run spread of L between two
    # runs of the same files on the reference task (docs/choice.md).
    margin: float = Field(0.03, ge=0)
    # Two-sided confidence of the metric and L intervals (guard and ties); optimize also tests a
    # guarded repair at it (methods.repair).
    confidence: float = Field(0.95, ge=0.5, lt=1.0)
    # S in L: "file" (the model file's bytes, as the study) or "transfer" (the bytes a delivery
    # sends: the file compressed with zstd).
    size: Literal["file", "transfer"] = "file"
    metric: Metric = ACCURACY
    # Budgets a team states, constraints before the objective (edgeopt.budgets): a variant slower
    # than this (median ms per image, on the machine whose figures are used), or whose file or
    # transfer (zstd) is larger than this many KB (1024 bytes), is not eligible -- the baseline too.
    # None: no budget.
    max_latency_ms: float | None = Field(None, gt=0)
    max_file_kb: float | None = Field(None, gt=0)
    max_transfer_kb: float | None = Field(None, gt=0)


@dataclass(frozen=True)
class Candidate:
    """One variant's measured figures, and how sure they are."""

    name: str
    size_bytes: float
    latency_ms: float
    metric: float
    # The runtime that runs it ("litert", "onnxruntime"); "" when it does not matter.
    backend: str = ""
    # Interval of its latency / the baseline's (from paired rounds); None: exact.
    latency_ratio_interval: tuple[float, float] | None = None
    # Interval of metric - baseline metric (paired, stored units); None: exact.
    metric_delta_interval: tuple[float, float] | None = None
    # Images on which it and the baseline disagree about being right (None: not paired).
    discordant: int | None = None
    # Its latency / the baseline's in each interleaved round, and whether it got each test image
    # right (in one order for every candidate): what pairs two candidates. None: not known.
    latency_ratios: tuple[float, ...] | None = None
    correct: tuple[bool, ...] | None = None
    # The bytes a delivery sends (None: size_bytes), and the input tensor's dtype ("" unknown): ties.
    transfer_bytes: float | None = None
    # The model file's bytes, for a file budget (None: size_bytes, which is the file's unless the
    # objective's size is "transfer").
    file_bytes: float | None = None
    input_dtype: str = ""
    # Answers that differ from the baseline's: (on the test images, test images, on every image
    # decoded, images decoded). None: not known.
    fidelity: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Score:
    """A candidate's terms of L, their intervals, and whether it may be chosen."""

    name: str
    delta_size: float
    delta_time: float
    delta_metric: float
    L: float
    L_low: float
    L_high: float
    # How much worse than the baseline the metric is, in display units (negative: better),
    # with its interval.
    metric_loss: float
    metric_loss_low: float
    metric_loss_high: float
    eligible: bool
    # Why an ineligible candidate was excluded; empty when eligible.
    excluded_because: str
    on_pareto_front: bool
    # The guard's word on it (GuardWord), and its loss against the tolerance in words (guard.in_words).
    guard: GuardWord
    words: str = ""
    # Which of the objective's budgets it breaks, in words ("" when it fits them): then not eligible.
    over_budget: str = ""


@dataclass(frozen=True)
class Choice:
    """The ranking (eligible first, best first) and the winner with its reasons."""

    baseline: str
    selected: str
    ranking: tuple[Score, ...]
    reasons: tuple[str, ...]
    # The candidates tied with the lowest L within noise (empty when the lowest L stands alone),
    # and what broke the tie: "metric", "size" or "metric, then size", after "set aside, then "
    # when tied variants measurably worse than the baseline, or with a loss unproven beyond the
    # tolerance, were set aside first ("set aside" alone when that left one).
    tie: tuple[str, ...] = ()
    tie_broken_by: str = ""
    # The guard's rule in one sentence, with its numbers.
    guard_rule: str = ""

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


def score(candidate: Candidate, baseline: Candidate, objective: Objective) -> tuple[float, float, float, float]:
    """Return (dS, dT, dM, L) of one candidate against the baseline (point values)."""
    d_size = _relative(candidate.size_bytes, baseline.size_bytes, "size")
    d_time = _relative(candidate.latency_ms, baseline.latency_ms, "latency")
    d_metric = _metric_term(candidate.metric - baseline.metric, baseline.metric, objective)
    total = objective.weight_size * d_size + objective.weight_time * d_time + objective.weight_metric * d_metric
    return d_size, d_time, d_metric, total


def _metric_term(delta: float, base: float, objective: Objective) -> float:
    """dM for a metric that moved by `delta` (candidate - baseline, stored units)."""
    worse = _relative(base + delta, base, objective.metric.name)
    if objective.metric.higher_is_better:
        worse = -worse
    # The study's form keeps the sign of (M - M0)/M0 for accuracy: a loss lowers L.
    return -worse if objective.form == "paper" else worse


def _interval(point: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return point, point
    low, high = sorted(bounds)
    return min(low, point), max(high, point)


def pareto_front(candidates: Sequence[Candidate], metric: Metric = ACCURACY) -> set[str]:
    """Names of candidates no other candidate beats on size, latency and metric at once."""

    def at_least_as_good(a: Candidate, b: Candidate) -> bool:
        metric_ok = a.metric >= b.metric if metric.higher_is_better else a.metric <= b.metric
        return a.size_bytes <= b.size_bytes and a.latency_ms <= b.latency_ms and metric_ok

    def dominates(a: Candidate, b: Candidate) -> bool:
        return at_least_as_good(a, b) and (a.size_bytes, a.latency_ms, a.metric) != (b.size_bytes, b.latency_ms, b.metric)

    return {c.name for c in candidates if not any(dominates(o, c) for o in candidates)}


def _score(cand: Candidate, baseline: Candidate, objective: Objective, front: set[str], is_baseline: bool,
           target_backends: tuple[str, ...] | None) -> Score:
    d_size, d_time, d_metric, total = score(cand, baseline, objective)
    ratio = _interval(cand.latency_ms / baseline.latency_ms, cand.latency_ratio_interval)
    t_low, t_high = ratio[0] - 1, ratio[1] - 1
    delta = cand.metric - baseline.metric
    delta_low, delta_high = _interval(delta, cand.metric_delta_interval)
    terms = sorted((_metric_term(delta_low, baseline.metric, objective), _metric_term(delta_high, baseline.metric, objective)))
    m_low, m_high = min(terms[0], d_metric), max(terms[1], d_metric)
    w = objective
    L_low = w.weight_size * d_size + w.weight_time * t_low + w.weight_metric * m_low
    L_high = w.weight_size * d_size + w.weight_time * t_high + w.weight_metric * m_high
    metric = objective.metric
    loss = metric_loss(cand.metric, baseline.metric, metric)
    losses = sorted((metric_loss(baseline.metric + delta_high, baseline.metric, metric),
                     metric_loss(baseline.metric + delta_low, baseline.metric, metric)))
    loss_low, loss_high = min(losses[0], loss), max(losses[1], loss)
    limit = objective.max_metric_loss
    excluded, words = "", ""
    guard: GuardWord
    if is_baseline:
        guard = "baseline"
    elif limit is None:
        guard = "no guard"
    else:
        guard, excluded = judge(loss, loss_low, loss_high, limit, objective.guard, metric.loss_unit, metric.name,
                                exact=cand.metric_delta_interval is None)
        words = _words(cand, baseline, loss_low, loss_high, limit, objective)
    if target_backends is not None and cand.backend and cand.backend not in target_backends:
        excluded = excluded or f"runs on {cand.backend}, and the target runtime is {', '.join(target_backends)}"
    # The budgets are constraints: a variant over one is out before L, the guard or a tie is weighed
    # (the guard's word on it stays, for the report).
    over = over_budget(objective, cand.latency_ms, cand.file_bytes or cand.size_bytes, cand.transfer_bytes)
    excluded = ", and ".join(why for why in (over, excluded) if why)
    return Score(
        name=cand.name, delta_size=d_size, delta_time=d_time, delta_metric=d_metric, L=total,
        L_low=min(L_low, total), L_high=max(L_high, total), metric_loss=loss, metric_loss_low=loss_low,
        metric_loss_high=loss_high, eligible=not excluded, excluded_because=excluded,
        on_pareto_front=cand.name in front, guard=guard, words=words, over_budget=over,
    )


def _words(cand: Candidate, baseline: Candidate, loss_low: float, loss_high: float, limit: float,
           objective: Objective) -> str:
    """guard.in_words for a candidate, with the test images that would settle it when paired."""
    unit = objective.metric.loss_unit
    if not images_pair(cand, baseline) or objective.metric.display_scale <= 0:
        return in_words(loss_low, loss_high, limit, unit)
    from edgeopt.stats import photos_to_settle

    assert cand.correct is not None and baseline.correct is not None
    lost = sum(b and not c for b, c in zip(baseline.correct, cand.correct, strict=True))
    gained = sum(c and not b for b, c in zip(baseline.correct, cand.correct, strict=True))
    n = len(cand.correct)
    tolerance = limit / objective.metric.display_scale
    to_settle = photos_to_settle(lost, gained, n, tolerance, objective.confidence) if loss_low <= limit < loss_high else None
    return in_words(loss_low, loss_high, limit, unit, n, to_settle, settles=(lost - gained) != round(tolerance * n, 9))


def select(
    candidates: Sequence[Candidate], baseline_name: str, objective: Objective,
    target_backends: tuple[str, ...] | None = None,
) -> Choice:
    """Score every candidate against the baseline and choose (see module doc).

    `target_backends`: the runtimes the target runs; a candidate for another runtime is not
    eligible (None: any). The baseline is always eligible, unless it breaks a budget (then, when
    nothing fits the budgets, there is no winner: ConfigError).
    """
    by_name = {c.name: c for c in candidates}
    if baseline_name not in by_name:
        raise ConfigError(
            f"baseline {baseline_name!r} is not among the variants ({', '.join(by_name)}); "
            "build it or name another baseline"
        )
    baseline = by_name[baseline_name]
    front = pareto_front(candidates, objective.metric)
    scores = [_score(c, baseline, objective, front, c.name == baseline_name, target_backends) for c in candidates]
    eligible = sorted((s for s in scores if s.eligible), key=lambda s: (s.L, by_name[s.name].size_bytes))
    if not eligible:
        raise ConfigError(
            "no variant can be chosen" + (f" for {', '.join(target_backends)}" if target_backends else "") + ": "
            + "; ".join(f"{s.name} {s.excluded_because}" for s in scores)
            + ". Build variants for that runtime, or relax --max-accuracy-drop"
            + (" or the budgets (--max-latency-ms, --max-kb, --max-transfer-kb)" if has_budget(objective) else "")
        )
    best = eligible[0]
    tied = [best] + [s for s in eligible[1:] if _difference_low(by_name[s.name], s, by_name[best.name], best,
                                                                  baseline, objective) <= objective.margin + 1e-12]
    steps = break_tie(tied, by_name, baseline, objective)
    winner, kept, shown, leaders, top = steps.winner, steps.kept, steps.shown, steps.leaders, steps.top
    set_aside = [s for s in tied if s not in kept]
    broken_by = ", then ".join(steps.deciders)
    # Whether each comparison the reasons speak of was paired: L against the lowest L on the same
    # rounds and images; the metric against the most accurate, and against the baseline, on the same images.
    others = tied[1:] if len(tied) > 1 else eligible[1:2]
    paired = all(rounds_pair(by_name[s.name], by_name[best.name]) and images_pair(by_name[s.name], by_name[best.name])
                 for s in others)
    dropped_on_same_images = all(images_pair(by_name[s.name], by_name[top.name]) for s in shown if s not in leaders)
    set_aside_on_same_images = all(images_pair(by_name[s.name], baseline) for s in set_aside)
    ranking = [winner] + [s for s in eligible if s is not winner] + sorted(
        (s for s in scores if not s.eligible), key=lambda s: s.L
    )
    rule = render_guard_rule(objective)
    return Choice(
        baseline=baseline_name,
        selected=winner.name,
        ranking=tuple(ranking),
        reasons=tuple(render_reasons(
            Decision(winner, best, tied, broken_by, ranking, paired, dropped_on_same_images, set_aside_on_same_images,
                     set_aside, leaders, top, shown, steps.lightest, steps.simplest),
            by_name, baseline_name, objective, rule)),
        tie=tuple(s.name for s in tied) if len(tied) > 1 else (),
        tie_broken_by=broken_by,
        guard_rule=rule,
    )


def _difference_low(a: Candidate, sa: Score, b: Candidate, sb: Score, baseline: Candidate, objective: Objective) -> float:
    """The low end of the interval of L(a) - L(b), paired where both carry the figures for it."""
    from edgeopt.stats import median_interval, paired_difference

    w = objective
    size = w.weight_size * (sa.delta_size - sb.delta_size)
    if rounds_pair(a, b):
        assert a.latency_ratios and b.latency_ratios
        differences = [x - y for x, y in zip(a.latency_ratios, b.latency_ratios, strict=True)]
        time_low = min(median_interval(differences, w.confidence)[0], sa.delta_time - sb.delta_time)
    else:  # unpaired: the two intervals against the baseline
        a_low = _interval(a.latency_ms / baseline.latency_ms, a.latency_ratio_interval)[0]
        b_high = _interval(b.latency_ms / baseline.latency_ms, b.latency_ratio_interval)[1]
        time_low = min(a_low - b_high, sa.delta_time - sb.delta_time)
    if images_pair(a, b):
        import numpy as np

        paired = paired_difference(np.array(b.correct), np.array(a.correct), w.confidence)  # metric(a) - metric(b)
        terms = (_metric_term(paired.low, baseline.metric, w), _metric_term(paired.high, baseline.metric, w))
        metric_low = min(*terms, sa.delta_metric - sb.delta_metric)
    else:
        metric_low = min(_score_metric_low(sa, sb, a, b, baseline, w), sa.delta_metric - sb.delta_metric)
    return size + w.weight_time * time_low + w.weight_metric * metric_low


def _score_metric_low(sa: Score, sb: Score, a: Candidate, b: Candidate, baseline: Candidate, w: Objective) -> float:
    """Unpaired: the lowest dM(a) minus the highest dM(b), from their intervals against the baseline."""
    def term_range(c: Candidate, point: float) -> tuple[float, float]:
        low, high = _interval(c.metric - baseline.metric, c.metric_delta_interval)
        terms = sorted((_metric_term(low, baseline.metric, w), _metric_term(high, baseline.metric, w)))
        return min(terms[0], point), max(terms[1], point)

    return term_range(a, sa.delta_metric)[0] - term_range(b, sb.delta_metric)[1]
