"""The event log: durable, idempotent events; contact history; export to the contract."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pandas as pd
import pytest

from recsys.decision import DecisionRequest
from recsys.errors import ConfigError, EventLogUnavailable
from recsys.eventlog import Event, EventType, SQLiteEventLog, export_contract, open_event_log
from tests.recsys.factories import NOW, decide, decide_many, make_pipeline


@pytest.fixture
def served(tmp_path):
    """A log with two decisions served; returns (path, log, decisions)."""
    path = tmp_path / "events.sqlite"
    log = SQLiteEventLog(path)
    engine = make_pipeline(log)
    decisions = [
        decide(engine, DecisionRequest("c1", "web_home", limit=2)),
        decide(engine, DecisionRequest("unknown-7", "app_home")),
    ]
    yield path, log, decisions
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
    _, log, (d1, _) = served
    first = log.record_events([event("e1", d1), event("e2", d1, EventType.ACCEPT)])
    again = log.record_events([event("e1", d1), event("e3", d1, EventType.CONVERT, revenue=9.5)])
    assert (first.new, first.duplicates) == (("e1", "e2"), ())
    assert (again.new, again.duplicates) == (("e3",), ("e1",))
    assert log.counts()["events"] == 3


def test_events_survive_a_new_connection_on_the_same_file(served):
    path, log, (d1, _) = served
    log.record_events([event("e1", d1)])
    log.close()
    reopened = SQLiteEventLog(path)
    assert reopened.event_ids() == {"e1"}
    # and a raw reader (another process) sees the committed row
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    con.close()
    reopened.close()


def test_unknown_decision_is_rejected_per_event_and_the_rest_stored(served):
    _, log, (d1, _) = served
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
    assert result.rejected[0].received == "no-such-decision"
    assert log.event_ids() == {"e1"}


def test_contact_history_counts_every_channel_and_acceptances(served):
    _, log, (d1, _) = served
    log.record_events([event("e1", d1, EventType.ACCEPT)])
    history = log.contact_history(["c1", "nobody"], NOW - timedelta(days=7))
    assert set(history) == {"c1"}
    assert set(history["c1"].contacts) == {o.offer_id for o in d1.offers}
    assert history["c1"].accepted == {d1.offers[0].offer_id}
    assert log.contact_history(["c1"], NOW + timedelta(seconds=1))["c1"].contacts == {}


def test_export_writes_contract_files_that_the_loader_reads(served, tmp_path):
    _, log, (d1, d2) = served
    log.record_events(
        [event("e1", d1, EventType.ACCEPT, revenue=12.0), event("e2", d1, EventType.IMPRESSION)]
    )
    summary = export_contract(log, tmp_path / "out", known_customers={"c1"})
    decisions = pd.read_parquet(summary.decisions_path)
    outcomes = pd.read_parquet(summary.outcomes_path)
    assert len(decisions) == len(d1.offers) + len(d2.offers)
    assert list(decisions.columns) == [
        "decision_id",
        "ts",
        "touchpoint_id",
        "offer_id",
        "customer_id",
        "position",
        "propensity",
        "policy",
        "context",
        "experiment_id",
        "arm",
        "unit_id",
    ]
    # the unknown customer's decision is exported as anonymous (the warehouse lacks it)
    assert decisions.loc[decisions.decision_id == d2.decision_id, "customer_id"].isna().all()
    assert summary.anonymised_customers == 1
    # impressions are the decisions themselves; outcomes hold the rest
    assert outcomes[["outcome", "revenue"]].values.tolist() == [["accept", 12.0]]


def test_wal_mode_and_url_registry(tmp_path):
    log = open_event_log(f"sqlite:///{tmp_path}/x.sqlite")
    assert isinstance(log, SQLiteEventLog)
    con = sqlite3.connect(tmp_path / "x.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    log.close()
    with pytest.raises(
        ConfigError, match="scheme must be one of postgres, postgresql, sqlite, got 'mysql://x'"
    ):
        open_event_log("mysql://x")


def test_exported_log_loads_into_the_warehouse_idempotently(served, tmp_path):
    """Closed loop, data half: what was served and its outcomes reach the warehouse."""
    import yaml

    from recsys import warehouse
    from recsys.loading import load_directory
    from tests.serving.factories import OFFERS, TOUCHPOINTS

    _, log, (d1, _) = served
    log.record_events([event("e1", d1, EventType.ACCEPT)])
    base = tmp_path / "base"
    base.mkdir()
    (base / "offers.yaml").write_text(yaml.safe_dump(OFFERS))
    (base / "touchpoints.yaml").write_text(yaml.safe_dump(TOUCHPOINTS))
    (base / "customers.csv").write_text("customer_id,email_opt_in\nc1,true\nc2,false\nc3,true\n")
    con = warehouse.connect(":memory:")
    load_directory(base, con)
    known = {r[0] for r in con.execute("SELECT customer_id FROM customers").fetchall()}
    export_contract(log, tmp_path / "loop", known_customers=known)
    load_directory(tmp_path / "loop", con)
    load_directory(tmp_path / "loop", con)  # loading again adds nothing
    n_decisions = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
    outcomes = con.execute("SELECT decision_id, outcome FROM outcomes").fetchall()
    assert n_decisions == log.counts()["decision_rows"]
    assert outcomes == [(d1.decision_id, "accept")]


def test_concurrent_writers_on_one_file_store_each_event_once(served):
    """Two connections (as two service workers) racing on the same event ids."""
    from concurrent.futures import ThreadPoolExecutor

    path, log, (d1, _) = served
    other = SQLiteEventLog(path)
    ids = [f"e{i}" for i in range(200)]

    def post(target, chunk):
        return target.record_events([event(i, d1) for i in chunk])

    jobs = [
        (log if k % 2 else other, ids[start : start + 50])
        for k, start in enumerate([0, 25, 50, 75, 100, 125, 150, 0, 100, 150])
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: post(*job), jobs))
    other.close()
    new = [e for r in results for e in r.new]
    assert sorted(new) == sorted(set(ids))  # every id acknowledged as new exactly once
    assert log.event_ids() == set(ids)
    assert sum(len(r.new) + len(r.duplicates) for r in results) == sum(len(c) for _, c in jobs)


def test_writers_wait_for_the_write_lock_of_another_process_and_then_commit(tmp_path):
    """Another process holding the log's write lock delays a write; it never fails it."""
    import fcntl
    import threading

    log = SQLiteEventLog(tmp_path / "events.sqlite")
    engine = make_pipeline(log)
    decision = decide_many(engine, [DecisionRequest("C1", "web_home")], record=False)[0]
    with open(tmp_path / "events.sqlite.lock", "a+b") as other:  # another open = another owner
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=log.record_decisions, args=([decision],))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the write went ahead while another writer held the lock"
        assert log.counts()["decision_rows"] == 0  # readers are not blocked meanwhile
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    writer.join(10)
    assert not writer.is_alive()
    assert log.counts()["decision_rows"] == len(decision.offers)
    log.close()


def test_background_checkpoints_keep_commits_appending_and_empty_the_wal(tmp_path):
    """With checkpoints in the background no commit checkpoints (the WAL grows past SQLite's
    1000-page auto-checkpoint); the thread's checkpoint moves every committed page over."""
    path = tmp_path / "events.sqlite"
    log = SQLiteEventLog(path)
    log.checkpoint_in_background(every_s=3600)  # the thread waits; checkpoint() by hand
    engine = make_pipeline(log)
    wal = tmp_path / "events.sqlite-wal"
    raw = sqlite3.connect(path)
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    batch = [DecisionRequest(f"c{i}", "web_home", limit=2) for i in range(500)]
    for _ in range(20):  # ~250 pages per batch: far past 1000 pages unless commits checkpoint
        decide_many(engine, batch)
    assert wal.stat().st_size > 4000 * page_size
    rows = log.counts()["decision_rows"]
    busy, frames, copied = log.checkpoint()
    assert busy == 0
    assert frames > 4000  # an auto-checkpointed WAL holds ~1000 pages + one commit
    assert copied == frames  # every committed page is now in the database file
    log.close()
    # the database file alone holds every row (no WAL left to replay)
    wal.unlink(missing_ok=True)
    (tmp_path / "events.sqlite-shm").unlink(missing_ok=True)
    reopened = SQLiteEventLog(path)
    assert reopened.counts()["decision_rows"] == rows
    reopened.close()


def test_cap_checks_at_write_time_count_every_customer_of_a_large_batch(tmp_path):
    """Write-time cap counts are batched (several queries past 300 probes): customers with
    two logged contacts of a 2-per-7-days offer are refused, the others stored."""
    from dataclasses import replace

    log = SQLiteEventLog(tmp_path / "events.sqlite")
    engine = make_pipeline(log)
    template = decide_many(engine, [DecisionRequest("c1", "web_home", limit=3)], record=False)[0]
    assert "o_capped" in [o.offer_id for o in template.offers]
    ids = iter(range(10_000))

    def copy(customer):
        return replace(template, decision_id=f"d{next(ids)}", customer_id=customer)

    seen = [f"seen{i}" for i in range(350)]
    fresh = [f"fresh{i}" for i in range(350)]
    log.record_decisions([copy(c) for c in seen for _ in range(2)])
    batch = [copy(c) for c in seen + fresh]
    refused = log.record_decisions_within_caps(batch, {"o_capped": (2, 7)})
    assert refused == {d.decision_id for d in batch[:350]}
    stored = {r["decision_id"] for r in log.decision_rows()}
    assert {d.decision_id for d in batch[350:]} <= stored
    assert not refused & stored
    log.close()


# --------------------------------------------------------------- faults: classify and heal


def test_tables_dropped_under_the_log_are_created_again(served):
    path, log, (d1, _) = served
    other = sqlite3.connect(path)
    other.executescript("DROP TABLE events; DROP TABLE decisions;")
    other.close()
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_events([event("e1", d1)])
    assert refused.value.kind == "schema_missing"
    assert refused.value.retry_after == 1.0
    engine = make_pipeline(log)
    fresh = decide(engine, DecisionRequest("c1", "web_home"))
    assert log.record_events([event("e2", fresh)]).new == ("e2",)
    log.ping()


def test_ping_recreates_missing_tables(served):
    path, log, _ = served
    other = sqlite3.connect(path)
    other.execute("DROP TABLE events")
    other.close()
    log.ping()
    assert log.counts()["events"] == 0


def test_a_deleted_file_is_opened_again(served):
    path, log, _ = served
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    log.ping()  # notices, opens the new file, creates the tables
    engine = make_pipeline(log)
    fresh = decide(engine, DecisionRequest("c1", "web_home"))
    assert log.record_events([event("e9", fresh)]).new == ("e9",)
    other = sqlite3.connect(path)
    assert other.execute("SELECT event_id FROM events").fetchall() == [("e9",)]
    other.close()


def test_a_constraint_violation_is_classified(served):
    _, log, (d1, _) = served
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_decisions([d1])  # already stored: primary key (decision_id, offer_id)
    assert refused.value.kind == "constraint"
    assert "constraint" in refused.value.message


def test_a_read_only_file_is_classified_and_reopened(tmp_path):
    path = tmp_path / "events.sqlite"
    log = SQLiteEventLog(path)
    engine = make_pipeline(log)
    decision = decide(engine, DecisionRequest("c1", "web_home"))
    log.close()
    # Another process holds the file read-only: a second log opened with immutable=... is
    # not our code; a read-only connection of our log is what a read-only mount gives.
    log = SQLiteEventLog(path)
    log._con.close()
    log._con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)  # fmt: skip
    with pytest.raises(EventLogUnavailable) as refused:
        log.record_events([event("e1", decision)])
    assert refused.value.kind == "read_only"
    # the log opened the file again: writable now
    assert log.record_events([event("e1", decision)]).new == ("e1",)
    log.ping()
    log.close()
