"""Materialisation on DuckDB: the temporary tables it works with are gone afterwards."""

from __future__ import annotations

from datetime import timedelta as td

import pytest

from features.online import SQLiteOnlineStore, materialize
from features.pipeline import customer_features
from recsys.errors import SpecMismatchError
from tests.features.conftest import T0


def _temporary_tables(con) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    return [name for (name,) in rows]


def test_full_and_partial_runs_leave_no_temporary_tables(story, tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    assert materialize(story.con, store, as_of=T0) == 3  # full: shares one offer-log table
    assert _temporary_tables(story.con) == []
    assert materialize(story.con, store, as_of=T0, customer_ids=["c1"]) == 1
    assert _temporary_tables(story.con) == []
    store.close()


def test_vectors_use_only_the_offer_log_of_the_window(story, tmp_path):
    """The shared offer-log table of a full run holds [as_of - horizon, as_of): a decision at
    as_of itself, or older than the horizon, is not history."""
    story.decision("late", T0, "web_home", "o1", "c1")
    story.decision("old", T0 - td(days=400), "web_home", "o1", "c1")
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(story.con, store, as_of=T0)
    offline = customer_features(story.con, T0, customer_ids=["c1"]).iloc[0]
    vector = store.get_many(["c1"])["c1"]
    assert vector["hist_impressions_365d"] == offline["hist_impressions_365d"] == 1.0  # d1
    assert vector["hist_days_since_impression"] == offline["hist_days_since_impression"] == 10.0
    store.close()


def test_a_refused_partial_run_leaves_no_temporary_tables(story, tmp_path):
    """The vectors are computed while the store prepares; when it refuses the write (another
    spec), the computation is stopped and cleaned up."""
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(story.con, store, as_of=T0)
    store._set_meta("spec_version", "another-spec")
    store._con.commit()
    with pytest.raises(SpecMismatchError, match="feature spec another-spec"):
        materialize(story.con, store, as_of=T0, customer_ids=["c1"])
    assert _temporary_tables(story.con) == []
    store.close()
