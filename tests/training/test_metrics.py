"""Offline metrics on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import auc, logloss, ranking_metrics, reliability


def test_auc_orders_and_is_nan_for_one_class():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.25
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_logloss_of_a_perfect_and_a_coin_forecast():
    y = np.array([0, 1, 1, 0])
    assert logloss(y, y.astype(float)) < 1e-5
    assert logloss(y, np.full(4, 0.5)) == pytest.approx(math.log(2))


def test_ece_is_zero_when_calibrated_and_the_gap_when_not():
    y = np.array([0, 0, 0, 1] * 25)
    assert reliability(y, np.full(100, 0.25), bins=10).ece == pytest.approx(0.0)
    assert reliability(y, np.full(100, 0.45), bins=10).ece == pytest.approx(0.2)
    curve = reliability(y, np.full(100, 0.45), bins=10)
    assert curve.count.tolist() == [100]


def test_hit_and_ndcg_rank_each_decision_by_score():
    group = np.array(["a", "a", "a", "b", "b", "c", "c"])
    y = np.array([0, 1, 0, 1, 0, 0, 0])  # c has no positive: not ranked
    score = np.array([0.9, 0.5, 0.1, 0.8, 0.2, 0.3, 0.1])
    out = ranking_metrics(group, y, score, ks=(1, 2))
    assert out["ranked_groups"] == 2
    assert out["hit@1"] == 0.5  # b's positive is first, a's is second
    assert out["hit@2"] == 1.0
    assert out["ndcg@1"] == 0.5
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)


def test_constant_scores_get_no_credit_from_ties():
    out = ranking_metrics(np.array(["a", "a"]), np.array([0, 1]), np.array([0.5, 0.5]), ks=(1,))
    assert out["hit@1"] == 0.0


def test_auc_interval_is_the_percentile_bootstrap_of_resampled_rows():
    from sklearn.metrics import roc_auc_score

    from training.metrics import auc_interval

    rng = np.random.default_rng(0)
    y = (rng.random(2_000) < 0.2).astype(int)
    score = np.round(rng.normal(size=2_000) + 0.6 * y, 1)  # ties on purpose
    lower, upper = auc_interval(y, score, bootstrap_samples=50, seed=3)
    # The same resamples (seed 3) scored by scikit-learn give the same percentiles.
    draws = np.random.default_rng(3)
    values = []
    for _ in range(50):
        rows = draws.integers(0, len(y), len(y))
        values.append(roc_auc_score(y[rows], score[rows]))
    assert (lower, upper) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
    assert lower < auc(y, score) < upper


def test_auc_interval_of_a_constant_score_is_one_half_and_nan_for_one_class():
    from training.metrics import auc_interval

    y = np.array([0, 1] * 50)
    assert auc_interval(y, np.zeros(100), bootstrap_samples=20) == (0.5, 0.5)
    assert all(math.isnan(v) for v in auc_interval(np.ones(10), np.arange(10.0)))
