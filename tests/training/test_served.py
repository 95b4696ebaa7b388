"""The served policy evaluated offline: test rounds decided again by the decision pipeline."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from recsys.arbitration import EpsilonGreedy, Softmax
from recsys.catalog import Catalog, EligibilityRule, Offer, Touchpoint
from recsys.decision import ModelInfo
from recsys.eligibility import Check
from recsys.errors import ConfigError
from recsys.settings import ServingSettings
from tests.training.factories import (
    OFFER_VALUE,
    OFFERS,
    RESTRICTED_BELOW_SEGMENT,
    RESTRICTED_OFFER,
    WEIGHT,
    frame_encoder,
    make_world,
)
from training.config import build_config
from training.pipeline import TrainingInputs, train_and_evaluate
from training.policy_eval import first_shown
from training.served import PointInTimeHistory, served_rounds

EPSILON = 0.1
CONFIG = {
    "model": {"num_boost_round": 80, "early_stopping_rounds": 10, "params": {"num_threads": 1}},
    "baselines": ["random", "popularity"],
    "evaluation": {
        "bootstrap_samples": 50,
        "served_policy": "epsilon_greedy",
        "served_epsilon": EPSILON,
    },
}


@pytest.fixture(scope="module")
def world():
    return make_world(decisions=3000, seed=1)


@pytest.fixture(scope="module")
def result(world):
    offers = pd.DataFrame({"offer_id": list(OFFERS), "value": OFFER_VALUE})
    inputs = TrainingInputs(
        world.frame, frame_encoder, world.candidates, world.truth, offers, replay=world.replay
    )
    return train_and_evaluate(inputs, build_config(CONFIG))


@pytest.fixture(scope="module")
def logged(world, result):
    """The test rounds the evaluation replayed (first shown offer of each test decision)."""
    test = world.frame[world.frame["ts"] >= result.split.test_start]
    return test[first_shown(test)].reset_index(drop=True)


def per_round(target) -> pd.DataFrame:
    return pd.DataFrame(
        {"decision_id": target.decision_id, "offer_id": target.offer_id, "prob": target.prob}
    )


def test_the_served_policy_is_evaluated_next_to_the_baselines_and_logged(result):
    evaluation = result.policy
    served = evaluation.policies["served"]
    assert set(served.estimates) == {
        "ips", "snips", "dr", "ips_clipped", "switch_dr", "snips_revenue"
    }  # fmt: skip
    assert 0 <= served.true_value <= evaluation.oracle_value
    m = result.metrics
    for key in (
        "served.snips_value",
        "served.dr_value.lower",
        "served.ips_lift",
        "served.snips_revenue",
        "served.true_value",
        "served.snips_value.email",
    ):
        assert key in m, key  # fmt: skip
    assert m["chance_revenue"] < m["served.true_revenue"] <= m["oracle_revenue"]
    assert 0 < m["served.true_revenue.of_oracle"] <= 1
    assert m["served.true_value.of_oracle"] == pytest.approx(
        (m["served.true_value"] - m["chance_value"]) / (m["oracle_value"] - m["chance_value"])
    )
    assert m["snips_value"] == evaluation.policies["lightgbm"].estimates["snips"].value


def test_every_round_is_decided_by_the_pipeline_with_the_served_policy(result, logged):
    served = result.served
    assert set(served.traces) == set(logged["decision_id"])
    assert served.policy == f"epsilon_greedy(epsilon={EPSILON:g})"
    trace = next(iter(served.traces.values()))
    assert trace.policy == served.policy and trace.epsilon == EPSILON
    assert trace.candidates == len(OFFERS)
    assert [s.priority for s in trace.scores] == sorted(
        (s.priority for s in trace.scores), reverse=True
    )


def test_probabilities_per_round_sum_to_at_most_one_and_follow_epsilon_greedy(result):
    frame = per_round(result.served.target)
    assert ((frame["prob"] >= 0) & (frame["prob"] <= 1)).all()
    sums = frame.groupby("decision_id")["prob"].sum()
    assert (sums <= 1 + 1e-12).all()
    for decision_id, trace in list(result.served.traces.items())[:50]:
        mine = frame[frame["decision_id"] == decision_id].set_index("offer_id")["prob"]
        n = trace.eligible
        assert n == len(mine)
        top = trace.scores[0].offer_id
        for offer_id, prob in mine.items():
            expected = EPSILON / n + (1 - EPSILON) * (offer_id == top)
            assert prob == pytest.approx(expected)


def test_an_offer_its_rule_removes_has_probability_zero(result, logged):
    segment = logged.set_index("decision_id")["segment"]
    frame = per_round(result.served.target)
    restricted = frame[frame["offer_id"] == RESTRICTED_OFFER]
    out = segment[segment >= RESTRICTED_BELOW_SEGMENT].index
    assert len(out) > 0
    assert not restricted["decision_id"].isin(set(out)).any()
    for decision_id in out[:20]:
        trace = result.served.traces[decision_id]
        assert RESTRICTED_OFFER not in {s.offer_id for s in trace.scores}
        assert Check.RULE in [r.check for r in trace.why_not(RESTRICTED_OFFER)]
    # where the rule holds, the offer is a candidate of the served policy
    assert (
        restricted["decision_id"].isin(set(segment[segment < RESTRICTED_BELOW_SEGMENT].index)).all()
    )
    assert len(restricted) > 0


def test_ips_of_the_served_policy_is_its_probability_of_the_logged_offer(result, logged):
    target = per_round(result.served.target)
    prob = (
        logged[["decision_id", "offer_id"]]
        .merge(target, on=["decision_id", "offer_id"], how="left")["prob"]
        .fillna(0.0)
        .to_numpy()
    )
    ips = np.mean(prob / logged["propensity"].to_numpy() * logged["label"].to_numpy())
    assert result.policy.policies["served"].estimates["ips"].value == pytest.approx(ips)


def test_with_epsilon_zero_the_served_policy_is_greedy_by_priority_among_eligible(
    world, result, logged
):
    model = result.model
    served = served_rounds(
        logged,
        world.replay(logged, result.encoder),
        model.flavour_scorer(),
        ModelInfo("lightgbm", "test", result.encoder.spec_version),
        EpsilonGreedy(0.0),
    )
    frame = per_round(served.target)
    assert set(frame["prob"]) == {0.0, 1.0}  # every eligible offer listed, one chosen
    chosen = frame[frame["prob"] > 0]
    assert chosen["decision_id"].is_unique
    assert len(chosen) == len(logged)
    # independently: every offer's P(accept) x value x weight, over the offers eligible
    rows, X = world.candidates(logged, result.encoder)
    p = model.predict(X, rows)
    weight = np.array([WEIGHT.get(o, 1.0) for o in OFFERS])
    priority = (p * np.tile(OFFER_VALUE * weight, len(logged))).reshape(len(logged), len(OFFERS))
    accepted = world.frame[world.frame["label"] == 1]
    expected = {}
    for i, r in enumerate(logged.itertuples(index=False)):
        before = accepted[(accepted["customer_id"] == r.customer_id) & (accepted["ts"] < r.ts)]
        eligible = np.array([o not in set(before["offer_id"]) for o in OFFERS])
        eligible &= (np.array(OFFERS) != RESTRICTED_OFFER) | (r.segment < RESTRICTED_BELOW_SEGMENT)
        expected[r.decision_id] = OFFERS[int(np.argmax(np.where(eligible, priority[i], -np.inf)))]
    got = chosen.set_index("decision_id")["offer_id"].to_dict()
    assert got == expected


def test_another_policy_on_the_same_rounds_is_its_replay(world, result, logged):
    """``under`` re-weights the replayed rounds: what a round finds eligible and the
    priorities do not depend on the policy, so it equals deciding them again with it."""
    policy = Softmax(temperature=0.1, floor=0.02)
    again = served_rounds(
        logged,
        world.replay(logged, result.encoder),
        result.model.flavour_scorer(),
        ModelInfo("lightgbm", "candidate", result.encoder.spec_version),
        policy,
    )
    under = per_round(result.served.under(policy))
    pd.testing.assert_frame_equal(under, per_round(again.target))
    sums = under.groupby("decision_id")["prob"].sum()
    np.testing.assert_allclose(sums, 1.0)
    eligible = under.groupby("decision_id")["prob"].transform("size")
    assert (under["prob"] >= 0.02 / eligible - 1e-12).all()  # every eligible offer
    assert again.policy == "softmax(temperature=0.1, floor=0.02)"


def test_training_replays_the_configured_policy(world):
    offers = pd.DataFrame({"offer_id": list(OFFERS), "value": OFFER_VALUE})
    inputs = TrainingInputs(
        world.frame, frame_encoder, world.candidates, world.truth, offers, replay=world.replay
    )
    evaluation = {
        "bootstrap_samples": 50,
        "served_policy": "softmax",
        "served_policy_params": {"temperature": 0.1},
    }
    config = build_config({**CONFIG, "evaluation": evaluation})
    served = train_and_evaluate(inputs, config).served
    assert served is not None
    assert served.policy == "softmax(temperature=0.1, floor=0.01)"
    np.testing.assert_allclose(per_round(served.target).groupby("decision_id")["prob"].sum(), 1)


def test_training_replays_the_services_default_policy_softmax(world):
    offers = pd.DataFrame({"offer_id": list(OFFERS), "value": OFFER_VALUE})
    inputs = TrainingInputs(
        world.frame, frame_encoder, world.candidates, world.truth, offers, replay=world.replay
    )
    config = build_config({**CONFIG, "evaluation": {"bootstrap_samples": 50}})
    served = train_and_evaluate(inputs, config).served
    assert served is not None
    assert served.policy == "softmax(temperature=0.02, floor=0.01)"


def test_a_served_epsilon_for_a_policy_that_does_not_read_it_is_refused():
    evaluation = {"served_epsilon": 0.1, "served_policy": "softmax"}
    with pytest.raises(ConfigError, match="`served_epsilon` is read by policy epsilon_greedy only"):
        build_config({"evaluation": evaluation})


def test_a_served_epsilon_without_a_served_policy_follows_the_services_policy():
    evaluation = build_config({"evaluation": {"served_epsilon": 0.1}}).evaluation
    greedy_service = ServingSettings(policy="epsilon_greedy", epsilon=0.3)
    assert evaluation.served_slate_policy(greedy_service) == EpsilonGreedy(0.1)
    assert evaluation.served_slate_policy(ServingSettings()) == Softmax()


def test_the_config_names_the_served_policy_and_refuses_bad_parameters():
    config = build_config(
        {"evaluation": {"served_policy": "softmax", "served_policy_params": {"floor": 0.02}}}
    )
    assert config.evaluation.served_policy_params == {"floor": 0.02}
    with pytest.raises(ConfigError, match=r"`floor` must be in \(0, 1\], got 0.0"):
        build_config(
            {"evaluation": {"served_policy": "softmax", "served_policy_params": {"floor": 0}}}
        )
    with pytest.raises(ConfigError, match="`policy` must be one of epsilon_greedy, softmax"):
        build_config({"evaluation": {"served_policy": "thompson"}})


def test_history_counts_only_what_happened_before_the_decision():
    ts = pd.to_datetime(["2024-01-01 10:00", "2024-01-03 10:00", "2024-01-05 10:00"])
    contacts = pd.DataFrame({"customer_id": "c1", "offer_id": ["o1", "o1", "o2"], "ts": ts})
    accepted = pd.DataFrame({"customer_id": ["c1"], "offer_id": ["o2"], "ts": ts[2:]})
    history = PointInTimeHistory(contacts, accepted)
    since = datetime(2024, 1, 2, tzinfo=UTC)
    at = history.at(datetime(2024, 1, 5, 10, tzinfo=UTC)).contact_history(["c1", "c2"], since)
    assert set(at) == {"c1"}
    assert at["c1"].count_since("o1", 0) == 1 and at["c1"].count_since("o2", 0) == 0
    assert at["c1"].accepted == frozenset()
    later = history.at(datetime(2024, 1, 6, tzinfo=UTC)).contact_history(["c1"], since)
    assert later["c1"].accepted == {"o2"} and later["c1"].count_since("o2", 0) == 1
    assert PointInTimeHistory.empty().at(since).contact_history(["c1"], since) == {}


def test_a_round_with_nothing_eligible_serves_the_fallback_with_probability_one(
    world, result, logged
):
    never = (EligibilityRule("segment", "<", 0),)  # segments are 0..11
    offers = [Offer(o, o, "discount", eligibility=never) for o in OFFERS[:-1]]
    catalog = Catalog(
        [*offers, Offer(OFFERS[-1], OFFERS[-1], "discount", fallback=True)],
        [Touchpoint("web_cart", "web"), Touchpoint("email", "email")],
    )
    replay = dataclasses.replace(world.replay(logged, result.encoder), catalog=catalog)
    served = served_rounds(
        logged, replay, result.model.flavour_scorer(),
        ModelInfo("lightgbm", "test", result.encoder.spec_version), EpsilonGreedy(0.2),
    )  # fmt: skip
    assert served.target.offer_id.tolist() == [OFFERS[-1]] * len(logged)
    assert served.target.prob.tolist() == [1.0] * len(logged)
    assert served.target.q.tolist() == [0.0] * len(logged)  # no model score for a fallback
    trace = next(iter(served.traces.values()))
    assert trace.eligible == 0 and "fallback" in trace.notes[0]
