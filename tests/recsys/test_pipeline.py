"""The one decision path: scores, slate, exploration, fallback, cold start, trace, logging."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import numpy as np
import pytest

from recsys.arbitration import EpsilonGreedy
from recsys.decision import (
    Arm,
    DecisionPipeline,
    DecisionRequest,
    ModelInfo,
    Scores,
    ServedModel,
    SingleArm,
    new_decision_ids,
)
from recsys.eligibility import Check
from recsys.errors import NotFoundError, SpecMismatchError
from recsys.eventlog import SQLiteEventLog
from tests.recsys.factories import (
    CUSTOMERS,
    NO_HISTORY,
    OFFERS,
    DictFeatureSource,
    make_catalog,
    make_pipeline,
    tiny_model,
)


@pytest.fixture
def log(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    yield log
    log.close()


def decide(pipeline, request, **kwargs):
    (decision,) = pipeline.run([request], **kwargs).decisions()
    return decision


def ids(decision):
    return [o.offer_id for o in decision.offers]


def test_offers_are_ranked_by_priority_from_real_model_scores(log):
    pipeline = make_pipeline(log)
    decision = decide(pipeline, DecisionRequest("c3", "web_home", limit=4), trace=True)
    priorities = [o.priority for o in decision.offers]
    assert priorities == sorted(priorities, reverse=True)
    for offer in decision.offers:
        part = next(s for s in decision.trace.scores if s.offer_id == offer.offer_id)
        assert offer.priority == pytest.approx(part.p_accept * part.value * part.weight)
        assert 0.0 < offer.score < 1.0
    # the trace scores every eligible offer, and the slate is its top
    assert decision.trace.eligible == len(decision.trace.scores)
    assert ids(decision) == [s.offer_id for s in decision.trace.scores[:4]]


def test_exploration_off_gives_the_same_slate_every_time(tmp_path):
    slates = []
    for i in range(3):
        pipeline = make_pipeline(SQLiteEventLog(tmp_path / f"e{i}.sqlite"), epsilon=0.0)
        d = decide(pipeline, DecisionRequest("c1", "web_home", limit=3))
        slates.append((ids(d), [o.propensity for o in d.offers], [o.explored for o in d.offers]))
    assert slates[0] == slates[1] == slates[2]
    assert slates[0][1] == [1.0, 1.0, 1.0] and not any(slates[0][2])


def test_served_propensities_match_the_policy_over_eligible_offers(log):
    pipeline = make_pipeline(log, epsilon=0.2)
    served = {}
    for customer in ("c1", "c2", "c3", "someone-new"):
        d = decide(pipeline, DecisionRequest(customer, "web_home", limit=2), trace=True)
        m = d.trace.eligible
        for k, (offer, pos) in enumerate(zip(d.offers, d.trace.slate, strict=True)):
            remaining = m - k
            greedy = (1 - 0.2) if pos.offer_id == pos.greedy_offer_id else 0.0
            assert offer.propensity == pytest.approx(greedy + 0.2 / remaining)
            assert offer.explored == (pos.offer_id != pos.greedy_offer_id)
            served[(d.decision_id, offer.offer_id)] = offer.propensity
    logged = {(r["decision_id"], r["offer_id"]): r["propensity"] for r in log.decision_rows()}
    assert logged == served


def test_exploration_is_reproducible_for_a_seed(tmp_path):
    def explored_slates(seed):
        pipeline = make_pipeline(None, epsilon=0.9, seed=seed)
        requests = [DecisionRequest(c, "web_home", limit=2) for c in ("c1", "c2", "c3", "c4")]
        return [ids(d) for _ in range(3) for d in pipeline.run(requests).decisions()]

    assert explored_slates(1) == explored_slates(1)
    assert explored_slates(1) != explored_slates(2)


def test_trace_explains_a_removed_offer(log):
    d = decide(make_pipeline(log), DecisionRequest("c2", "web_home", limit=5), trace=True)
    assert "o_gold" not in ids(d)
    (why,) = d.trace.why_not("o_gold")
    assert why.check is Check.RULE and "loyalty_tier" in why.detail
    assert [r.check for r in d.trace.why_not("o_expired")] == [Check.DATE_WINDOW]
    assert d.trace.why_not(ids(d)[0]) == []


def test_unknown_customer_gets_cold_start_offers(log):
    d = decide(make_pipeline(log), DecisionRequest("never-seen", "web_home"))
    assert d.cold_start and not d.fallback
    assert len(d.offers) == 2  # web_home has 2 slots
    assert any("cold start" in reason for reason in d.offers[0].reasons)


def test_nothing_eligible_serves_the_fallback_offer(log):
    everything = [o["offer_id"] for o in OFFERS if not o.get("fallback")]
    request = DecisionRequest("c1", "web_home", exclude_offers=tuple(everything))
    d = decide(make_pipeline(log), request, trace=True)
    assert d.fallback
    assert ids(d) == ["o_newsletter"]
    assert d.offers[0].propensity == 1.0 and d.offers[0].score is None
    assert "fallback" in d.trace.notes[0]


def test_no_consent_shows_nothing_not_even_the_fallback(log):
    d = decide(make_pipeline(log), DecisionRequest("c2", "email_weekly"), trace=True)
    assert d.offers == () and not d.fallback
    assert "no consent" in d.trace.notes[0]
    assert Check.CONSENT in {r.check for r in d.trace.removals}


def test_every_decision_is_logged_with_its_slate(log):
    pipeline = make_pipeline(log, epsilon=0.1)
    request = DecisionRequest("c1", "web_home", limit=2, context={"device": "mobile"})
    d = decide(pipeline, request)
    rows = [r for r in log.decision_rows() if r["decision_id"] == d.decision_id]
    assert [(r["offer_id"], r["position"]) for r in rows] == [
        (o.offer_id, o.rank) for o in d.offers
    ]
    assert rows[0]["customer_id"] == "c1" and rows[0]["touchpoint_id"] == "web_home"
    assert rows[0]["context"] == '{"device": "mobile"}'
    assert rows[0]["policy"] == "epsilon_greedy(epsilon=0.1)"


def test_model_of_another_feature_spec_is_refused(log):
    pipeline = DecisionPipeline(
        make_catalog(),
        DictFeatureSource(),
        log,
        log,
        SingleArm(tiny_model("old-spec"), EpsilonGreedy(0.0)),
    )
    with pytest.raises(SpecMismatchError, match="trained on feature spec 'old-spec'"):
        pipeline.check_model(tiny_model("old-spec"))
    with pytest.raises(SpecMismatchError, match="trained on feature spec 'old-spec'"):
        pipeline.run([DecisionRequest("c1", "web_home")])
    assert log.counts()["decision_rows"] == 0


def test_bad_requests_are_refused_naming_the_field(log):
    pipeline = make_pipeline(log)
    with pytest.raises(NotFoundError, match=r"`touchpoint` must be one of .* got 'nowhere'"):
        pipeline.run([DecisionRequest("c1", "nowhere")])
    with pytest.raises(ValueError, match=r"`limit` must be in 1..50, got 0"):
        pipeline.run([DecisionRequest("c1", "web_home", limit=0)])


# --------------------------------------------------------------------------- many at once


def many_customers(n: int = 200) -> dict[str, dict]:
    rng = np.random.default_rng(5)
    base = list(CUSTOMERS.values())
    out = {}
    for i in range(n):
        c = dict(base[i % len(base)])
        c["spend_90d"] = float(rng.gamma(2.0, 200.0))
        c["affinity_home"] = float(rng.random())
        out[f"m{i}"] = c
    return out


def mixed_requests(customers):
    touchpoints = ["web_home", "app_home", "email_weekly"]
    requests = []
    for i, c in enumerate([*customers, "new-1", "new-2"]):
        requests.append(
            DecisionRequest(
                c,
                touchpoints[i % 3],
                context={"device": "mobile"} if i % 4 == 0 else {},
                limit=None if i % 2 else 1 + i % 4,
                exclude_offers=("o_tv",) if i % 5 == 0 else (),
            )
        )
    everything = tuple(o["offer_id"] for o in OFFERS if not o.get("fallback"))
    requests.append(DecisionRequest("c1", "web_home", exclude_offers=everything))  # fallback
    return requests


def served(decision):
    return [
        (o.offer_id, o.rank, o.score, o.priority, o.propensity, o.explored, o.reasons)
        for o in decision.offers
    ]


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
def test_a_request_alone_and_inside_a_batch_get_the_same_decision(epsilon):
    customers = many_customers()
    pipeline = make_pipeline(
        None, epsilon=epsilon, features=DictFeatureSource({**CUSTOMERS, **customers})
    )
    requests = mixed_requests(customers)
    batch = pipeline.run(requests, trace=True).decisions()
    explored = 0
    for request, decision in zip(requests, batch, strict=True):
        (alone,) = pipeline.run([request], trace=True).decisions()
        assert served(decision) == served(alone)
        assert (decision.fallback, decision.cold_start, decision.channel) == (
            alone.fallback,
            alone.cold_start,
            alone.channel,
        )
        assert decision.trace == alone.trace
        explored += sum(o.explored for o in decision.offers)
    assert (explored > 0) == (epsilon > 0)
    assert any(d.fallback for d in batch) and any(d.cold_start for d in batch)
    assert len({d.decision_id for d in batch}) == len(batch)


def test_one_request_inside_a_batch_of_32_gets_its_single_decision():
    customers = many_customers(31)
    pipeline = make_pipeline(None, epsilon=0.3, features=DictFeatureSource(customers))
    request = DecisionRequest("c1", "web_home", limit=2, context={"device": "mobile"})
    others = [DecisionRequest(c, "web_home", limit=2) for c in customers]
    (alone,) = pipeline.run([request]).decisions()
    in_batch = pipeline.run([*others[:10], request, *others[10:]]).decisions()[10]
    assert served(in_batch) == served(alone)


def test_batch_columns_hold_the_decisions():
    customers = many_customers()
    pipeline = make_pipeline(
        None, epsilon=0.3, features=DictFeatureSource({**CUSTOMERS, **customers})
    )
    batch = pipeline.run(mixed_requests(customers))
    decisions = batch.decisions()
    assert len(batch) == len(decisions)
    assert batch.n_rows == sum(len(d.offers) for d in decisions)
    rows = [
        (d.customer_id, d.fallback, o.offer_id, o.rank, o.propensity, o.explored)
        for d in decisions
        for o in d.offers
    ]
    got = [
        (
            batch.customer_id[i],
            bool(batch.fallback[i]),
            batch.offer_id[k],
            int(batch.rank[k]),
            float(batch.propensity[k]),
            bool(batch.explored[k]),
        )
        for k, i in enumerate(batch.row_decision.tolist())
    ]
    assert got == rows


def test_no_history_source_means_no_caps_reached():
    pipeline = make_pipeline(None)
    assert pipeline.history is NO_HISTORY
    assert len(pipeline.run([]).decisions()) == 0


@pytest.mark.parametrize("n", [1, 5, 20])
def test_decision_ids_are_unique_time_ordered_uuid7(n):
    first = new_decision_ids(n)
    time.sleep(0.002)
    second = new_decision_ids(n)
    for text in first + second:
        parsed = uuid.UUID(hex=text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert len(set(first + second)) == 2 * n
    assert max(first) < min(second)


class StandIn:
    """A scorer that scores like the model but says a fallback stood in for it."""

    def __init__(self, model):
        self.model = model

    def score(self, rows):
        scores = self.model.scorer.score(rows)
        return Scores(scores.p_accept, ModelInfo("fallback", "rules"), "model_error")


def test_scores_from_a_stand_in_mark_the_decisions_fallback():
    model = tiny_model()
    stand_in = ServedModel(model.info, model.matrix, StandIn(model))
    pipeline = make_pipeline(None)
    pipeline.arms = SingleArm(stand_in, EpsilonGreedy(0.0))
    (d,) = pipeline.run([DecisionRequest("c1", "web_home")]).decisions()
    assert d.fallback and d.fallback_reason == "model_error"
    assert d.model == ModelInfo("fallback", "rules") and d.offers


def test_a_degraded_feature_block_marks_the_decisions_fallback():
    class Down(DictFeatureSource):
        def read(self, customer_ids):
            return replace(super().read(customer_ids), degraded="features_down")

    pipeline = make_pipeline(None, features=Down())
    (d,) = pipeline.run([DecisionRequest("c1", "web_home")]).decisions()
    assert d.fallback and d.fallback_reason == "features_down" and d.offers


def test_requests_of_two_arms_are_decided_by_their_own_model_and_policy():
    greedy = Arm("control", tiny_model(), EpsilonGreedy(0.0), "exp-1")
    explore = Arm("treatment", tiny_model(), EpsilonGreedy(1.0), "exp-1")

    class Alternate:
        def resolve(self, requests, now):
            return [greedy if i % 2 == 0 else explore for i in range(len(requests))]

        def shadows(self, requests, now):
            return ()

    pipeline = make_pipeline(None)
    pipeline.arms = Alternate()
    requests = [DecisionRequest(c, "web_home", limit=3) for c in ("c1", "c2", "c3", "c4")]
    decisions = pipeline.run(requests).decisions()
    assert [d.arm for d in decisions] == ["control", "treatment"] * 2
    assert {d.experiment_id for d in decisions} == {"exp-1"}
    assert [d.policy for d in decisions] == ["greedy", "epsilon_greedy(epsilon=1)"] * 2
    assert all(o.propensity == 1.0 for d in decisions[::2] for o in d.offers)
    assert all(o.propensity < 1.0 for d in decisions[1::2] for o in d.offers[:-1])
