"""Softmax exploration: exact propensities, full support, draws that follow them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys.arbitration import POLICIES, Draws, Softmax, make_policy

PRIORITY = np.array([0.10, 0.30, 0.20])


def draws(n: int, seed: int = 7) -> Draws:
    return Draws(seed, [f"c{i}" for i in range(n)], ["web_home"] * n, 0)


def select(policy, priority, limit, n=1, seed=7):
    rows = np.tile(priority, (n, 1))
    return policy.select(rows, np.ones_like(rows, dtype=bool), np.full(n, limit), draws(n, seed))


def hand(temperature: float, floor: float) -> tuple[np.ndarray, float]:
    """PRIORITY's first-position probabilities, and the probability of column 2 at position
    2 once column 1 (the best) is taken; top 0.3 = scale."""
    w = [math.exp((p - 0.3) / (temperature * 0.3)) for p in PRIORITY]
    first = np.array([floor / 3 + (1 - floor) * x / sum(w) for x in w])
    second = floor / 2 + (1 - floor) * w[2] / (w[0] + w[2])
    return first, second


def test_first_position_probabilities_equal_the_hand_computed_ones():
    policy = Softmax(temperature=0.1, floor=0.03)
    got = policy.first_position_probabilities(PRIORITY[None, :], np.ones((1, 3), bool))
    first, _ = hand(0.1, 0.03)
    np.testing.assert_allclose(got[0], first)
    # e^(-20/3), 1, e^(-10/3) normalised, 0.97 of it, plus 0.01 each
    np.testing.assert_allclose(got[0], [0.0111905, 0.9454387, 0.0433708], atol=1e-7)


def test_probabilities_sum_to_one_over_the_eligible_offers_each_above_the_floor():
    priority = np.array(
        [[0.1, 0.4, 0.25, 0.4, 0.05], [0.3, np.nan, 0.2, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    eligible = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=bool)
    for temperature in (1e-6, 0.05, 10.0):
        policy = Softmax(temperature=temperature, floor=0.02)
        probability = policy.first_position_probabilities(priority, eligible)
        np.testing.assert_allclose(probability.sum(axis=1), 1.0)
        assert (probability[~eligible] == 0).all()
        n_eligible = eligible.sum(axis=1, keepdims=True)
        assert (probability >= 0.02 / n_eligible - 1e-12)[eligible].all()
    # equal priorities: uniform; the tie at the top shares the softmax part
    np.testing.assert_allclose(probability[2], [0, 0.5, 0.5, 0, 0])
    tied = Softmax(temperature=1e-6, floor=0.02).first_position_probabilities(priority, eligible)
    np.testing.assert_allclose(tied[0, [1, 3]], 0.005 + 0.98 / 2)


def test_a_row_with_nothing_eligible_has_zero_probability():
    probability = Softmax().first_position_probabilities(np.ones((1, 3)), np.zeros((1, 3), bool))
    assert probability.tolist() == [[0.0, 0.0, 0.0]]


def test_probabilities_do_not_depend_on_the_priorities_unit():
    policy, eligible = Softmax(temperature=0.05, floor=0.01), np.ones((1, 3), bool)
    np.testing.assert_allclose(
        policy.first_position_probabilities(PRIORITY[None, :] * 1000, eligible),
        policy.first_position_probabilities(PRIORITY[None, :], eligible),
    )


def test_logged_propensities_are_the_conditional_probabilities_of_each_position():
    policy = Softmax(temperature=0.1, floor=0.03)
    first, second = hand(0.1, 0.03)
    slates = select(policy, PRIORITY, 2, n=400)
    for positions, propensity in zip(slates.positions, slates.propensity, strict=True):
        a, b = positions.tolist()
        assert a != b
        assert propensity[0] == pytest.approx(first[a])
        # position 2: the softmax over what is left, with the floor over 2 offers
        w = {c: math.exp((PRIORITY[c] - 0.3) / 0.03) for c in range(3) if c != a}
        expected = 0.03 / 2 + 0.97 * w[b] / sum(w.values())
        assert propensity[1] == pytest.approx(expected)
    assert second == pytest.approx(0.015 + 0.97 / (1 + math.exp(-10 / 3)))


def test_draw_frequencies_match_the_propensities():
    n = 20_000
    policy = Softmax(temperature=0.2, floor=0.05)
    slates = select(policy, PRIORITY, 2, n=n)
    first, _ = hand(0.2, 0.05)
    observed = np.bincount(slates.positions[:, 0], minlength=3) / n
    np.testing.assert_allclose(observed, first, atol=0.01)
    # position 2 after the best: its logged propensity is its observed frequency
    after_best = slates.positions[:, 0] == 1
    took_2 = slates.positions[after_best, 1] == 2
    logged = slates.propensity[after_best, 1][took_2][0]
    assert took_2.mean() == pytest.approx(logged, abs=0.015)


def test_explored_marks_offers_other_than_the_best_remaining_and_seeds_repeat():
    policy = Softmax(temperature=0.5, floor=0.2)
    a = select(policy, PRIORITY, 3, n=200, seed=42)
    assert a.positions.tolist() == select(policy, PRIORITY, 3, n=200, seed=42).positions.tolist()
    assert a.positions.tolist() != select(policy, PRIORITY, 3, n=200, seed=43).positions.tolist()
    assert ((a.positions[:, 0] != 1) == a.explored[:, 0]).all()
    assert not a.explored[:, 2].any()  # the last offer left is the best remaining
    assert sorted(a.positions[0].tolist()) == [0, 1, 2]


def test_only_eligible_offers_are_chosen_up_to_the_limit():
    priority = np.array([[np.nan, 0.1, 0.9, 0.5], [0.3, np.nan, 0.2, 0.1]])
    eligible = np.array([[True, True, False, True], [False, True, True, False]])
    slate = Softmax(temperature=0.05, floor=0.5).select(
        np.repeat(priority, 50, 0), np.repeat(eligible, 50, 0), np.full(100, 4), draws(100)
    )
    assert slate.k.tolist() == [3] * 50 + [2] * 50
    assert set(slate.positions[:50].ravel().tolist()) == {0, 1, 3}
    assert set(slate.positions[50:, :2].ravel().tolist()) == {1, 2}
    assert (slate.positions[50:, 2] == -1).all() and np.isnan(slate.propensity[50:, 2]).all()


def test_the_registry_builds_it_by_kind():
    assert POLICIES["softmax"] is Softmax
    policy = make_policy("softmax", temperature=0.05, floor=0.01)
    assert policy == Softmax(0.05, 0.01)
    assert policy.name == "softmax(temperature=0.05, floor=0.01)"
    assert policy.exploration_rate == 0.01


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0.0}, "`temperature` must be > 0, got 0.0"),
        ({"temperature": -1.0}, "`temperature` must be > 0, got -1.0"),
        ({"temperature": float("nan")}, "`temperature` must be > 0, got nan"),
        ({"floor": 0.0}, r"`floor` must be in \(0, 1\], got 0.0"),
        ({"floor": 1.5}, r"`floor` must be in \(0, 1\], got 1.5"),
        ({"epsilon": 0.1}, "policy 'softmax' got unknown parameters"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        make_policy("softmax", **params)
