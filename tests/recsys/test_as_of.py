"""The time features and batch decisions are computed as of, when none is given."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from typer.testing import CliRunner

from recsys import warehouse
from recsys.cli import app
from recsys.warehouse import default_as_of, latest_event_time
from tests.features.conftest import Warehouse, build_story

NOW = datetime(2026, 12, 7, 12, 0)


def _purchase_at(ts: datetime):
    con = warehouse.connect(":memory:")
    con.execute(
        "INSERT INTO transactions (transaction_id, customer_id, ts, amount) VALUES (?, ?, ?, ?)",
        ["t1", "c1", ts, 10.0],
    )
    return con


def test_a_history_that_ended_a_year_ago_sets_the_time_to_just_after_its_last_event():
    last = NOW - timedelta(days=365)
    as_of = default_as_of(_purchase_at(last), NOW)
    assert as_of.ts == last + timedelta(seconds=1)
    assert as_of.note is not None and "365 days old" in as_of.note and "--as-of" in as_of.note


def test_a_current_history_or_an_empty_warehouse_means_now():
    assert default_as_of(_purchase_at(NOW - timedelta(hours=3)), NOW).ts == NOW
    assert default_as_of(_purchase_at(NOW - timedelta(hours=3)), NOW).note is None
    empty = warehouse.connect(":memory:")
    assert latest_event_time(empty) is None
    assert default_as_of(empty, NOW).ts == NOW


def test_materialize_without_as_of_on_an_old_history_says_so_and_writes_real_vectors(
    tmp_path, monkeypatch
):
    db = tmp_path / "warehouse.duckdb"
    story = build_story(Warehouse(str(db)))
    latest = latest_event_time(story.con)
    story.con.close()
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(tmp_path / "online.sqlite"))
    monkeypatch.setenv("RECSYS_ONLINE_STORE", "sqlite")
    runner = CliRunner()

    result = runner.invoke(app, ["features", "materialize", "--db", str(db)])

    assert result.exit_code == 0, result.output
    expected = latest + timedelta(seconds=1)
    assert f"as of {expected.isoformat()}: the warehouse's last event is" in result.output
    row = json.loads(runner.invoke(app, ["features", "get", "c1"]).output)
    assert row["as_of"] == expected.isoformat() and row["cold_start"] is False
    assert row["purch_count_365d"] > 0


def test_an_incremental_refresh_after_the_history_stalled_never_goes_back_in_time(
    tmp_path, monkeypatch
):
    db = tmp_path / "warehouse.duckdb"
    build_story(Warehouse(str(db))).con.close()
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(tmp_path / "online.sqlite"))
    monkeypatch.setenv("RECSYS_ONLINE_STORE", "sqlite")
    runner = CliRunner()
    later = "2026-12-06T00:00:00"  # a run while the data was fresh, long after its last event
    first = runner.invoke(app, ["features", "materialize", "--db", str(db), "--as-of", later])
    assert first.exit_code == 0, first.output

    result = runner.invoke(app, ["features", "materialize", "--db", str(db), "--incremental"])

    assert result.exit_code == 0, result.output
    assert f"as of {later}" in result.output
    row = json.loads(runner.invoke(app, ["features", "get", "c1"]).output)
    assert row["as_of"] == later
