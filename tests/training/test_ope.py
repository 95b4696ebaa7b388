"""Off-policy estimators: unbiased on a bandit with a known value, seeded, validated."""

from __future__ import annotations

import numpy as np
import pytest

from training.ope import IPS, SNIPS, DoublyRobust, Rounds, estimate_many, observed_value
from training.policy_eval import (
    TargetPolicy,
    evaluate_policies,
    first_shown,
    greedy_probabilities,
    uniform_probabilities,
)

N_ACTIONS = 5
P_ACCEPT = np.array([0.05, 0.10, 0.30, 0.08, 0.12])


def _bandit(n: int = 20_000, seed: int = 3) -> tuple[Rounds, float]:
    """Uniform logging over 5 actions; target always plays action 2 (true value 0.30)."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, N_ACTIONS, n)
    reward = (rng.random(n) < P_ACCEPT[action]).astype(float)
    propensity = np.full(n, 1 / N_ACTIONS)
    target_prob = (action == 2).astype(float)
    q_hat = P_ACCEPT + 0.05  # a biased reward model: DR must still be right
    return Rounds(reward, propensity, target_prob, q_hat[action], np.full(n, q_hat[2])), 0.30


@pytest.mark.parametrize("estimator", [IPS(), SNIPS(), DoublyRobust()])
def test_each_estimator_is_unbiased_and_its_interval_covers_the_true_value(estimator):
    estimates = [
        estimator.estimate(_bandit(n=4_000, seed=s)[0], bootstrap_samples=100, seed=s)
        for s in range(30)
    ]
    truth = 0.30
    mean = np.mean([e.value for e in estimates])
    assert mean == pytest.approx(truth, abs=0.01)
    coverage = np.mean([e.covers(truth) for e in estimates])
    assert coverage >= 0.8  # nominal 95%; 30 replications
    assert all(e.upper - e.lower < 0.12 for e in estimates)


def test_bootstrap_intervals_are_reproducible_with_a_seed_and_vary_without():
    rounds, _ = _bandit(n=2_000)
    a = IPS().estimate(rounds, bootstrap_samples=50, seed=7)
    b = IPS().estimate(rounds, bootstrap_samples=50, seed=7)
    c = IPS().estimate(rounds, bootstrap_samples=50, seed=8)
    assert a == b
    assert (a.lower, a.upper) != (c.lower, c.upper)


def test_estimates_share_resamples_so_identical_jobs_agree():
    rounds, _ = _bandit(n=2_000)
    first, second = estimate_many([(SNIPS(), rounds), (SNIPS(), rounds)], bootstrap_samples=30)
    assert first == second


def test_observed_value_is_the_mean_reward():
    reward = np.array([0.0, 1.0, 0.0, 1.0])
    assert observed_value(reward, bootstrap_samples=20).value == 0.5


ONE = np.ones(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"propensity": np.array([0.5, 0.0, 0.5])}, r"`propensity` must be in \(0, 1\], got 0\.0"),
        ({"propensity": np.array([0.5, 1.5, 0.5])}, r"`propensity` must be in \(0, 1\], got 1\.5"),
        ({"target_prob": np.array([0.5, -0.1, 0.5])}, r"`target_prob` must be in \[0, 1\]"),
        ({"q_logged": np.ones(2)}, r"`q_logged` must have shape \(3,\), got \(2,\)"),
    ],
)
def test_bad_rounds_are_refused_naming_the_field(kwargs, message):
    fields = {
        "reward": ONE,
        "propensity": ONE,
        "target_prob": ONE,
        "q_logged": ONE,
        "q_target": ONE,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        Rounds(**fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bootstrap_samples": 5}, "`bootstrap_samples` must be >= 10, got 5"),
        ({"confidence": 1.0}, r"`confidence` must be in \(0, 1\), got 1.0"),
    ],
)
def test_bad_bootstrap_settings_are_refused(kwargs, message):
    rounds, _ = _bandit(n=100)
    with pytest.raises(ValueError, match=message):
        IPS().estimate(rounds, **kwargs)


def test_greedy_picks_the_first_best_candidate_and_uniform_spreads_evenly():
    decision = np.array(["a", "a", "a", "b", "b"])
    score = np.array([0.1, 0.9, 0.9, 0.5, 0.2])
    assert greedy_probabilities(decision, score).tolist() == [0, 1, 0, 1, 0]
    assert uniform_probabilities(decision) == pytest.approx([1 / 3] * 3 + [1 / 2] * 2)


def test_first_shown_keeps_each_decisions_lowest_position():
    import pandas as pd

    meta = pd.DataFrame({"decision_id": ["a", "a", "b", "c", "c"], "position": [2, 1, 1, 1, 1]})
    assert first_shown(meta).tolist() == [False, True, True, True, False]


def test_policy_evaluation_reports_truth_and_oracle_next_to_estimates():
    import pandas as pd

    rng = np.random.default_rng(0)
    n, k = 4_000, 3
    decisions = np.array([f"d{i}" for i in range(n)])
    p = rng.uniform(0.05, 0.4, size=(n, k))
    action = rng.integers(0, k, n)
    label = (rng.random(n) < p[np.arange(n), action]).astype(int)
    logged = pd.DataFrame(
        {
            "decision_id": decisions,
            "offer_id": action.astype(str),
            "propensity": 1 / k,
            "label": label,
            "revenue": label * 10.0,
        }
    )
    candidates = pd.DataFrame(
        {"decision_id": np.repeat(decisions, k), "offer_id": np.tile(np.arange(k).astype(str), n)}
    )
    truth = candidates.assign(p_accept=p.ravel())
    result = evaluate_policies(
        logged,
        p[np.arange(n), action],
        candidates,
        p.ravel(),
        {"perfect": p.ravel(), "random": None},
        truth=truth,
        bootstrap_samples=100,
    )
    oracle = p.max(axis=1).mean()
    assert result.oracle_value == pytest.approx(oracle)
    assert result.policies["perfect"].true_value == pytest.approx(oracle)
    assert result.policies["random"].true_value == pytest.approx(p.mean())
    for name in ("perfect", "random"):
        value = result.policies[name]
        for estimator in ("ips", "snips", "dr"):
            e = value.estimates[estimator]
            half = (e.upper - e.lower) / 2
            assert abs(e.value - value.true_value) < 2 * half, (name, estimator)
    # Lifts over the logging policy: the point is the ratio, the interval is paired.
    lift = result.policies["perfect"].lifts["snips"]
    assert lift.value == pytest.approx(
        result.policies["perfect"].estimates["snips"].value / result.logging.value
    )
    assert lift.lower < lift.value < lift.upper
    assert result.logging.value == pytest.approx(label.mean())
    # Revenue is 10 per acceptance: SNIPS on revenue is 10x SNIPS on the label.
    assert result.policies["perfect"].estimates["snips_revenue"].value == pytest.approx(
        10 * result.policies["perfect"].estimates["snips"].value
    )


def test_a_target_policy_brings_its_own_candidates_and_may_choose_nothing():
    import pandas as pd

    logged = pd.DataFrame(
        {
            "decision_id": ["a", "b", "c", "d"],
            "offer_id": ["x", "y", "x", "z"],
            "propensity": [0.5, 0.5, 0.25, 0.5],
            "label": [1, 0, 1, 1],
            "revenue": [10.0, 0.0, 10.0, 5.0],
        }
    )
    candidates = pd.DataFrame({"decision_id": list("abcd"), "offer_id": ["x", "y", "x", "z"]})
    truth = pd.DataFrame(
        {"decision_id": list("abcd"), "offer_id": ["x", "y", "x", "z"], "p_accept": 0.2}
    )
    # "a": x surely; "b": nothing eligible; "c": x or w; "d": z
    target = TargetPolicy(
        np.array(["a", "c", "c", "d"], dtype=object),
        np.array(["x", "x", "w", "z"], dtype=object),
        np.array([1.0, 0.6, 0.4, 1.0]),
        np.array([0.3, 0.2, 0.1, 0.4]),
    )
    result = evaluate_policies(
        logged, np.zeros(4), candidates, np.zeros(4), {}, targets={"served": target},
        truth=truth, bootstrap_samples=10,
    )  # fmt: skip
    served = result.policies["served"]
    weights = np.array([1 / 0.5, 0.0, 0.6 / 0.25, 1 / 0.5])
    assert served.estimates["ips"].value == pytest.approx(np.mean(weights * logged["label"]))
    # DR: sum_a pi(a) q(a) per round plus the weighted residual (q_logged = 0 here)
    q_pi = np.array([0.3, 0.0, 0.6 * 0.2 + 0.4 * 0.1, 0.4])
    assert served.estimates["dr"].value == pytest.approx(np.mean(q_pi + weights * logged["label"]))
    # "w" (0.4 of round "c") is unknown to the truth: it counts at the round's known mean
    assert served.true.acceptance == pytest.approx((0.2 + 0.0 + 0.2 + 0.2) / 4)
    assert served.true.coverage == pytest.approx((1 + 0.6 + 1) / 3)
    assert served.true.revenue is None  # no offer values given
    known = target.of_decisions({"a", "b", "d"})
    again = evaluate_policies(
        logged, np.zeros(4), candidates, np.zeros(4), {}, targets={"served": known},
        truth=truth, offer_values={"x": 10.0, "y": 1.0, "z": 5.0}, bootstrap_samples=10,
    )  # fmt: skip
    true = again.policies["served"].true
    assert true.acceptance == pytest.approx((0.2 + 0.2) / 4) and true.coverage == 1.0
    assert true.revenue == pytest.approx((0.2 * 10 + 0.2 * 5) / 4)
    assert again.oracle.revenue == pytest.approx((2.0 + 0.2 + 2.0 + 1.0) / 4)
    assert again.random.acceptance == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("prob", "offer_id", "message"),
    [
        (np.array([1.5]), np.array(["x"], dtype=object), r"`prob` must be in \[0, 1\]"),
        (np.array([0.5]), np.array(["x", "y"], dtype=object), r"`offer_id` must have shape"),
    ],
)
def test_a_bad_target_policy_is_refused_naming_the_field(prob, offer_id, message):
    with pytest.raises(ValueError, match=message):
        TargetPolicy(np.array(["a"], dtype=object), offer_id, prob, np.zeros(1))


def _extreme() -> Rounds:
    """1,000 rounds logged with propensity 0.5, except 3 with 1e-4; the target plays the
    logged action on 40 rounds (1/2 of them with reward), among them the 3 extreme ones."""
    n = 1_000
    propensity = np.full(n, 0.5)
    propensity[:3] = 1e-4
    target = np.zeros(n)
    target[:40] = 1.0
    reward = np.zeros(n)
    reward[[0, 10, 20]] = 1.0
    zeros = np.zeros(n)
    return Rounds(reward, propensity, target, zeros, zeros)


def test_diagnostics_count_matched_rounds_positives_ess_and_the_largest_weight():
    rounds = _extreme()
    estimate = SNIPS().estimate(rounds, bootstrap_samples=20)
    d = estimate.diagnostics
    w = np.r_[np.full(3, 1e4), np.full(37, 2.0)]
    assert (d.rounds, d.matched, d.positives) == (1_000, 40, 3)
    assert d.max_weight == pytest.approx(1e4)
    assert d.effective_sample_size == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert d.effective_sample_size < 3.1  # three rounds carry the estimate


def test_extreme_propensities_raise_the_warning_naming_each_shortfall():
    from training.ope import SupportLimits

    problems = (
        SNIPS()
        .estimate(_extreme(), bootstrap_samples=20)
        .diagnostics.problems(
            SupportLimits(
                min_matched_rounds=100,
                min_positives=10,
                min_effective_sample_size=50,
                max_weight=1000,
            )
        )
    )
    assert problems == [
        "40 matched rounds of 1000 (`min_matched_rounds` 100)",
        "3 positives (`min_positives` 10)",
        "effective sample size 3.0 (`min_effective_sample_size` 50)",
        "largest weight 10,000 (`max_weight` 1000)",
    ]
    assert (
        SNIPS()
        .estimate(_bandit(n=4_000)[0], bootstrap_samples=20)
        .diagnostics.problems(SupportLimits(max_weight=1000))
        == []
    )


def test_policy_evaluation_warns_about_the_policy_resting_on_extreme_weights():
    import pandas as pd

    from training.ope import SupportLimits

    rounds = _extreme()
    n = len(rounds.reward)
    decisions = np.array([f"d{i}" for i in range(n)])
    logged = pd.DataFrame(
        {
            "decision_id": decisions,
            "offer_id": np.where(rounds.target_prob > 0, "a", "b"),
            "propensity": rounds.propensity,
            "label": rounds.reward,
            "revenue": rounds.reward,
        }
    )
    candidates = pd.DataFrame(
        {"decision_id": np.repeat(decisions, 2), "offer_id": np.tile(["a", "b"], n)}
    )
    always_a = np.tile([1.0, 0.0], n)
    result = evaluate_policies(
        logged, np.zeros(n), candidates, np.zeros(2 * n), {"always_a": always_a},
        bootstrap_samples=20,
    )  # fmt: skip
    value = result.policies["always_a"]
    for key in ("ips", "snips", "dr", "ips_clipped", "switch_dr", "snips_revenue"):
        assert value.estimates[key].diagnostics.matched == 40, key
    assert value.lifts["snips"].diagnostics == value.estimates["snips"].diagnostics
    (line,) = result.warnings(SupportLimits(min_matched_rounds=10, min_positives=1))
    assert line.startswith("always_a policy's estimates rest on too little: ")
    assert "effective sample size 3.0" in line and "largest weight 10,000" in line
    assert value.chosen_offers == 1 and result.candidate_offers == 2


def test_clipped_ips_and_switch_dr_by_hand():
    from training.ope import ClippedIPS, SwitchDR

    reward = np.array([1.0, 0.0, 1.0, 1.0])
    propensity = np.array([0.5, 0.5, 0.01, 0.25])
    target = np.array([1.0, 1.0, 1.0, 0.0])  # weights 2, 2, 100, 0
    q_logged = np.array([0.3, 0.2, 0.4, 0.1])
    q_target = np.array([0.5, 0.5, 0.6, 0.2])
    rounds = Rounds(reward, propensity, target, q_logged, q_target)
    clipped = ClippedIPS(clip=10).estimate(rounds, bootstrap_samples=10)
    assert clipped.value == pytest.approx((2 * 1 + 0 + 10 * 1 + 0) / 4)
    assert clipped.diagnostics.max_weight == 10
    switch = SwitchDR(clip=10).estimate(rounds, bootstrap_samples=10)
    # The round of weight 100 keeps only the reward model's value q_target.
    by_hand = [0.5 + 2 * (1 - 0.3), 0.5 + 2 * (0 - 0.2), 0.6, 0.2]
    assert switch.value == pytest.approx(np.mean(by_hand))
    # A threshold above every weight gives plain IPS and DR back.
    assert ClippedIPS(clip=1e9).estimate(rounds, bootstrap_samples=10).value == pytest.approx(
        IPS().estimate(rounds, bootstrap_samples=10).value
    )
    assert SwitchDR(clip=1e9).estimate(rounds, bootstrap_samples=10).value == pytest.approx(
        DoublyRobust().estimate(rounds, bootstrap_samples=10).value
    )
    with pytest.raises(ValueError, match="`clip` must be > 0, got 0"):
        ClippedIPS(clip=0)
