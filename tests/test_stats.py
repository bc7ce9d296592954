"""Paired accuracy statistics and the latency interval, against known cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from edgeopt.stats import median_interval, median_rank_interval, paired_difference


def outcomes(n: int, baseline_only: int, variant_only: int, both_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    base = np.ones(n, bool)
    var = np.ones(n, bool)
    var[:baseline_only] = False
    base[baseline_only : baseline_only + variant_only] = False
    start = baseline_only + variant_only
    base[start : start + both_wrong] = var[start : start + both_wrong] = False
    return base, var


def test_exact_mcnemar_p_value_matches_the_textbook_case():
    # 5 discordant pairs one way, 15 the other: exact two-sided McNemar p = 0.0414
    base, var = outcomes(100, baseline_only=15, variant_only=5)
    result = paired_difference(base, var)
    assert result.p_value == pytest.approx(0.041389, abs=1e-5)
    assert result.difference == pytest.approx(-0.10)
    assert (result.baseline_only, result.variant_only, result.discordant) == (15, 5, 20)


def test_the_interval_is_clopper_pearson_on_the_discordant_share():
    # the study-sized case of the issue: 478 photos, a 5-photo loss from 7 against 2 discordant
    base, var = outcomes(478, baseline_only=7, variant_only=2, both_wrong=40)
    result = paired_difference(base, var, confidence=0.95)
    pi_low = scipy_stats.beta.ppf(0.025, 7, 3)  # Clopper-Pearson for 7 of 9, computed another way
    pi_high = scipy_stats.beta.ppf(0.975, 8, 2)
    assert result.low == pytest.approx(9 / 478 * (1 - 2 * pi_high))
    assert result.high == pytest.approx(9 / 478 * (1 - 2 * pi_low))
    assert 100 * result.difference == pytest.approx(-1.046, abs=1e-3)
    assert result.low < result.difference < result.high and result.high > 0  # not a proven loss


def test_a_large_loss_is_certain_and_identical_predictions_give_a_zero_interval():
    base, var = outcomes(478, baseline_only=45, variant_only=4)
    big = paired_difference(base, var)
    assert big.high < -0.06 and big.p_value < 1e-8
    same = paired_difference(*outcomes(478, 0, 0, both_wrong=47))
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_a_higher_confidence_widens_the_interval():
    base, var = outcomes(200, baseline_only=9, variant_only=3)
    narrow, wide = paired_difference(base, var, 0.80), paired_difference(base, var, 0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_outcomes_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference(np.ones(3, bool), np.ones(4, bool))


@pytest.mark.parametrize("n, ranks, coverage", [
    (5, (0, 4), 0.9375),  # too few rounds for 95%: the range, and the coverage it has
    (7, (0, 6), 0.984375),
    (20, (5, 14), 0.9586),  # the table value for n = 20: 6th to 15th order statistic
])
def test_median_interval_uses_order_statistics(n, ranks, coverage):
    lo, hi, achieved = median_rank_interval(n, 0.95)
    assert (lo, hi) == ranks and achieved == pytest.approx(coverage, abs=1e-4)


def test_median_interval_of_round_ratios():
    low, high, coverage = median_interval([1.31, 1.02, 1.20, 1.45, 1.11], 0.95)
    assert (low, high) == (1.02, 1.45) and coverage == pytest.approx(0.9375)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99, 0.999])
def test_one_more_image_the_variant_gets_wrong_only_lowers_the_interval(confidence):
    # a guarded repair's pass stops early on this (methods.repair): no answer still to come can
    # raise the low end of the interval, whatever the counts so far
    for variant_only in range(0, 41):
        lows = [paired_difference(*outcomes(200, b, variant_only), confidence).low for b in range(0, 41)]
        assert all(later <= earlier + 1e-12 for earlier, later in zip(lows, lows[1:], strict=False)), variant_only
