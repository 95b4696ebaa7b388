"""The one decision path: scores, slate, exploration, fallback, cold start, trace, logging."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from recsys.decision import (
    COLUMNAR_MIN_CUSTOMERS,
    DecisionEngine,
    DecisionRequest,
    ModelInfo,
    new_decision_ids,
)
from recsys.eligibility import Check
from recsys.errors import NotFoundError, SpecMismatchError
from recsys.eventlog import SQLiteEventLog
from tests.serving.factories import (
    CUSTOMERS,
    NOW,
    OFFERS,
    DictFeatureSource,
    build_matrix,
    make_catalog,
    make_engine,
    tiny_scorer,
)


@pytest.fixture
def log(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    yield log
    log.close()


def ids(decision):
    return [o.offer_id for o in decision.offers]


def test_offers_are_ranked_by_priority_from_real_model_scores(log):
    engine = make_engine(log)
    decision = engine.decide(DecisionRequest("c3", "web_home", limit=4), trace=True)
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
        log = SQLiteEventLog(tmp_path / f"e{i}.sqlite")
        engine = make_engine(log, epsilon=0.0)
        d = engine.decide(DecisionRequest("c1", "web_home", limit=3))
        slates.append((ids(d), [o.propensity for o in d.offers], [o.explored for o in d.offers]))
    assert slates[0] == slates[1] == slates[2]
    assert slates[0][1] == [1.0, 1.0, 1.0] and not any(slates[0][2])


def test_served_propensities_match_the_policy_over_eligible_offers(log):
    engine = make_engine(log, epsilon=0.2)
    served = {}
    for customer in ("c1", "c2", "c3", "someone-new"):
        d = engine.decide(DecisionRequest(customer, "web_home", limit=2), trace=True)
        m = d.trace.eligible
        for k, (offer, pos) in enumerate(zip(d.offers, d.trace.slate, strict=True)):
            remaining = m - k
            greedy = (1 - 0.2) if pos.offer_id == pos.greedy_offer_id else 0.0
            assert offer.propensity == pytest.approx(greedy + 0.2 / remaining)
            assert offer.explored == (pos.offer_id != pos.greedy_offer_id)
            served[(d.decision_id, offer.offer_id)] = offer.propensity
    logged = {(r["decision_id"], r["offer_id"]): r["propensity"] for r in log.decision_rows()}
    assert logged == served


def test_exploration_is_seeded_per_customer_touchpoint_and_time(tmp_path):
    def explored_slates(seed):
        log = SQLiteEventLog(tmp_path / f"s{seed}.sqlite")
        engine = make_engine(log, epsilon=0.9, seed=seed)
        return [
            ids(engine.decide(DecisionRequest(c, "web_home", limit=2)))
            for c in ("c1", "c2", "c3", "c4", "c5", "c6")
        ]

    assert explored_slates(1) == explored_slates(1)
    assert explored_slates(1) != explored_slates(2)


def test_trace_explains_a_removed_offer(log):
    engine = make_engine(log)
    d = engine.decide(DecisionRequest("c2", "web_home", limit=5), trace=True)
    assert "o_gold" not in ids(d)
    (why,) = d.trace.why_not("o_gold")
    assert why.check is Check.RULE and "loyalty_tier" in why.detail
    assert [r.check for r in d.trace.why_not("o_expired")] == [Check.DATE_WINDOW]
    assert d.trace.why_not(ids(d)[0]) == []


def test_unknown_customer_gets_cold_start_offers(log):
    engine = make_engine(log)
    d = engine.decide(DecisionRequest("never-seen", "web_home"))
    assert d.cold_start and not d.fallback
    assert len(d.offers) == 2  # web_home has 2 slots
    assert any("cold start" in reason for reason in d.offers[0].reasons)


def test_nothing_eligible_serves_the_fallback_offer(log):
    engine = make_engine(log)
    everything = [o["offer_id"] for o in OFFERS if not o.get("fallback")]
    d = engine.decide(DecisionRequest("c1", "web_home", exclude_offers=tuple(everything)))
    assert d.fallback
    assert ids(d) == ["o_newsletter"]
    assert d.offers[0].propensity == 1.0 and d.offers[0].score is None


def test_no_consent_shows_nothing_not_even_the_fallback(log):
    engine = make_engine(log)
    d = engine.decide(DecisionRequest("c2", "email_weekly"), trace=True)
    assert d.offers == () and not d.fallback
    assert "no consent" in d.trace.notes[0]


def test_every_decision_is_logged_with_its_slate(log):
    engine = make_engine(log, epsilon=0.1)
    d = engine.decide(DecisionRequest("c1", "web_home", limit=2, context={"device": "mobile"}))
    rows = [r for r in log.decision_rows() if r["decision_id"] == d.decision_id]
    assert [(r["offer_id"], r["position"]) for r in rows] == [
        (o.offer_id, o.rank) for o in d.offers
    ]
    assert rows[0]["customer_id"] == "c1" and rows[0]["touchpoint_id"] == "web_home"
    assert rows[0]["context"] == '{"device": "mobile"}'
    assert rows[0]["policy"] == "epsilon_greedy(epsilon=0.1)"


def test_batch_and_single_give_the_same_offers_for_the_same_customer_and_time(tmp_path):
    customers = ["c1", "c2", "c3", "new-1"]
    single_engine = make_engine(SQLiteEventLog(tmp_path / "a.sqlite"), epsilon=0.3)
    batch_engine = make_engine(SQLiteEventLog(tmp_path / "b.sqlite"), epsilon=0.3)
    singles = [single_engine.decide(DecisionRequest(c, "web_home", limit=3)) for c in customers]
    batch = batch_engine.decide_many([DecisionRequest(c, "web_home", limit=3) for c in customers])
    assert [ids(d) for d in singles] == [ids(d) for d in batch]
    assert [[o.propensity for o in d.offers] for d in singles] == [
        [o.propensity for o in d.offers] for d in batch
    ]
    np.testing.assert_allclose(
        [o.score for d in singles for o in d.offers], [o.score for d in batch for o in d.offers]
    )


def test_model_of_another_feature_spec_is_refused(log):
    with pytest.raises(SpecMismatchError, match="trained on feature spec 'old-spec'"):
        DecisionEngine(
            make_catalog(),
            DictFeatureSource(),
            build_matrix,
            tiny_scorer(),
            ModelInfo("offer-ranker", "1", "old-spec"),
            log,
            log,
        )


def test_bad_requests_are_refused_naming_the_field(log):
    engine = make_engine(log)
    with pytest.raises(NotFoundError, match=r"`touchpoint` must be one of .* got 'nowhere'"):
        engine.decide(DecisionRequest("c1", "nowhere"))
    with pytest.raises(ValueError, match=r"`limit` must be in 1..50, got 0"):
        engine.decide(DecisionRequest("c1", "web_home", limit=0))


# --------------------------------------------------------------------------- many at once


def many_customers(n: int = 200) -> dict[str, dict]:
    """Variations of the factory customers (enough for the vectorised exploration draws)."""
    rng = np.random.default_rng(5)
    base = list(CUSTOMERS.values())
    out = {}
    for i in range(n):
        c = dict(base[i % len(base)])
        c["spend_90d"] = float(rng.gamma(2.0, 200.0))
        c["affinity_home"] = float(rng.random())
        out[f"m{i}"] = c
    return out


class PairBuilder:
    """The factory matrix builder with a ``build_many``: rows picked from per-customer calls."""

    def __init__(self, catalog):
        self.catalog = catalog

    def __call__(self, *args):
        return build_matrix(*args)

    def build_many(self, vectors, touchpoint, contexts, now, customer_index, offer_index):
        offers = self.catalog.for_touchpoint(touchpoint.touchpoint_id).offers
        full = [
            build_matrix(v, offers, touchpoint, c, now)
            for v, c in zip(vectors, contexts, strict=True)
        ]
        return np.array(
            [full[i][j] for i, j in zip(customer_index, offer_index, strict=True)]
        ).reshape(len(customer_index), -1)


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
@pytest.mark.parametrize("batch_builder", [False, True])
def test_a_big_batch_gives_each_request_its_single_decision(tmp_path, epsilon, batch_builder):
    """Columnar decisions (vectorised exploration draws included) equal one-by-one ones."""
    customers = many_customers()
    features = DictFeatureSource({**CUSTOMERS, **customers})
    batch_engine = make_engine(
        SQLiteEventLog(tmp_path / "a.sqlite"), epsilon=epsilon, features=features
    )
    single_engine = make_engine(
        SQLiteEventLog(tmp_path / "b.sqlite"), epsilon=epsilon, features=features
    )
    if batch_builder:
        batch_engine.build_matrix = PairBuilder(batch_engine.catalog)
    requests = mixed_requests(customers)
    batch = batch_engine.decide_many(requests, trace=True, record=False)
    explored = 0
    for request, decision in zip(requests, batch, strict=True):
        alone = single_engine.decide_many([request], trace=True, record=False)[0]
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


def test_decision_table_holds_the_decisions_of_decide_many(tmp_path):
    customers = many_customers()
    engine = make_engine(
        SQLiteEventLog(tmp_path / "a.sqlite"),
        epsilon=0.3,
        features=DictFeatureSource({**CUSTOMERS, **customers}),
    )
    requests = mixed_requests(customers)
    decisions = engine.decide_many(requests, record=False)
    table = engine.decide_table(requests, record=False)
    assert len(table) == len(requests) and table.n_rows == sum(len(d.offers) for d in decisions)
    expected = [
        (
            d.customer_id,
            d.fallback,
            o.offer_id,
            o.rank,
            o.score,
            o.priority,
            o.propensity,
            o.explored,
        )
        for d in decisions
        for o in d.offers
    ]
    got = [
        (
            table.customer_id[i],
            bool(table.fallback[i]),
            table.offer_id[r],
            int(table.rank[r]),
            None if np.isnan(table.score[r]) else float(table.score[r]),
            float(table.priority[r]),
            float(table.propensity[r]),
            bool(table.explored[r]),
        )
        for r, i in enumerate(table.row_decision.tolist())
    ]
    assert got == expected
    assert table.cold_start.tolist() == [d.cold_start for d in decisions]
    assert table.channel == [d.channel for d in decisions]


def test_a_recorded_decision_table_is_in_the_log(log):
    engine = make_engine(log, epsilon=0.2)
    requests = [DecisionRequest(c, "email_weekly") for c in ("c1", "c2", "c3", "new-1")]
    table = engine.decide_table(requests)
    rows = sorted((r["decision_id"], r["offer_id"], r["position"]) for r in log.decision_rows())
    expected = sorted(
        (table.decision_id[i], table.offer_id[r], int(table.rank[r]))
        for r, i in enumerate(table.row_decision.tolist())
    )
    assert rows == expected and rows


def test_a_recorded_table_logs_the_rows_decide_many_logs(tmp_path):
    """Batch scoring records from the table: every logged column (but the new decision id)
    equals what the same requests decided one object at a time log, fallbacks included."""
    from types import MappingProxyType

    everything = tuple(o["offer_id"] for o in OFFERS if not o.get("fallback"))
    context = MappingProxyType({"campaign": "weekly", "segment": 3})
    requests = [DecisionRequest(c, "email_weekly", context=context) for c in ("c1", "c3")]
    requests += [
        DecisionRequest("new-1", "email_weekly"),
        DecisionRequest("c1", "web_home", exclude_offers=everything),  # the fallback offer
    ]
    logged = {}
    for name in ("table", "objects"):
        log = SQLiteEventLog(tmp_path / f"{name}.sqlite")
        engine = make_engine(log, epsilon=0.3)
        if name == "table":
            engine.decide_table(requests, now=NOW)
        else:
            engine.decide_many(requests, now=NOW)
        rows = [{k: v for k, v in r.items() if k != "decision_id"} for r in log.decision_rows()]
        logged[name] = sorted(
            rows, key=lambda r: (r["customer_id"], r["touchpoint_id"], r["position"])
        )
        log.close()
    assert logged["table"] == logged["objects"]
    assert any(r["fallback"] and r["score"] is None for r in logged["table"])
    assert any(r["context"] for r in logged["table"])


class ListBlock:
    """A ``CustomerBlock`` over dicts (the store's columnar block, without the store)."""

    def __init__(self, ids, vectors):
        self.ids = list(ids)
        self._vectors = list(vectors)

    def __len__(self):
        return len(self._vectors)

    def __getitem__(self, i):
        return self._vectors[i]

    def column(self, name, default=None):
        return [v.get(name, default) for v in self._vectors]

    def take(self, positions):
        positions = list(positions)
        return ListBlock([self.ids[i] for i in positions], [self._vectors[i] for i in positions])


class BlockFeatureSource(DictFeatureSource):
    """The factory store, also read as blocks (``get_block``), counting the block reads."""

    blocks_read: int = 0

    def get_block(self, customer_ids):
        self.blocks_read += 1
        vectors = self.get_many(customer_ids)
        return ListBlock(vectors, vectors.values())


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
def test_a_batch_read_as_columns_gives_the_same_decisions(tmp_path, epsilon):
    """Many customers are read as one block (eligibility and matrix by column): the decisions
    equal those of per-customer dicts, repeated customers and cold starts included."""
    customers = many_customers()
    vectors = {**CUSTOMERS, **customers}
    blocks = BlockFeatureSource(vectors)
    columnar = make_engine(SQLiteEventLog(tmp_path / "a.sqlite"), epsilon=epsilon, features=blocks)
    columnar.build_matrix = PairBuilder(columnar.catalog)
    by_dicts = make_engine(
        SQLiteEventLog(tmp_path / "b.sqlite"), epsilon=epsilon, features=DictFeatureSource(vectors)
    )
    by_dicts.build_matrix = PairBuilder(by_dicts.catalog)
    requests = mixed_requests(customers)
    assert len({r.customer_id for r in requests}) >= COLUMNAR_MIN_CUSTOMERS
    got = columnar.decide_many(requests, trace=True, record=False)
    expected = by_dicts.decide_many(requests, trace=True, record=False)
    assert blocks.blocks_read == 1
    for a, b in zip(got, expected, strict=True):
        assert served(a) == served(b)
        assert (a.fallback, a.cold_start, a.trace) == (b.fallback, b.cold_start, b.trace)
    assert any(d.cold_start for d in got) and any(d.fallback for d in got)
    assert any(not d.offers for d in got)  # no consent: nothing at all
    table = columnar.decide_table(requests, record=False)
    assert table.cold_start.tolist() == [d.cold_start for d in expected]
    assert table.offer_id.tolist() == [o.offer_id for d in expected for o in d.offers]
    # a few customers are still read as dicts
    columnar.decide_many(requests[:3], record=False)
    assert blocks.blocks_read == 2


@pytest.mark.parametrize("record", [False, True])
def test_decision_tables_of_chunks_equal_each_chunks_table(tmp_path, record):
    """``decide_tables`` (scoring chunk k while k + 1 is prepared, in dry runs) gives the
    tables ``decide_table`` gives each chunk, in order."""
    customers = many_customers()
    vectors = {**CUSTOMERS, **customers}
    requests = mixed_requests(customers)
    chunks = [requests[:70], [], requests[70:75], requests[75:]]
    piped = make_engine(
        SQLiteEventLog(tmp_path / "a.sqlite"), epsilon=0.3, features=BlockFeatureSource(vectors)
    )
    alone = make_engine(
        SQLiteEventLog(tmp_path / "b.sqlite"), epsilon=0.3, features=DictFeatureSource(vectors)
    )
    now = piped.clock()
    tables = list(piped.decide_tables(iter(chunks), now=now, record=record))
    assert len(tables) == len(chunks)
    for chunk, table in zip(chunks, tables, strict=True):
        expected = alone.decide_table(chunk, now=now, record=record)
        assert table.customer_id == expected.customer_id and table.ts == expected.ts
        for name in ("row_decision", "rank", "offer_id", "score", "priority", "propensity"):
            np.testing.assert_array_equal(getattr(table, name), getattr(expected, name))
        np.testing.assert_array_equal(table.explored, expected.explored)
        np.testing.assert_array_equal(table.fallback, expected.fallback)
        np.testing.assert_array_equal(table.cold_start, expected.cold_start)
    logged = piped.sink.counts()["decision_rows"]
    assert logged == (sum(t.n_rows for t in tables) if record else 0)


@pytest.mark.parametrize("n", [1, 3, 11, 12, 500])
def test_decision_ids_are_unique_time_ordered_uuid7(n):
    before_ms = time.time_ns() // 1_000_000
    ids = new_decision_ids(n)
    after_ms = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert len(set(ids)) == n and all(len(i) == 32 and i == i.lower() for i in ids)
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert all(before_ms <= u.int >> 80 <= after_ms for u in parsed)
