"""The same definitions on Spark (local[2]) and DuckDB give the same results."""

from __future__ import annotations

from datetime import timedelta as td

import pandas as pd
import pytest

from features.engines import ibis_backend, spark_session
from features.pipeline import customer_features
from features.training_set import build_training_set
from tests.features.conftest import T0, Warehouse, build_story

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
