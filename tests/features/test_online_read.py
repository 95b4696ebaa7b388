"""Reads of the online store: one decoder (stored compact JSON -> FeatureBlock) for every
store, cold-start rows, the feature source the decision pipeline reads."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence

import numpy as np
import pytest

from features.online import (
    RedisOnlineStore,
    SQLiteOnlineStore,
    StoreFeatureSource,
    describe_row,
    materialize,
    vectors_as_of,
)
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import cold_start_vector
from recsys.catalog import catalog_from_records
from recsys.decision.ports import FeatureBlock, FeatureSource
from recsys.errors import SpecMismatchError
from tests.features.conftest import REDIS_URL, T0


def _ids(con) -> list[str]:
    known = [r[0] for r in con.execute("SELECT customer_id FROM customers ORDER BY 1").fetchall()]
    # unknown customers between known ones, and a repeated id (read once)
    return [known[0], "nobody", *known[1:], "also-unknown", known[0]]


def assert_blocks_equal(a: FeatureBlock, b: FeatureBlock) -> None:
    assert a.ids == b.ids and a.numeric_names == b.numeric_names
    np.testing.assert_array_equal(a.numeric, b.numeric)
    assert list(a.text) == list(b.text)
    for name in a.text:
        assert a.text[name].tolist() == b.text[name].tolist(), name
    assert list(a.stats) == list(b.stats)
    for name, s in a.stats.items():
        t = b.stats[name]
        np.testing.assert_array_equal(s.counts, t.counts)
        assert s.keys.tolist() == t.keys.tolist(), name
        np.testing.assert_array_equal(s.values, t.values)
    np.testing.assert_array_equal(a.as_of, b.as_of)
    np.testing.assert_array_equal(a.cold_start, b.cold_start)
    assert a.spec_version == b.spec_version and dict(a.aliases) == dict(b.aliases)


@pytest.mark.services
def test_sqlite_and_redis_give_the_same_block(logged, tmp_path):
    sqlite = SQLiteOnlineStore(tmp_path / "online.sqlite")
    redis = RedisOnlineStore(REDIS_URL, prefix=f"test:features:{uuid.uuid4().hex}")
    try:
        redis.clear()
    except Exception as exc:  # pragma: no cover - the service is part of the test setup
        pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
    try:
        # the same stored vectors in both (a customer's keys come in any order)
        layout, vectors = vectors_as_of(logged.con, T0)
        vectors = list(vectors)
        for store in (sqlite, redis):
            assert store.write(vectors, FEATURE_SPEC_VERSION, replace=True, layout=layout) == 3
        ids = _ids(logged.con)
        a, b = sqlite.read_block(ids), redis.read_block(ids)
        assert_blocks_equal(a, b)
        assert a.ids == tuple(dict.fromkeys(ids)) and len(a) == 5
        assert a.stats["category"].counts.sum() > 0
    finally:
        redis.clear()
        redis.close()
        sqlite.close()


def test_cold_start_rows_hold_the_cold_start_values(logged, store):
    materialize(logged.con, store, as_of=T0)
    block = store.read_block(_ids(logged.con))
    cold = np.flatnonzero(block.cold_start)
    assert [block.ids[i] for i in cold] == ["nobody", "also-unknown"]
    assert np.isnat(block.as_of[cold]).all() and not np.isnat(block.as_of[~block.cold_start]).any()
    defaults = cold_start_vector()
    for i in cold.tolist():
        row = describe_row(block, i)
        assert {k: row[k] for k in defaults} == defaults
        assert row["attr_region"] is None
        assert all(block.stats[name].counts[i] == 0 for name in block.stats)
    assert block.column("journey_stage")[cold].tolist() == ["awareness", "awareness"]


def test_a_block_of_unknown_or_no_customers(logged, store):
    materialize(logged.con, store, as_of=T0)
    block = store.read_block(["x1", "x2"])
    assert block.cold_start.tolist() == [True, True]
    assert block.column("purch_days_since_last").tolist() == [365.0, 365.0]
    empty = store.read_block([])
    assert len(empty) == 0 and empty.numeric.shape == (0, len(block.numeric_names))
    assert empty.numeric_names == block.numeric_names


def test_an_empty_store_reads_cold_start_blocks(tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    block = store.read_block(["a"])
    assert block.cold_start.tolist() == [True]
    assert set(cold_start_vector()) <= {*block.numeric_names, *block.text}
    store.close()


def test_block_refuses_entries_of_another_layout(logged, tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(logged.con, store, as_of=T0)
    store._con.execute(
        "UPDATE meta SET value = ? WHERE key = 'layout'",
        [json.dumps({"numeric": ["only_one"], "text": []})],
    )
    store._con.commit()
    fresh = SQLiteOnlineStore(store.path)
    with pytest.raises(SpecMismatchError, match="vector layout does not match its entries"):
        fresh.read_block(["c1"])
    fresh.close()
    store.close()


def _catalog():
    return catalog_from_records(
        [
            {"offer_id": "o1", "name": "o", "offer_type": "discount",
             "eligibility": [{"feature": "region", "op": "==", "value": "north"}]},
        ],
        [{"touchpoint_id": "email", "channel": "email", "consent_column": "email_opt_in"}],
    )  # fmt: skip


def test_feature_source_names_the_catalogue_columns(logged, tmp_path, caplog):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    source = StoreFeatureSource(store, _catalog())
    with caplog.at_level(logging.WARNING, logger="features.online.source"):
        assert source.spec_version() == FEATURE_SPEC_VERSION
    assert "the online store is empty" in caplog.text
    materialize(logged.con, store, as_of=T0)
    assert source.spec_version() == FEATURE_SPEC_VERSION
    block = source.read(["c1", "nobody", "c2"])
    assert dict(block.aliases) == {"email_opt_in": "consent_email", "region": "attr_region"}
    assert block.column("email_opt_in").tolist() == block.column("consent_email").tolist()
    assert block.column("region").tolist() == ["north", None, "south"]
    assert block.has("region") and not block.has("loyalty_tier")
    store._set_meta("spec_version", "0ld5pec")
    store._con.commit()
    with pytest.raises(SpecMismatchError, match="feature spec 0ld5pec, this code computes"):
        source.spec_version()
    source.close()


class MeteredFeatures:
    """A wrapper of the feature source (as metering, a circuit breaker or a fallback are):
    it implements the whole port by delegating."""

    def __init__(self, inner: FeatureSource):
        self.inner = inner
        self.reads = 0

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        self.reads += 1
        return self.inner.read(customer_ids)

    def spec_version(self) -> str:
        return self.inner.spec_version()


def test_a_wrapped_feature_source_still_reads_columns(logged, tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(logged.con, store, as_of=T0)
    direct = StoreFeatureSource(store, _catalog())
    wrapped: FeatureSource = MeteredFeatures(direct)
    ids = _ids(logged.con)[:-1]
    block = wrapped.read(ids)
    assert isinstance(block, FeatureBlock) and block.numeric.dtype == np.float64
    assert_blocks_equal(block, direct.read(ids))
    assert wrapped.spec_version() == FEATURE_SPEC_VERSION and wrapped.reads == 1
    store.close()
