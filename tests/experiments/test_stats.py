"""Statistics of the readout on cases checked by hand and against statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiments.stats import (
    Moments,
    adjust_p_values,
    estimate_arms,
    lift,
    normal_mixture_radius,
    sample_ratio_mismatch,
    units_needed,
)


def test_delta_method_variance_of_a_ratio_by_hand():
    # R = 3 / 6 = 0.5, mean n = 2, linearised (y - R n) / 2 = [0, -0.25, 0.25]:
    # sample variance 0.0625, variance of R = 0.0625 / 3.
    (arm,) = estimate_arms([Moments.of_units(np.array([1, 0, 2]), np.array([2, 1, 3]))], False)
    assert arm.value == 0.5
    assert arm.variance == pytest.approx(0.0625 / 3)


def test_delta_method_matches_the_spread_of_the_ratio_over_replications():
    rng = np.random.default_rng(3)
    ratios, variances = [], []
    for _ in range(2_000):
        n = rng.integers(1, 8, size=300)
        p = rng.uniform(0.02, 0.3, size=300)  # units differ: decisions are not independent
        y = rng.binomial(n, p)
        (arm,) = estimate_arms([Moments.of_units(y, n)], cuped=False)
        ratios.append(arm.value)
        variances.append(arm.variance)
    assert np.mean(variances) == pytest.approx(np.var(ratios, ddof=1), rel=0.1)


def test_cuped_difference_equals_the_regression_adjusted_difference_and_shrinks_variance():
    rng = np.random.default_rng(5)
    x = rng.gamma(2.0, 2.0, size=4_000)
    arm = rng.integers(0, 2, size=4_000)
    y = 1.0 + 0.8 * x + 0.3 * arm + rng.normal(0, 1.0, size=4_000)
    a = Moments.of_units(y[arm == 0], x=x[arm == 0])
    b = Moments.of_units(y[arm == 1], x=x[arm == 1])
    est_a, est_b = estimate_arms([a, b], cuped=True)
    ols = sm.OLS(y, sm.add_constant(np.column_stack([arm, x]))).fit()
    assert est_b.value - est_a.value == pytest.approx(ols.params[1], rel=1e-9)
    # x explains most of y: the variance falls by about corr(x, y)^2 within the arms
    rho2 = np.corrcoef(x[arm == 1], y[arm == 1])[0, 1] ** 2
    assert est_b.variance_reduction == pytest.approx(rho2, abs=0.02)
    assert est_b.variance_reduction > 0.8
    raw_a, raw_b = estimate_arms([a, b], cuped=False)
    assert raw_b.value - raw_a.value == pytest.approx(y[arm == 1].mean() - y[arm == 0].mean())


def test_cuped_does_nothing_without_a_covariate():
    y = np.array([1.0, 2.0, 4.0, 3.0])
    est, raw = (
        estimate_arms([Moments.of_units(y)], cuped=True)[0],
        estimate_arms([Moments.of_units(y)], cuped=False)[0],
    )
    assert est == raw and est.variance_reduction == 0


def test_fixed_horizon_welch_interval_and_p_value_equal_statsmodels():
    rng = np.random.default_rng(11)
    control = rng.exponential(10.0, size=900)
    treatment = rng.exponential(11.0, size=1_300)
    est_c, est_t = estimate_arms(
        [Moments.of_units(control), Moments.of_units(treatment)], cuped=False
    )
    result = lift(est_t, est_c, alpha=0.05)
    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    low, high = compare.tconfint_diff(alpha=0.05, usevar="unequal")
    _, p, _ = compare.ttest_ind(usevar="unequal")
    assert (result.fixed.lower, result.fixed.upper) == pytest.approx((low, high), rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.absolute == pytest.approx(treatment.mean() - control.mean())


def test_per_decision_rate_with_one_decision_per_unit_equals_statsmodels_z_interval():
    rng = np.random.default_rng(2)
    a = rng.binomial(1, 0.1, size=20_000)
    b = rng.binomial(1, 0.11, size=20_000)
    est_a, est_b = estimate_arms(
        [Moments.of_units(a, np.ones(a.size)), Moments.of_units(b, np.ones(b.size))], cuped=False
    )
    result = lift(est_b, est_a)
    low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).zconfint_diff(usevar="unequal")
    # Welch's t with ~40,000 degrees of freedom is the z interval to 4 decimals
    assert (result.fixed.lower, result.fixed.upper) == pytest.approx((low, high), rel=1e-4)


def test_relative_lift_uses_the_delta_method():
    est_a, est_b = estimate_arms(
        [Moments.of_units(np.array([1.0, 3.0, 2.0])), Moments.of_units(np.array([3.0, 3.0, 6.0]))],
        cuped=False,
    )
    result = lift(est_b, est_a)
    # a = 2 (var 1/3), b = 4 (var 3/3): var(b/a) = 1/4 + 16 * (1/3) / 16
    assert result.relative == pytest.approx(1.0)
    assert result.relative_se == pytest.approx(math.sqrt(1 / 4 + 1 / 3))


def test_confidence_sequence_keeps_the_false_positive_rate_over_peeks():
    rng = np.random.default_rng(42)
    peeks, units, runs = 20, 4_000, 200
    false_positives = 0
    for _ in range(runs):
        y = rng.binomial(1, 0.1, size=(2, units))
        for k in range(1, peeks + 1):
            m = units * k // peeks
            est_a, est_b = estimate_arms(
                [Moments.of_units(y[0, :m]), Moments.of_units(y[1, :m])], cuped=False
            )
            if lift(est_b, est_a, planned_units=2 * units).sequence.excludes_zero():
                false_positives += 1
                break
    assert false_positives / runs <= 0.05


def test_confidence_sequence_covers_a_true_lift_at_every_peek_at_once():
    rng = np.random.default_rng(8)
    peeks, units, runs = 10, 4_000, 200
    covered = 0
    for _ in range(runs):
        a = rng.binomial(1, 0.1, size=units)
        b = rng.binomial(1, 0.12, size=units)  # +20%
        ok = True
        for k in range(1, peeks + 1):
            m = units * k // peeks
            est_a, est_b = estimate_arms([Moments.of_units(a[:m]), Moments.of_units(b[:m])])
            ok &= lift(est_b, est_a, planned_units=2 * units).sequence_relative.contains(0.2)
        covered += ok
    assert covered / runs >= 0.95


def test_confidence_sequence_is_wider_than_the_fixed_interval():
    z = sps.norm.ppf(0.975)
    for samples in (100, 10_000, 1_000_000):
        assert normal_mixture_radius(1.0, samples, 0.05, 10_000) > z


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, r"`alpha` must be in \(0, 1\), got 1.5"),
        ({"planned": 0}, "`planned` and `samples` must be > 0, got 0 and 10"),
    ],
)
def test_confidence_sequence_refuses_bad_settings(kwargs, message):
    args = {"se": 1.0, "samples": 10, "alpha": 0.05, "planned": 100} | kwargs
    with pytest.raises(ValueError, match=message):
        normal_mixture_radius(**args)


def test_sample_ratio_mismatch_alarm_on_a_skewed_split_by_hand():
    # 5,200 / 4,800 against 50/50: chi-square = 2 * 200^2 / 5,000 = 16, p = 6.3e-5
    skewed = sample_ratio_mismatch([5_200, 4_800], [0.5, 0.5])
    assert skewed.statistic == pytest.approx(16.0)
    assert skewed.p_value == pytest.approx(sps.chi2.sf(16.0, 1))
    assert skewed.alarm
    assert not sample_ratio_mismatch([5_050, 4_950], [1, 1]).alarm
    # shares are normalised: 20/80 planned as 1:4
    assert not sample_ratio_mismatch([2_010, 7_990], [1, 4]).alarm


@pytest.mark.parametrize(
    ("observed", "shares", "message"),
    [
        ([10, 10], [0.5], r"`shares` must have one value per arm \(2\), got 1"),
        ([10, 10], [0.5, 0], r"`shares` must all be > 0, got \[0.5, 0\]"),
        ([0, 0], [1, 1], "`observed` must count at least one unit, got none"),
    ],
)
def test_sample_ratio_mismatch_refuses_bad_input(observed, shares, message):
    with pytest.raises(ValueError, match=message):
        sample_ratio_mismatch(observed, shares)


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert adjust_p_values([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    # Benjamini-Hochberg: 0.04 * 3/3, 0.03 * 3/2 = 0.045 -> min over the tail
    assert adjust_p_values([0.01, 0.04, 0.03], "fdr_bh") == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="`method` must be 'holm' or 'fdr_bh', got 'bonf'"):
        adjust_p_values([0.1], "bonf")


def test_units_needed_matches_the_textbook_formula():
    y = np.r_[np.ones(1_000), np.zeros(9_000)]  # rate 0.1
    (control,) = estimate_arms([Moments.of_units(y)], cuped=False)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    sd2 = y.var(ddof=1)
    expected = 2 * z**2 * sd2 / (0.1 * 0.05) ** 2
    assert units_needed(control, 0.05) == pytest.approx(expected, rel=1e-3)
