"""The same definitions on Spark (local[2]) and DuckDB give the same results."""

from __future__ import annotations

import gc
import tempfile
from datetime import timedelta as td

import duckdb
import pandas as pd
import pytest

from features.engines import (
    EXPORT_PREFIX,
    ibis_backend,
    release_backend,
    spark_backend,
    spark_session,
)
from features.pipeline import customer_features
from features.training_set import build_training_set
from recsys.errors import ConfigError
from tests.features.conftest import T0, Warehouse, build_story, mixed_types_warehouse
from tests.features.test_interactions import affinity_warehouse

pytestmark = pytest.mark.spark


@pytest.fixture(scope="session")
def spark():
    session = spark_session(master="local[2]", shuffle_partitions=1)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def both(spark, tmp_path_factory):
    """A small warehouse, and the same tables registered in Spark."""
    w = build_story(Warehouse())
    w.decision("d2", T0, "cart", "o2", "c1", context={"device": "mobile", "basket": 3})
    w.decision("d2", T0, "cart", "o1", "c1", position=2, context={"device": "mobile"})
    w.decision("d3", T0 + td(hours=5), "web_home", "o1", None, context={"basket": 1.5})
    w.decision("d4", T0 + td(days=3), "call", "o2", "c3")
    w.outcome("d2", "o2", T0 + td(days=2), "convert", 20.0)
    w.interaction("c3", T0 + td(days=1), "web_home", "review", 4.0)
    backend = ibis_backend(w.con, "spark", spark=spark)
    yield w, backend
    release_backend(backend)
    w.con.close()


def test_customer_features_match(both):
    w, backend = both
    as_of = T0 + td(days=2)  # after some of the later events, before others
    pd.testing.assert_frame_equal(
        customer_features(backend, as_of, engine="spark"),
        customer_features(w.con, as_of),
        check_dtype=False,
    )


def test_training_sets_match(both):
    w, backend = both
    duck = build_training_set(w.con)
    spark = build_training_set(backend, engine="spark")
    assert len(duck) == 5
    pd.testing.assert_frame_equal(spark, duck, check_dtype=False)


def test_training_sets_match_with_offer_types_outside_the_contract(spark):
    # the offer-type crosses read hist_<type>_* for the contract's types and the per-type
    # statistics otherwise: the same on both engines
    w = mixed_types_warehouse()
    backend = ibis_backend(w.con, "spark", spark=spark)
    try:
        duck = build_training_set(w.con)
        spark_frame = build_training_set(backend, engine="spark")
        assert "legacy_coupon" in set(duck.offer_type)
        pd.testing.assert_frame_equal(spark_frame, duck, check_dtype=False)
    finally:
        release_backend(backend)
        w.con.close()


def test_interaction_lifetime_features_and_crosses_match(spark):
    # category affinity from every interaction, channel and touchpoint shares, lifetime and
    # RFM features: hand-computed on DuckDB in test_interactions, the same on Spark
    w = affinity_warehouse()
    backend = ibis_backend(w.con, "spark", spark=spark)
    try:
        pd.testing.assert_frame_equal(
            customer_features(backend, T0, engine="spark"),
            customer_features(w.con, T0),
            check_dtype=False,
        )
        pd.testing.assert_frame_equal(
            build_training_set(backend, engine="spark"),
            build_training_set(w.con),
            check_dtype=False,
        )
    finally:
        release_backend(backend)
        w.con.close()


def test_session_settings(spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert spark.conf.get("spark.sql.adaptive.enabled") == "true"


def test_bad_shuffle_partitions():
    with pytest.raises(ConfigError, match="`shuffle_partitions` must be >= 1, got 0"):
        spark_session(shuffle_partitions=0)


@pytest.fixture
def exports(tmp_path, monkeypatch):
    """Temporary directories are made under ``tmp_path``; returns a lister of the exports."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return lambda: sorted(p.name for p in tmp_path.glob(f"{EXPORT_PREFIX}*"))


def _customer_ids(backend) -> list[str]:
    return sorted(backend.table("customers").customer_id.to_pyarrow().to_pylist())


def test_export_is_deleted_on_leaving_the_block(spark, exports):
    w = build_story(Warehouse())
    with spark_backend(w.con, spark=spark) as backend:
        assert len(exports()) == 1
        assert _customer_ids(backend) == ["c1", "c2", "c3"]
    assert exports() == []
    w.con.close()


def test_export_is_deleted_on_release_and_when_the_backend_goes(spark, exports):
    w = build_story(Warehouse())
    first = ibis_backend(w.con, "spark", spark=spark)
    second = ibis_backend(w.con, "spark", spark=spark)
    assert len(exports()) == 2
    release_backend(first)
    release_backend(first)  # idempotent
    assert len(exports()) == 1
    del second
    gc.collect()
    assert exports() == []
    w.con.close()


def test_export_is_deleted_when_the_export_fails(spark, exports):
    w = build_story(Warehouse())
    w.con.close()
    with pytest.raises(duckdb.ConnectionException, match="closed"):
        ibis_backend(w.con, "spark", spark=spark)
    assert exports() == []


def test_exports_do_not_see_each_other(spark, exports):
    """Two warehouses on one session: each backend reads its own tables, before and after
    the other is released, and the caller's session gets no views."""
    small, big = Warehouse(), build_story(Warehouse())
    small.customer("solo")
    a = ibis_backend(small.con, "spark", spark=spark)
    b = ibis_backend(big.con, "spark", spark=spark)
    assert _customer_ids(a) == ["solo"]
    assert _customer_ids(b) == ["c1", "c2", "c3"]
    release_backend(b)
    assert _customer_ids(a) == ["solo"]
    assert "customers" not in {t.name for t in spark.catalog.listTables()}
    assert spark.conf.get("spark.sql.shuffle.partitions") == "1"  # child kept the settings
    assert a.raw_sql("SET spark.sql.shuffle.partitions").collect()[0][1] == "1"
    release_backend(a)
    small.con.close()
    big.con.close()
