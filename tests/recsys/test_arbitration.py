"""Priority, slate and epsilon-greedy exploration with propensities."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.arbitration import EpsilonGreedy, _PCG64Streams, make_policy, priorities, select_many

PRIORITY = np.array([0.10, 0.40, 0.25, 0.40, 0.05])


def test_priority_is_p_times_value_times_weight():
    got = priorities(np.array([0.1, 0.5]), np.array([2.0, 1.0]), np.array([1.0, 3.0]))
    np.testing.assert_allclose(got, [0.2, 1.5])


def test_greedy_slate_is_deterministic_best_first_ties_in_catalogue_order():
    slate = EpsilonGreedy(0.0).select(PRIORITY, limit=3, rng=None)
    assert slate.positions.tolist() == [1, 3, 2]
    assert slate.propensity.tolist() == [1.0, 1.0, 1.0]
    assert not slate.explored.any()


def test_limit_larger_than_candidates_returns_all():
    slate = EpsilonGreedy(0.2).select(PRIORITY[:2], limit=10, rng=np.random.default_rng(0))
    assert sorted(slate.positions.tolist()) == [0, 1]


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 1.0])
def test_position_distributions_sum_to_one_and_match_served_propensities(epsilon):
    policy = EpsilonGreedy(epsilon)
    for seed in range(50):
        slate = policy.select(PRIORITY, 3, np.random.default_rng(seed), with_distributions=True)
        placed: list[int] = []
        for k, dist in enumerate(slate.position_probabilities):
            assert dist.sum() == pytest.approx(1.0)
            assert dist[placed].sum() == 0.0  # an offer is never placed twice
            chosen = slate.positions[k]
            assert slate.propensity[k] == pytest.approx(dist[chosen])
            assert 0.0 < slate.propensity[k] <= 1.0
            placed.append(chosen)


def test_propensity_of_first_position_matches_observed_frequency():
    """The logged propensity is the real probability: check it by simulation."""
    policy = EpsilonGreedy(0.3)
    rng = np.random.default_rng(123)
    n = 20_000
    first = np.array([policy.select(PRIORITY, 1, rng).positions[0] for _ in range(n)])
    expected = np.full(5, 0.3 / 5)
    expected[1] += 0.7
    observed = np.bincount(first, minlength=5) / n
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_exploration_is_reproducible_with_a_seed_and_marks_explored():
    policy = EpsilonGreedy(0.5)
    a = policy.select(PRIORITY, 3, np.random.default_rng(42))
    b = policy.select(PRIORITY, 3, np.random.default_rng(42))
    assert a.positions.tolist() == b.positions.tolist()
    slates = [policy.select(PRIORITY, 1, np.random.default_rng(s)) for s in range(200)]
    explored = [s for s in slates if s.explored[0]]
    assert explored and all(s.positions[0] != 1 for s in explored)
    assert all(s.propensity[0] == pytest.approx(0.5 / 5) for s in explored)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: EpsilonGreedy(1.5), r"`epsilon` must be in \[0, 1\], got 1.5"),
        (lambda: EpsilonGreedy(0.0).select(PRIORITY, 0, None), "`limit` must be >= 1, got 0"),
        (lambda: EpsilonGreedy(0.1).select(PRIORITY, 1, None), "`rng` must be a numpy Generator"),
        (lambda: make_policy("thompson"), "`policy` must be one of epsilon_greedy, got 'thompson'"),
    ],
)
def test_bad_parameters_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- many decisions

EDGE_SEEDS = [0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


def _random_batch(rng, n, m):
    priority = rng.random((n, m)).round(2)  # many ties
    priority[rng.random((n, m)) < 0.02] = np.nan
    eligible = rng.random((n, m)) < 0.6
    limits = rng.integers(1, 6, n)
    seeds = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    seeds[: len(EDGE_SEEDS)] = EDGE_SEEDS[:n]
    return priority, eligible, limits, seeds


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize(("n", "m"), [(3, 5), (400, 12), (300, 1), (300, 2)])
def test_select_many_equals_select_row_by_row(epsilon, n, m):
    """Same slates, propensities and explored flags as each decision alone, bit for bit.

    Small batches draw from real numpy generators, large ones from the vectorised PCG64.
    """
    rng = np.random.default_rng(n * 100 + m)
    priority, eligible, limits, seeds = _random_batch(rng, n, m)
    policy = EpsilonGreedy(epsilon)
    batch = select_many(policy, priority, eligible, limits, seeds)
    for i in range(n):
        idx = np.flatnonzero(eligible[i])
        if not idx.size:
            assert batch.k[i] == 0
            continue
        alone = policy.select(
            priority[i, idx], int(limits[i]), np.random.default_rng(int(seeds[i]))
        )
        k = int(batch.k[i])
        assert batch.positions[i, :k].tolist() == idx[alone.positions].tolist()
        assert batch.propensity[i, :k].tobytes() == alone.propensity.tobytes()
        assert batch.explored[i, :k].tolist() == alone.explored.tolist()
        assert (batch.positions[i, k:] == -1).all()


def test_vectorised_generators_draw_what_numpy_draws():
    seeds = np.array([*EDGE_SEEDS, *range(2, 60)], dtype=np.uint64)
    streams = _PCG64Streams(seeds)
    rows = np.arange(seeds.size)
    # random / integers interleaved like exploration draws them; 3e9 exercises rejection
    highs = [5, 1, 2, 81, 3_000_000_000, 7, 3_000_000_000]
    expected = [np.random.default_rng(int(s)) for s in seeds]
    for high in highs:
        got = streams.random(rows)
        np.testing.assert_array_equal(got, [g.random() for g in expected])
        drawn = streams.integers(rows, np.full(rows.size, high))
        assert drawn.tolist() == [int(g.integers(high)) for g in expected]


def test_select_many_refuses_bad_input():
    priority, eligible = np.ones((2, 3)), np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="`limit` must be >= 1, got 0"):
        select_many(EpsilonGreedy(0.0), priority, eligible, np.array([1, 0]), None)
    with pytest.raises(ValueError, match="`seeds` must be given when epsilon > 0"):
        select_many(EpsilonGreedy(0.1), priority, eligible, np.array([1, 1]), None)
