"""The PostgreSQL event log on the real server (127.0.0.1:5432, db `test`, own schema)."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pandas as pd
import psycopg
import pytest

from recsys.decision import DecisionRequest
from recsys.errors import ConfigError, DataError, EventLogUnavailable
from recsys.eventlog import Event, EventType, export_contract
from recsys.eventlog_postgres import PostgresEventLog, parse_url
from tests.recsys.factories import NOW, decide, decide_many, make_pipeline

PG = "postgresql://127.0.0.1:5432/test"


@pytest.fixture
def schema():
    name = f"recsys_test_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def served(schema):
    log = PostgresEventLog.from_url(f"{PG}?schema={schema}")
    engine = make_pipeline(log)
    decisions = [
        decide(engine, DecisionRequest("c1", "web_home", limit=2)),
        decide(engine, DecisionRequest("unknown-7", "app_home")),
    ]
    yield log, decisions
    log.close()


def event(event_id, decision, kind=EventType.CLICK, offer=None, minutes=1, revenue=None):
    return Event(
        event_id,
        decision.decision_id,
        offer or decision.offers[0].offer_id,
        kind,
        NOW + timedelta(minutes=minutes),
        revenue,
    )


def test_same_event_id_is_stored_once(served):
    log, (d1, _) = served
    first = log.record_events([event("e1", d1), event("e2", d1, EventType.ACCEPT)])
    again = log.record_events([event("e1", d1), event("e3", d1, EventType.CONVERT, revenue=9.5)])
    assert (first.new, first.duplicates) == (("e1", "e2"), ())
    assert (again.new, again.duplicates) == (("e3",), ("e1",))
    assert log.counts() == {"decision_rows": 3, "decisions_without_offers": 0, "events": 3}


def test_committed_events_are_seen_by_a_new_connection(served, schema):
    log, (d1, _) = served
    log.record_events([event("e1", d1)])
    other = PostgresEventLog.from_url(f"{PG}?schema={schema}")  # schema exists: no-op create
    assert other.event_ids() == {"e1"}
    other.close()


def test_unknown_decision_is_rejected_per_event_and_the_rest_stored(served):
    log, (d1, _) = served
    bad = Event("e2", "no-such-decision", "o_tv", EventType.CLICK, NOW)
    wrong_offer = event("e3", d1, offer="o_not_served")
    early = event("e4", d1, minutes=-60)
    result = log.record_events([event("e1", d1), bad, wrong_offer, early])
    assert result.new == ("e1",)
    assert [(r.index, r.field) for r in result.rejected] == [
        (1, "decision_id"),
        (2, "offer_id"),
        (3, "ts"),
    ]
    assert log.event_ids() == {"e1"}


def test_contact_history_counts_every_channel_and_acceptances(served):
    log, (d1, _) = served
    log.record_events([event("e1", d1, EventType.ACCEPT)])
    history = log.contact_history(["c1", "nobody"], NOW - timedelta(days=7))
    assert set(history) == {"c1"}
    assert set(history["c1"].contacts) == {o.offer_id for o in d1.offers}
    assert history["c1"].accepted == {d1.offers[0].offer_id}
    assert log.contact_history(["c1"], NOW + timedelta(seconds=1))["c1"].contacts == {}


def test_concurrent_writers_store_each_event_once(served, schema):
    """Two logs (as two replicas) racing on the same event ids."""
    log, (d1, _) = served
    other = PostgresEventLog.from_url(f"{PG}?schema={schema}")
    ids = [f"e{i}" for i in range(200)]
    jobs = [
        (log if k % 2 else other, ids[start : start + 50])
        for k, start in enumerate([0, 25, 50, 75, 100, 125, 150, 0, 100, 150])
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda job: job[0].record_events([event(i, d1) for i in job[1]]), jobs)
        )
    other.close()
    new = [e for r in results for e in r.new]
    assert sorted(new) == sorted(set(ids))
    assert log.event_ids() == set(ids)


def test_a_batch_is_all_or_nothing(served):
    log, (d1, _) = served
    with pytest.raises(DataError, match="event_id"):
        log.record_events([event("ok-1", d1), event("bad\x00id", d1)])
    assert log.event_ids() == set()


def test_export_matches_the_sqlite_contract(served, tmp_path):
    log, (d1, d2) = served
    log.record_events([event("e1", d1, EventType.ACCEPT, revenue=12.0)])
    summary = export_contract(log, tmp_path / "out", known_customers={"c1"})
    decisions = pd.read_parquet(summary.decisions_path)
    outcomes = pd.read_parquet(summary.outcomes_path)
    assert len(decisions) == len(d1.offers) + len(d2.offers)
    assert outcomes[["outcome", "revenue"]].values.tolist() == [["accept", 12.0]]


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://x/db", "must start with postgresql"),
        (f"{PG}?schema=bad-name;drop", "schema must be letters"),
    ],
)
def test_bad_urls_are_refused(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_url(url)


def test_url_schema_and_driver_suffix():
    conninfo, schema = parse_url("postgresql+psycopg://u@h:5432/db?schema=s1&sslmode=disable")
    assert schema == "s1" and conninfo == "postgresql://u@h:5432/db?sslmode=disable"


def test_contact_caps_hold_across_replicas_racing(served, schema):
    """Decisions made on stale history by four 'replicas' at once: the cap still holds."""
    log, _ = served
    engine = make_pipeline(log)
    decisions = [
        decide_many(engine, [DecisionRequest("c3", "web_home", limit=2)], record=False)[0]
        for _ in range(4)
    ]
    assert all("o_capped" in {o.offer_id for o in d.offers} for d in decisions)
    caps = {"o_capped": (2, 7)}
    logs = [PostgresEventLog.from_url(f"{PG}?schema={schema}") for _ in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        refused = list(
            pool.map(
                lambda pair: pair[0].record_decisions_within_caps([pair[1]], caps),
                zip(logs, decisions, strict=True),
            )
        )
    for other in logs:
        other.close()
    assert sum(len(r) for r in refused) == 2  # two of the four lost the race
    history = log.contact_history(["c3"], NOW - timedelta(days=7))
    assert len(history["c3"].contacts["o_capped"]) == 2


# --------------------------------------------------------------- faults: classify and heal


def test_read_only_sessions_are_dropped_from_the_pool(served):
    log, (d1, _) = served
    # A pooled session that went read-only (ALTER DATABASE ... SET
    # default_transaction_read_only: sessions keep the default they started with).
    with log._connection() as con:
        con.execute("SET default_transaction_read_only = on")
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_events([event("e1", d1)])
    assert refused.value.kind == "read_only"
    assert log.record_events([event("e1", d1)]).new == ("e1",)  # a new, writable session


def test_ping_reports_a_read_only_session_and_drops_it(served):
    log, _ = served
    with log._connection() as con:
        con.execute("SET default_transaction_read_only = on")
    with pytest.raises(EventLogUnavailable, match="read-only") as refused:
        log.ping()
    assert refused.value.kind == "read_only"
    log.ping()


def test_dropped_tables_are_created_again(served, schema):
    log, (d1, _) = served
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP TABLE "{schema}".events, "{schema}".decisions')
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_events([event("e1", d1)])
    assert refused.value.kind == "schema_missing"
    log.ping()
    engine = make_pipeline(log)
    fresh = decide(engine, DecisionRequest("c1", "web_home"))
    assert log.record_events([event("e2", fresh)]).new == ("e2",)


def test_ping_recreates_a_dropped_schema(served, schema):
    log, _ = served
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
    with pytest.raises(EventLogUnavailable) as refused:
        log.ping()
    assert refused.value.kind == "schema_missing"
    log.ping()
    assert log.counts() == {"decision_rows": 0, "decisions_without_offers": 0, "events": 0}


def test_lost_connections_are_replaced(served):
    log, (d1, _) = served
    with log._connection() as con:
        pid = con.info.backend_pid
    with psycopg.connect(PG, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_events([event("e1", d1)])
    assert refused.value.kind == "unavailable"
    assert log.record_events([event("e1", d1)]).new == ("e1",)


def test_a_constraint_violation_is_classified(served):
    log, (d1, _) = served
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_decisions([d1])
    assert refused.value.kind == "constraint"
