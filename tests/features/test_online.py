"""Online stores: offline/online parity, cold start, spec versions, incremental refresh."""

from __future__ import annotations

import sqlite3
from datetime import timedelta as td

import orjson
import pandas as pd
import pytest

from features.engines import ibis_backend
from features.matrix import AS_OF_KEY, SPEC_KEY, STATS_KEY
from features.online import (
    OnlineStore,
    SQLiteOnlineStore,
    changed_customers,
    cold_start,
    materialize,
    open_online_store,
    refresh,
    vectors_as_of,
)
from features.pipeline import customer_features
from features.spec import FEATURE_SPEC_VERSION
from recsys.errors import ConfigError, SpecMismatchError
from recsys.settings import Settings
from tests.features.conftest import T0, reader_expecting


def test_online_vectors_equal_the_offline_features(story, store):
    assert isinstance(store, OnlineStore)
    assert materialize(story.con, store, as_of=T0) == 3
    offline = customer_features(story.con, T0)
    online = store.get_many(list(offline.customer_id))
    for row in offline.to_dict("records"):
        vector = online[row["customer_id"]]
        assert vector[SPEC_KEY] == FEATURE_SPEC_VERSION
        assert vector[AS_OF_KEY] == T0.isoformat()
        for name, value in row.items():
            if name == "customer_id":
                continue
            if pd.isna(value):
                assert vector[name] is None, name
            else:
                assert (
                    vector[name] == pytest.approx(value)
                    if isinstance(value, float)
                    else vector[name] == value
                ), name
    c1 = online["c1"][STATS_KEY]
    by_category = dict(zip(c1["category"]["keys"], c1["category"]["values"], strict=True))
    assert by_category == {"bags": [30.0, 1.0], "shoes": [50.0, 1.0]}
    assert c1["offer"]["keys"] == ["o1"]


def test_unknown_customer_gets_the_cold_start_vector(story, store):
    materialize(story.con, store, as_of=T0)
    vectors = store.get_many(["c1", "nobody", "c1"])
    assert list(vectors) == ["c1", "nobody"]
    assert vectors["nobody"] == cold_start()
    assert vectors["nobody"]["journey_stage"] == "awareness"
    assert vectors["nobody"]["purch_days_since_last"] == 365.0


def test_store_refuses_vectors_of_another_spec(story, store, tmp_path):
    materialize(story.con, store, as_of=T0)
    reader = reader_expecting(store, "newer0spec")
    with pytest.raises(
        SpecMismatchError,
        match=f"holds vectors of feature spec {FEATURE_SPEC_VERSION}, this code "
        "expects spec newer0spec; run `recsys features materialize`",
    ):
        reader.get_many(["c1"])
    with pytest.raises(SpecMismatchError, match="holds vectors of feature spec"):
        store.write([("c9", {SPEC_KEY: "other"})], "other")
    reader.close() if isinstance(reader, SQLiteOnlineStore) else None


def test_full_materialisation_replaces_the_store(story, store):
    store.write([("gone", {**cold_start(), "purch_count_30d": 5.0})], FEATURE_SPEC_VERSION)
    materialize(story.con, store, as_of=T0)
    assert store.get_many(["gone"])["gone"] == cold_start()
    assert store.spec_version() == FEATURE_SPEC_VERSION
    assert store.last_as_of() == T0


def test_incremental_refresh_touches_only_changed_customers(story, store):
    materialize(story.con, store, as_of=T0)
    story.purchase("c2", T0 + td(hours=1), 12.0, category="toys")
    later = T0 + td(hours=2)
    assert changed_customers(story.con, T0, later) == ["c1", "c2"]  # c1: its T0 purchase
    assert refresh(story.con, store, as_of=later) == 2
    vectors = store.get_many(["c1", "c2", "c3"])
    assert vectors["c2"]["purch_amount_30d"] == 12.0
    assert vectors["c2"][AS_OF_KEY] == later.isoformat()
    assert vectors["c1"]["purch_amount_30d"] == 50.0 + 999.0
    assert vectors["c3"][AS_OF_KEY] == T0.isoformat()  # untouched
    assert store.last_as_of() == later


def test_refresh_notices_events_leaving_a_window(story, store):
    materialize(story.con, store, as_of=T0)
    # c1's purchase 2 days before T0 leaves the 7-day span after 5 days; 28 days: the 30-day
    later = T0 + td(days=29)
    assert "c1" in changed_customers(story.con, T0 + td(days=27), later)
    assert "c3" not in changed_customers(story.con, T0 + td(days=27), later)


def test_open_online_store_follows_settings(tmp_path):
    s = open_online_store(Settings(online_store="sqlite", online_sqlite_path=tmp_path / "x.sqlite"))
    assert isinstance(s, SQLiteOnlineStore)
    s.close()
    with pytest.raises(ConfigError, match="`online_store` must be one of"):
        open_online_store(Settings.model_construct(online_store="memcached"))


def _normalised(vector: bytes) -> dict:
    data = orjson.loads(vector)
    data[STATS_KEY] = {
        name: sorted(zip(t["keys"], t["values"], strict=True))
        for name, t in data[STATS_KEY].items()
    }
    return data


def test_vectors_assembled_in_the_warehouse_equal_collected_ones(story):
    """The DuckDB path (temporary tables in the warehouse) and the any-engine path (collect,
    assemble locally, as for Spark) build the same vectors, sorted by customer id."""
    story.purchase("c2", T0 - td(days=1), 5.0, category="toys")
    layout, in_warehouse = vectors_as_of(story.con, T0)
    layout2, collected = vectors_as_of(ibis_backend(story.con), T0)
    assert layout == layout2
    a, b = list(in_warehouse), list(collected)
    assert [cid for cid, _ in a] == [cid for cid, _ in b] == ["c1", "c2", "c3"]
    for (_, va), (_, vb) in zip(a, b, strict=True):
        assert _normalised(va) == _normalised(vb)
    leftovers = story.con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name LIKE 'recsys_mat_%'"
    ).fetchall()
    assert leftovers == [(0,)]


def test_full_materialisation_upgrades_an_old_store_table(story, tmp_path):
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE vectors (customer_id TEXT PRIMARY KEY, spec_version TEXT NOT NULL, "
        "vector BLOB NOT NULL) WITHOUT ROWID"
    )
    old.commit()
    old.close()
    store = SQLiteOnlineStore(path)
    store.write([("gone", cold_start())], FEATURE_SPEC_VERSION)
    assert materialize(story.con, store, as_of=T0) == 3
    ddl = store._con.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchall()
    assert "WITHOUT ROWID" not in ddl[0][0]
    assert store.count() == 3 and store.get_many(["gone"])["gone"] == cold_start()
    assert store.get_many(["c1"])["c1"]["purch_amount_30d"] == 50.0
    store.close()
