"""Priority, slate and epsilon-greedy exploration with propensities."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.arbitration import Draws, EpsilonGreedy, make_policy, priorities

PRIORITY = np.array([0.10, 0.40, 0.25, 0.40, 0.05])


def draws(n: int, seed: int = 7, now_us: int = 0, prefix: str = "c") -> Draws:
    return Draws(seed, [f"{prefix}{i}" for i in range(n)], ["web_home"] * n, now_us)


def select(policy, priority, limit, n=1, **kwargs):
    """The slates of ``n`` decisions (different customers) over one priority row."""
    rows = np.tile(priority, (n, 1))
    return policy.select(
        rows, np.ones_like(rows, dtype=bool), np.full(n, limit), draws(n, **kwargs)
    )


def test_priority_is_p_times_value_times_weight():
    got = priorities(np.array([0.1, 0.5]), np.array([2.0, 1.0]), np.array([1.0, 3.0]))
    np.testing.assert_allclose(got, [0.2, 1.5])


def test_greedy_slate_is_deterministic_best_first_ties_in_catalogue_order():
    slate = select(EpsilonGreedy(0.0), PRIORITY, 3)
    assert slate.positions.tolist() == [[1, 3, 2]]
    assert slate.propensity.tolist() == [[1.0, 1.0, 1.0]]
    assert not slate.explored.any()


def test_only_eligible_offers_are_chosen_and_nan_priorities_come_last():
    priority = np.array([[np.nan, 0.1, 0.9, 0.5], [0.3, np.nan, 0.2, 0.1]])
    eligible = np.array([[True, True, False, True], [False, True, True, False]])
    slate = EpsilonGreedy(0.0).select(priority, eligible, np.array([4, 4]), draws(2))
    assert slate.positions.tolist() == [[3, 1, 0], [2, 1, -1]]
    assert slate.k.tolist() == [3, 2]
    assert np.isnan(slate.propensity[1, 2])


def test_limit_larger_than_candidates_returns_all():
    slate = select(EpsilonGreedy(0.2), PRIORITY[:2], 10)
    assert sorted(slate.positions[0].tolist()) == [0, 1]


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 1.0])
def test_served_propensities_are_the_policys_probabilities(epsilon):
    slates = select(EpsilonGreedy(epsilon), PRIORITY, 3, n=500)
    order = [1, 3, 2, 0, 4]  # greedy order of PRIORITY
    for positions, propensity in zip(slates.positions, slates.propensity, strict=True):
        remaining = list(order)
        for k, chosen in enumerate(positions.tolist()):
            greedy = remaining[0]
            expected = epsilon / len(remaining) + (1 - epsilon) * (chosen == greedy)
            assert propensity[k] == pytest.approx(expected)
            remaining.remove(chosen)  # an offer is never placed twice


def test_propensity_of_first_position_matches_observed_frequency():
    """The logged propensity is the real probability: check it by simulation."""
    n = 20_000
    first = select(EpsilonGreedy(0.3), PRIORITY, 1, n=n).positions[:, 0]
    expected = np.full(5, 0.3 / 5)
    expected[1] += 0.7
    observed = np.bincount(first, minlength=5) / n
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_exploration_is_reproducible_for_a_seed_and_marks_explored():
    policy = EpsilonGreedy(0.5)
    a = select(policy, PRIORITY, 3, n=50, seed=42)
    b = select(policy, PRIORITY, 3, n=50, seed=42)
    c = select(policy, PRIORITY, 3, n=50, seed=43)
    assert a.positions.tolist() == b.positions.tolist()
    assert a.positions.tolist() != c.positions.tolist()
    slates = select(policy, PRIORITY, 1, n=200)
    explored = slates.explored[:, 0]
    assert explored.any() and (slates.positions[explored, 0] != 1).all()
    np.testing.assert_allclose(slates.propensity[explored, 0], 0.5 / 5)


def test_a_decisions_draws_do_not_depend_on_its_batch():
    many = draws(64)
    one = Draws(7, ["c10"], ["web_home"], 0)
    for counter in range(4):
        assert many.uniform(counter)[10] == one.uniform(counter)[0]
    assert many.uniform(0).min() >= 0.0 and many.uniform(0).max() < 1.0
    # customer, touchpoint and time each change the draws
    assert Draws(7, ["c10"], ["app_home"], 0).uniform(0)[0] != one.uniform(0)[0]
    assert Draws(7, ["c10"], ["web_home"], 1).uniform(0)[0] != one.uniform(0)[0]


def test_draws_are_uniform():
    u = draws(50_000).uniform(3)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 4_500 and counts.max() < 5_500


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: EpsilonGreedy(1.5), r"`epsilon` must be in \[0, 1\], got 1.5"),
        (lambda: select(EpsilonGreedy(0.0), PRIORITY, 0), "`limit` must be >= 1, got 0"),
        (
            lambda: EpsilonGreedy(0.1).select(
                np.ones((2, 3)), np.ones((2, 3), bool), np.array([1]), draws(2)
            ),
            r"one entry per row \(2\)",
        ),
        (
            lambda: make_policy("thompson"),
            "`policy` must be one of epsilon_greedy, softmax, got 'thompson'",
        ),
        (
            lambda: make_policy("epsilon_greedy", temperature=2.0),
            r"policy 'epsilon_greedy' got unknown parameters \['temperature'\]; it takes epsilon",
        ),
    ],
)
def test_bad_parameters_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("epsilon", [0.0, 0.2, 1.0])
def test_first_position_probabilities_are_what_select_logs_at_position_one(epsilon):
    priority = np.array([[0.1, 0.4, 0.25, 0.4, 0.05], [0.3, np.nan, 0.2, 0.9, 0.1]])
    eligible = np.array([[True, True, True, True, False], [True, True, True, False, False]])
    policy = EpsilonGreedy(epsilon)
    probability = policy.first_position_probabilities(priority, eligible)
    # row 0: greedy top is column 1 (tie with 3, catalogue order); row 1: column 0 (3 is out)
    expected = np.array(
        [
            [epsilon / 4, 1 - epsilon + epsilon / 4, epsilon / 4, epsilon / 4, 0.0],
            [1 - epsilon + epsilon / 3, epsilon / 3, epsilon / 3, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(probability, expected)
    np.testing.assert_allclose(probability.sum(axis=1), [1.0, 1.0])
    n = 200
    slates = policy.select(
        np.repeat(priority, n, axis=0), np.repeat(eligible, n, axis=0), np.full(2 * n, 1),
        draws(2 * n),
    )  # fmt: skip
    first = slates.positions[:, 0]
    logged = np.repeat(probability, n, axis=0)[np.arange(2 * n), first]
    np.testing.assert_allclose(slates.propensity[:, 0], logged)


def test_first_position_probabilities_of_a_row_with_nothing_eligible_are_zero():
    probability = EpsilonGreedy(0.3).first_position_probabilities(
        np.array([[0.5, 0.2]]), np.zeros((1, 2), dtype=bool)
    )
    assert probability.tolist() == [[0.0, 0.0]]


def test_first_position_probabilities_refuse_shapes_that_disagree():
    with pytest.raises(ValueError, match=r"one 2-D shape \(n, m\), got \(1, 3\) and \(1, 2\)"):
        EpsilonGreedy(0.1).first_position_probabilities(np.zeros((1, 3)), np.ones((1, 2), bool))
