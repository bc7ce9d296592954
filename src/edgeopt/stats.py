"""Paired statistics on per-image outcomes and on interleaved latency rounds (scipy). No I/O.

Accuracy of a variant against its baseline is compared on the *same* images, so only the
discordant images carry information: b images the baseline gets right and the variant wrong,
c the other way round; the difference in accuracy is (c - b) / n.

- The interval of that difference (`paired_interval`) is Tango's score interval for a difference
  of paired proportions (T. Tango, "Equivalence test and confidence interval for the difference in
  proportions for the paired-sample design", Statistics in Medicine 17:891-908, 1998), with a
  continuity correction of 1/2 on b - c (the adjustment of P. Chang et al., "Continuity corrected
  score confidence interval for the difference in proportions in paired data", Journal of Applied
  Statistics 51:139-152, 2024, at half the size of McNemar's; Laud's ratesci calls it cc = 0.25).
  It is unconditional: it allows for the chance that the test set happened to hold few or many
  discordant images, so it is never [0, 0] for a finite test set. Its coverage, computed exactly
  over n = 100..2,000 and losses of 0 to 3 points (none, one-sided, and both ways), is at least
  0.951 at 95% (0.901 at 90%, 0.990 at 99%); without the correction it falls to 0.932 in places
  (tests/test_stats.py, bench/choice.py).
- The exact McNemar test (`conditional_difference`) is conditional on d = b + c: b is
  Binomial(d, pi) and the difference is d/n * (1 - 2 pi). It is a valid *test* of "no difference"
  (the p-value, and a guarded repair's "significantly fewer changed answers"), but as an interval
  it ignores how d itself varies: it covers a one-sided 2.5-point loss in about half the test sets
  and says [0, 0] whenever d = 0. edgeopt used it as the interval before issue 29.

Latency ratios come from interleaved rounds (every variant timed once per round), so each
round gives one paired ratio; the median ratio's interval is the order-statistic interval
(distribution-free), which for up to 7 rounds is the range of the round ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Tango's score statistic is corrected by this much on the count b - c (see the module doc).
CONTINUITY = 0.5
# Bisection steps for the interval's ends: 2 / 2**60 is far below any accuracy a test set has.
_STEPS = 60


@dataclass(frozen=True)
class PairedDifference:
    """A variant's accuracy minus its baseline's on the same images, as fractions."""

    n: int
    # images the baseline gets right and the variant wrong, and the other way round
    baseline_only: int
    variant_only: int
    difference: float  # (variant_only - baseline_only) / n
    low: float
    high: float
    confidence: float
    p_value: float  # exact McNemar: the two kinds of discordant image are equally likely

    @property
    def discordant(self) -> int:
        return self.baseline_only + self.variant_only


def _tango_score(delta: np.ndarray, b: np.ndarray, c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Tango's score statistic for H0: p_b - p_c = delta, continuity-corrected; decreasing in delta."""
    # The restricted maximum-likelihood p_c under H0 (Tango 1998, eq. 5): a root of a quadratic.
    w = -b - c + (2 * n - b + c) * delta
    p_c = (-w + np.sqrt(np.maximum(w * w + 8 * n * c * delta * (1 - delta), 0.0))) / (4 * n)
    variance = n * (2 * p_c + delta * (1 - delta))
    gap = b - c - n * delta
    gap = np.sign(gap) * np.maximum(np.abs(gap) - CONTINUITY, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = gap / np.sqrt(variance)
        return np.where(variance > 0, score, np.sign(gap) * np.inf)


def paired_interval(baseline_only: np.ndarray | float, variant_only: np.ndarray | float, n: np.ndarray | float,
                    confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the difference (variant - baseline) = (c - b) / n, elementwise over arrays of
    counts (b, c, n); see the module doc. Counts may be fractional (a test set scaled up)."""
    b, c, n = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (baseline_only, variant_only, n)))
    z = stats.norm.ppf(0.5 + confidence / 2)
    estimate = (b - c) / n  # of delta = p_b - p_c, the loss
    # delta's upper end: where the score falls to -z, between the estimate and 1
    below, above = estimate.copy(), np.ones_like(estimate)
    for _ in range(_STEPS):
        middle = (below + above) / 2
        inside = _tango_score(middle, b, c, n) > -z
        below, above = np.where(inside, middle, below), np.where(inside, above, middle)
    loss_high = (below + above) / 2
    # and its lower end, where the score rises to +z, between -1 and the estimate
    below, above = -np.ones_like(estimate), estimate.copy()
    for _ in range(_STEPS):
        middle = (below + above) / 2
        inside = _tango_score(middle, b, c, n) < z
        below, above = np.where(inside, below, middle), np.where(inside, middle, above)
    loss_low = (below + above) / 2
    return -loss_high, -loss_low


def _counts(baseline_correct: np.ndarray, variant_correct: np.ndarray) -> tuple[int, int, int]:
    base = np.asarray(baseline_correct, dtype=bool)
    var = np.asarray(variant_correct, dtype=bool)
    if base.shape != var.shape:
        raise ValueError(f"paired outcomes differ in length: {base.shape} vs {var.shape}")
    return int(base.size), int(np.sum(base & ~var)), int(np.sum(var & ~base))


def _mcnemar_p(b: int, c: int) -> float:
    return float(stats.binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


def paired_difference(baseline_correct: np.ndarray, variant_correct: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Accuracy difference (variant - baseline) with its unconditional interval (`paired_interval`)
    and the exact McNemar p-value."""
    n, b, c = _counts(baseline_correct, variant_correct)
    if n == 0:
        return PairedDifference(0, 0, 0, 0.0, -1.0, 1.0, confidence, 1.0)
    low, high = paired_interval(b, c, n, confidence)
    return PairedDifference(n, b, c, (c - b) / n, float(low), float(high), confidence, _mcnemar_p(b, c))


def conditional_difference(baseline_correct: np.ndarray, variant_correct: np.ndarray,
                           confidence: float = 0.95) -> PairedDifference:
    """The exact McNemar test as an interval conditional on d (see the module doc): a test of 'no
    difference' at 1 - confidence when the interval excludes 0; not an interval to judge a loss by."""
    n, b, c = _counts(baseline_correct, variant_correct)
    d = b + c
    if n == 0:
        return PairedDifference(0, 0, 0, 0.0, -1.0, 1.0, confidence, 1.0)
    if d == 0:
        return PairedDifference(n, 0, 0, 0.0, 0.0, 0.0, confidence, 1.0)
    pi = stats.binomtest(b, d, 0.5).proportion_ci(confidence_level=confidence, method="exact")
    # the difference falls as pi (the share of discordant images the baseline wins) rises
    return PairedDifference(n, b, c, (c - b) / n, d / n * (1 - 2 * pi.high), d / n * (1 - 2 * pi.low), confidence,
                            _mcnemar_p(b, c))


def paired_tables(n: int, p_lost: float, p_gained: float, tail: float = 1e-12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every test set of n paired images as its counts (b, c) with its probability, when each image
    is lost with probability p_lost and gained with p_gained (a trinomial; tails below `tail` left
    out): exact coverage of an interval, or exact eligibility of a guard, is a sum over them."""
    from scipy.special import gammaln

    top_b = int(stats.binom.ppf(1 - tail, n, p_lost)) + 1 if p_lost else 0
    top_c = int(stats.binom.ppf(1 - tail, n, p_gained)) + 1 if p_gained else 0
    b, c = (grid.ravel() for grid in np.meshgrid(np.arange(top_b + 1), np.arange(top_c + 1), indexing="ij"))
    b, c = b[b + c <= n], c[b + c <= n]
    with np.errstate(divide="ignore"):
        log_p = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(n - b - c + 1)
                 + (b * np.log(p_lost) if p_lost else 0) + (c * np.log(p_gained) if p_gained else 0)
                 + (n - b - c) * np.log1p(-(p_lost + p_gained)))
    return b, c, np.exp(log_p)


def share_interval(count: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a share: e.g. the answers a variant changes against float32."""
    if n <= 0:
        return 0.0, 1.0
    ci = stats.binomtest(count, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


# The largest test set photos_to_settle speaks of; beyond it, "more than" this.
MAX_PHOTOS = 1_000_000


def photos_to_settle(baseline_only: int, variant_only: int, n: int, tolerance: float, confidence: float = 0.95) -> int | None:
    """How many test images would settle whether the loss (a fraction) is within `tolerance`: the
    smallest N at which the interval, with the discordance observed here (b/n and c/n kept), lies
    wholly on one side of the tolerance. None when the observed loss is the tolerance itself (no
    number of images settles it) or beyond MAX_PHOTOS."""
    if n <= 0:
        return None
    loss = (baseline_only - variant_only) / n

    def settled(size: float) -> bool:
        scale = size / n
        low, high = paired_interval(baseline_only * scale, variant_only * scale, size, confidence)
        loss_low, loss_high = -float(high), -float(low)
        return loss_high <= tolerance if loss <= tolerance else loss_low > tolerance

    if settled(n):
        return n
    if math.isclose(loss, tolerance) or not settled(MAX_PHOTOS):
        return None
    small, large = float(n), float(MAX_PHOTOS)
    while large - small > 1:
        middle = math.floor((small + large) / 2)
        small, large = (small, middle) if settled(middle) else (middle, large)
    return int(large)


def median_rank_interval(count: int, confidence: float = 0.95) -> tuple[int, int, float]:
    """0-based ranks (lo, hi) of the sorted sample that bound its median with at least
    `confidence`, or the full range when `count` is too small; and the coverage achieved."""
    if count < 1:
        raise ValueError("an interval needs at least one value")
    alpha = 1 - confidence
    # the largest k with P(Bin(n, 1/2) <= k - 1) <= alpha / 2 gives the interval [x_(k), x_(n-k+1)]
    k = 0
    while k + 1 <= count // 2 and stats.binom.cdf(k, count, 0.5) <= alpha / 2:
        k += 1
    lo, hi = max(k - 1, 0), count - max(k, 1)
    return lo, hi, float(1 - 2 * stats.binom.cdf(lo, count, 0.5))


def median_interval(values: np.ndarray | list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high) of a distribution-free interval for the median of `values`, and its coverage."""
    ordered = np.sort(np.asarray(values, dtype=float))
    lo, hi, coverage = median_rank_interval(len(ordered), confidence)
    return float(ordered[lo]), float(ordered[hi]), coverage
