"""Online stores: offline/online parity, cold start, spec versions, incremental refresh."""

from __future__ import annotations

import sqlite3
from datetime import timedelta as td

import numpy as np
import orjson
import pandas as pd
import pytest

from features.engines import ibis_backend
from features.online import (
    SQLiteOnlineStore,
    changed_customers,
    describe_row,
    materialize,
    open_online_store,
    refresh,
    vectors_as_of,
)
from features.online.base import STATS_KEY
from features.pipeline import customer_features
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import cold_start_vector
from recsys.errors import ConfigError, SpecMismatchError
from recsys.settings import Settings
from tests.features.conftest import T0, reader_expecting


def _rows(store, ids) -> dict[str, dict]:
    block = store.read_block(ids)
    return {cid: describe_row(block, i) for i, cid in enumerate(block.ids)}


def test_online_features_equal_the_offline_features(story, store):
    assert materialize(story.con, store, as_of=T0) == 3
    offline = customer_features(story.con, T0)
    online = _rows(store, list(offline.customer_id))
    for row in offline.to_dict("records"):
        got = online[row["customer_id"]]
        assert got["spec_version"] == FEATURE_SPEC_VERSION
        assert got["as_of"] == T0.isoformat() and got["cold_start"] is False
        for name, value in row.items():
            if name == "customer_id":
                continue
            if pd.isna(value):
                assert got[name] is None, name
            else:
                assert got[name] == (pytest.approx(value) if isinstance(value, float) else value), (
                    name
                )
    c1 = online["c1"]["stats"]
    assert c1["category"] == {"bags": [30.0, 1.0, 1.0], "shoes": [50.0, 1.0, 1.0]}
    # the page view of shoes a day before T0: views 30d / 365d, clicks, cart adds, events,
    # last view and last interaction (secs ago)
    day = 86_400.0
    assert c1["category_interactions"] == {"shoes": [1.0, 1.0, 0.0, 0.0, 1.0, day, day]}
    assert c1["channel_interactions"] == {"web": [1.0, day], "email": [2.0, 3 * day]}
    assert list(c1["offer"]) == ["o1"]


def test_unknown_customers_get_the_cold_start(story, store):
    materialize(story.con, store, as_of=T0)
    block = store.read_block(["c1", "nobody", "c1"])
    assert block.ids == ("c1", "nobody")
    assert block.cold_start.tolist() == [False, True]
    assert np.isnat(block.as_of[1]) and not np.isnat(block.as_of[0])
    nobody = describe_row(block, 1)
    cold = cold_start_vector()
    assert {k: nobody[k] for k in cold} == cold
    assert nobody["journey_stage"] == "awareness" and nobody["purch_days_since_last"] == 365.0
    assert nobody["attr_region"] is None  # a customers column: no cold-start value
    assert all(len(s) == 0 for s in nobody["stats"].values())


def test_store_refuses_vectors_of_another_spec(story, store):
    materialize(story.con, store, as_of=T0)
    reader = reader_expecting(store, "newer0spec")
    with pytest.raises(
        SpecMismatchError,
        match=f"holds vectors of feature spec {FEATURE_SPEC_VERSION}, this code "
        "expects spec newer0spec; run `recsys features materialize`",
    ):
        reader.read_block(["c1"])
    assert reader.read_block(["nobody"]).cold_start.tolist() == [True]  # nothing to refuse
    with pytest.raises(SpecMismatchError, match="holds vectors of feature spec"):
        store.write([("c9", {"purch_count_30d": 1.0})], "other")
    reader.close()


def test_full_materialisation_replaces_the_store(story, store):
    store.write([("gone", {"purch_count_30d": 5.0})], FEATURE_SPEC_VERSION)
    assert store.read_block(["gone"]).cold_start.tolist() == [False]
    materialize(story.con, store, as_of=T0)
    assert store.read_block(["gone"]).cold_start.tolist() == [True]
    assert store.spec_version() == FEATURE_SPEC_VERSION
    assert store.last_as_of() == T0


def test_a_written_mapping_is_stored_compact_with_cold_start_gaps(store):
    store.write(
        [("c1", {"purch_count_30d": 5, "journey_stage": "decision", "attr_tier": "gold",
                 "__as_of": T0, STATS_KEY: {"offer": {"keys": ["o1", "o1"],
                                                      "values": [[1, 2, 3, 4], [9, 9, 9, 9]]}}})],
        FEATURE_SPEC_VERSION,
    )  # fmt: skip
    row = describe_row(store.read_block(["c1"]), 0)
    assert row["purch_count_30d"] == 5.0 and row["journey_stage"] == "decision"
    assert row["attr_tier"] == "gold" and row["as_of"] == T0.isoformat()
    assert row["purch_days_since_last"] == cold_start_vector()["purch_days_since_last"]
    assert row["stats"]["offer"] == {"o1": [1.0, 2.0, 3.0, 4.0]}  # a repeated key: the first
    assert store.layout().text == ("journey_stage", "attr_tier")


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ({"purch_count_30d": "five"}, "feature `purch_count_30d` must be a number or None, got 'five'"),
        ({"journey_stage": 3}, "feature `journey_stage` must be text or None, got 3"),
        ({STATS_KEY: {"offer": {"keys": ["o1"], "values": [[1.0]]}}},
         r"`__stats.offer.values` must hold one row of 4 numbers per key \(1 keys\), got shape"),
        ({STATS_KEY: {"nope": {}}}, r"`__stats` tables must be among"),
    ],
)  # fmt: skip
def test_writes_of_malformed_vectors_are_refused(store, vector, message):
    with pytest.raises(ConfigError, match=message):
        store.write([("c1", {"purch_count_30d": 1.0, "journey_stage": "x", **vector})],
                    FEATURE_SPEC_VERSION)  # fmt: skip


def test_incremental_refresh_touches_only_changed_customers(story, store):
    materialize(story.con, store, as_of=T0)
    story.purchase("c2", T0 + td(hours=1), 12.0, category="toys")
    later = T0 + td(hours=2)
    assert changed_customers(story.con, T0, later) == ["c1", "c2"]  # c1: its T0 purchase
    assert refresh(story.con, store, as_of=later) == 2
    rows = _rows(store, ["c1", "c2", "c3"])
    assert rows["c2"]["purch_amount_30d"] == 12.0
    assert rows["c2"]["as_of"] == later.isoformat()
    assert rows["c1"]["purch_amount_30d"] == 50.0 + 999.0
    assert rows["c3"]["as_of"] == T0.isoformat()  # untouched
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
    store.write([("gone", {"purch_count_30d": 1.0})], FEATURE_SPEC_VERSION)
    assert materialize(story.con, store, as_of=T0) == 3
    ddl = store._con.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchall()
    assert "WITHOUT ROWID" not in ddl[0][0]
    assert store.count() == 3
    assert store.read_block(["gone"]).cold_start.tolist() == [True]
    assert describe_row(store.read_block(["c1"]), 0)["purch_amount_30d"] == 50.0
    store.close()
