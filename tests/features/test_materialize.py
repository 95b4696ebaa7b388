"""Materialisation on DuckDB: temporary tables gone afterwards, customer-id ranges equal one
pass, and a full run replaces a SQLite store only once all its vectors are written."""

from __future__ import annotations

import itertools
from datetime import timedelta as td

import orjson
import pytest

from features.online import SQLiteOnlineStore, describe_row, id_ranges, materialize
from features.online import materialization as materialize_module
from features.online.base import STATS_KEY
from features.pipeline import customer_features
from features.spec import FEATURE_SPEC_VERSION
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
    vector = describe_row(store.read_block(["c1"]), 0)
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


# --- customer-id ranges --------------------------------------------------------------------


def _rows(store: SQLiteOnlineStore) -> list[tuple[str, dict]]:
    """Every stored vector (customer id order), statistics keys sorted."""
    rows = store._con.execute("SELECT customer_id, vector FROM vectors ORDER BY rowid").fetchall()
    out = []
    for cid, raw in rows:
        vector = orjson.loads(raw)
        vector[STATS_KEY] = {
            name: sorted(zip(table["keys"], table["values"], strict=True))
            for name, table in vector[STATS_KEY].items()
        }
        out.append((cid, vector))
    return out


def _tables(store: SQLiteOnlineStore) -> set[str]:
    rows = store._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def _richer_story(story):
    """The story with more customers, so that ranges hold several of them."""
    for i in range(4, 12):
        story.customer(f"c{i}", created_at=T0 - td(days=30 * i), region="east")
        story.purchase(f"c{i}", T0 - td(days=i), 10.0 * i, category="toys" if i % 2 else "bags")
        story.decision(f"d{i}", T0 - td(days=i, hours=1), "web_home", "o2", f"c{i}")
        if i % 3 == 0:
            story.outcome(f"d{i}", "o2", T0 - td(days=i), "accept", 1.0)
    return story


def test_id_ranges_cover_every_customer_once(story):
    _richer_story(story)
    assert id_ranges(story.con, range_customers=100) == [(None, None)]
    ranges = id_ranges(story.con, range_customers=3)
    assert len(ranges) == 4 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(ranges))
    ids = [cid for (cid,) in story.con.execute("SELECT customer_id FROM customers").fetchall()]
    for cid in ids:
        inside = [
            (lo, hi) for lo, hi in ranges if (lo is None or cid >= lo) and (hi is None or cid < hi)
        ]
        assert len(inside) == 1, cid


@pytest.mark.parametrize("range_customers", [1, 2, 5])
def test_ranges_store_what_one_pass_stores(story, tmp_path, range_customers):
    _richer_story(story)
    one = SQLiteOnlineStore(tmp_path / "one.sqlite")
    ranged = SQLiteOnlineStore(tmp_path / "ranged.sqlite")
    assert materialize(story.con, one, as_of=T0, range_customers=10**6) == 11
    assert materialize(story.con, ranged, as_of=T0, range_customers=range_customers) == 11
    assert _rows(ranged) == _rows(one)
    assert [cid for cid, _ in _rows(ranged)] == sorted(f"c{i}" for i in range(1, 12))
    assert ranged.layout() == one.layout() and ranged.last_as_of() == one.last_as_of() == T0
    assert _temporary_tables(story.con) == []
    one.close()
    ranged.close()


def test_a_failure_in_a_later_range_keeps_the_old_store(story, tmp_path, monkeypatch):
    _richer_story(story)
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(story.con, store, as_of=T0 - td(days=1), range_customers=4)
    before = _rows(store)
    calls = []
    real = materialize_module._range_vectors

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("range 3 failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(materialize_module, "_range_vectors", failing)
    with pytest.raises(RuntimeError, match="range 3 failed"):
        materialize(story.con, store, as_of=T0, range_customers=2)
    assert len(calls) == 3
    assert _rows(store) == before
    assert store.last_as_of() == T0 - td(days=1)
    assert _tables(store) == {"vectors", "meta"}
    assert _temporary_tables(story.con) == []
    reader = SQLiteOnlineStore(store.path)
    assert _rows(reader) == before
    reader.close()
    store.close()


def test_readers_see_the_old_vectors_until_the_replacement_commits(tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.write([("a", {}), ("b", {})], FEATURE_SPEC_VERSION, replace=True)
    reader = SQLiteOnlineStore(store.path)
    seen = []

    def vectors():
        for i in range(5):
            yield f"n{i}", {"purch_count_30d": float(i)}
            seen.append((reader.count(), tuple(sorted(reader._raw(["a", "b", "n0", "n1"])))))

    assert store.write(vectors(), FEATURE_SPEC_VERSION, replace=True, as_of=T0) == 5
    assert set(seen) == {(2, ("a", "b"))}
    assert reader.count() == 5 and reader.last_as_of() == T0
    assert describe_row(reader.read_block(["n3"]), 0)["purch_count_30d"] == 3.0
    assert reader.read_block(["a"]).cold_start.tolist() == [True]  # gone: cold start
    reader.close()
    store.close()
