"""Paired statistics on per-image outcomes and on interleaved latency rounds (scipy). No I/O.

Accuracy of a variant against its baseline is compared on the *same* images, so only the
discordant images carry information: b images the baseline gets right and the variant wrong,
c the other way round. Given d = b + c, b is Binomial(d, pi) and the difference in accuracy is
(c - b) / n = d/n * (1 - 2 pi). The exact McNemar test is the binomial test of pi = 1/2; the
interval maps the exact (Clopper-Pearson) interval of pi onto the difference. It is exact and
conditional on d: with no discordant image the difference is exactly 0 on this test set.

Latency ratios come from interleaved rounds (every variant timed once per round), so each
round gives one paired ratio; the median ratio's interval is the order-statistic interval
(distribution-free), which for up to 7 rounds is the range of the round ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


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


def paired_difference(baseline_correct: np.ndarray, variant_correct: np.ndarray, confidence: float = 0.95) -> PairedDifference:
    """Accuracy difference (variant - baseline) with its exact conditional interval (see module doc)."""
    base = np.asarray(baseline_correct, dtype=bool)
    var = np.asarray(variant_correct, dtype=bool)
    if base.shape != var.shape:
        raise ValueError(f"paired outcomes differ in length: {base.shape} vs {var.shape}")
    n = int(base.size)
    b = int(np.sum(base & ~var))
    c = int(np.sum(var & ~base))
    d = b + c
    if n == 0:
        return PairedDifference(0, 0, 0, 0.0, -1.0, 1.0, confidence, 1.0)
    if d == 0:
        return PairedDifference(n, 0, 0, 0.0, 0.0, 0.0, confidence, 1.0)
    test = stats.binomtest(b, d, 0.5)
    pi = test.proportion_ci(confidence_level=confidence, method="exact")
    # the difference falls as pi (the share of discordant images the baseline wins) rises
    low = d / n * (1 - 2 * pi.high)
    high = d / n * (1 - 2 * pi.low)
    return PairedDifference(n, b, c, (c - b) / n, low, high, confidence, float(test.pvalue))


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
