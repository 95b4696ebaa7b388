"""Training sets: labels in the attribution window, point-in-time joins, context, anonymous."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta as td

import ibis
import pandas as pd
import pytest

from features import definitions as d
from features.background import in_background
from features.engines import ibis_backend
from features.pipeline import customer_features, point_tables, sources
from features.time_slices import time_slices
from features.training_set import (
    ID_COLUMNS,
    build_training_set,
    cold_start_vector,
    write_training_set,
)
from recsys.contract import OFFER_TYPES
from recsys.errors import ConfigError
from tests.features.conftest import T0, mixed_types_warehouse


def _by_key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["decision_id", "offer_id"])


def test_one_row_per_decision_row_with_ids_first(training_frame):
    frame = training_frame
    assert len(frame) == 5
    assert list(frame.columns[:10]) == [*ID_COLUMNS, "label", "revenue"]
    assert list(zip(frame.decision_id, frame.offer_id, strict=True)) == [
        ("d1", "o1"),
        ("d2", "o1"),
        ("d2", "o2"),
        ("d3", "o1"),
        ("d4", "o2"),
    ]


def test_labels_and_revenue_follow_the_attribution_window(logged, training_frame):
    rows = _by_key(training_frame)
    assert rows.loc[("d1", "o1"), "label"] == 1 and rows.loc[("d1", "o1"), "revenue"] == 10.0
    assert rows.loc[("d2", "o2"), "label"] == 1 and rows.loc[("d2", "o2"), "revenue"] == 20.0
    assert rows.loc[("d2", "o1"), "label"] == 1  # 7 days after is still inside
    assert rows.loc[("d3", "o1"), "label"] == 0 and rows.loc[("d3", "o1"), "revenue"] == 0.0
    assert rows.loc[("d4", "o2"), "label"] == 0
    short = _by_key(build_training_set(logged.con, attribution_days=1.5))
    assert short.loc[("d2", "o2"), "label"] == 0  # the convert came after 2 days
    clicks = _by_key(build_training_set(logged.con, positive_outcomes=("click",)))
    assert clicks.loc[("d2", "o2"), "label"] == 1 and clicks.loc[("d1", "o1"), "label"] == 0


def test_customer_features_are_those_as_of_each_decision(logged, training_frame):
    customer_cols = [c for c in customer_features(logged.con, T0).columns if c != "customer_id"]
    for (decision_id, offer_id), row in _by_key(training_frame).iterrows():
        if pd.isna(row["customer_id"]):
            continue
        expected = customer_features(logged.con, row["ts"], customer_ids=[row["customer_id"]])
        got = row[customer_cols].to_dict()
        want = expected.iloc[0][customer_cols].to_dict()
        assert got == pytest.approx(want, nan_ok=True) or got == want, (decision_id, offer_id)


def test_decision_history_counts_only_earlier_decisions(training_frame):
    rows = _by_key(training_frame)
    # d2 at T0: c1 saw o1 once before (d1); the d2 slate itself is not history.
    assert rows.loc[("d2", "o1"), "hist_impressions_30d"] == 1.0
    assert rows.loc[("d2", "o1"), "x_offer_impressions_30d"] == 1.0
    assert rows.loc[("d2", "o1"), "x_offer_days_since_shown"] == 10.0
    assert rows.loc[("d2", "o1"), "x_offer_response_rate"] == pytest.approx(1.5 / 6)
    assert rows.loc[("d2", "o2"), "x_offer_impressions_30d"] == 0.0
    assert rows.loc[("d2", "o2"), "x_category_spend_share_365d"] == pytest.approx(30 / 80)
    assert rows.loc[("d2", "o1"), "x_category_spend_share_365d"] == pytest.approx(50 / 80)
    assert rows.loc[("d2", "o1"), "x_touchpoint_interactions_90d"] == 1.0
    # d1's own accept (9 days before T0) is history for d2, but not for d1.
    assert rows.loc[("d1", "o1"), "hist_accepts_365d"] == 0.0
    assert rows.loc[("d2", "o1"), "hist_accepts_365d"] == 1.0


def test_anonymous_decisions_get_the_cold_start_vector(training_frame):
    row = _by_key(training_frame).loc[("d3", "o1")]
    for name, value in cold_start_vector().items():
        if value is None:
            assert pd.isna(row[name]), name
        else:
            assert row[name] == pytest.approx(value), name


def test_context_keys_become_typed_ctx_columns(training_frame):
    rows = _by_key(training_frame)
    assert rows["ctx_basket"].dtype == "float64"
    assert rows.loc[("d3", "o1"), "ctx_basket"] == 1.5
    assert rows.loc[("d2", "o2"), "ctx_member"] == 1.0  # JSON true
    assert pd.isna(rows.loc[("d2", "o1"), "ctx_member"])
    assert rows.loc[("d2", "o1"), "ctx_device"] == "mobile"
    # seg has a number and a string: categorical, numbers as their JSON text
    assert rows.loc[("d3", "o1"), "ctx_seg"] == "7"
    assert rows.loc[("d4", "o2"), "ctx_seg"] == "bags"


def test_a_context_that_names_the_offers_category_is_a_match(training_frame):
    match = _by_key(training_frame)["x_context_category_match"]
    assert match.loc[("d4", "o2")] == 1.0  # context {"seg": "bags"}, o2 is a bags offer
    assert (match.drop(("d4", "o2")) == 0.0).all()  # other contexts, or no context at all


def test_offer_touchpoint_and_request_attributes(training_frame):
    row = _by_key(training_frame).loc[("d4", "o2")]
    assert (row["offer_type"], row["offer_category"], row["offer_value"]) == ("upsell", "bags", 3.0)
    assert (row["tp_channel"], row["tp_stage"]) == ("call_center", "service")
    assert (row["req_hour"], row["req_dow"]) == (0.0, float((T0 + td(days=3)).weekday()))


def test_time_range_filters_decisions(logged):
    frame = build_training_set(logged.con, start=T0, end=T0 + td(days=1))
    assert sorted(set(frame.decision_id)) == ["d2", "d3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attribution_days": 0}, "`attribution_days` must be > 0, got 0"),
        ({"positive_outcomes": ("buy",)}, r"`positive_outcomes` must be a non-empty subset"),
        ({"positive_outcomes": ()}, r"`positive_outcomes` must be a non-empty subset"),
        ({"start": T0, "end": T0}, "`start` must be before `end`"),
    ],
)
def test_bad_arguments_are_refused(logged, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_training_set(logged.con, **kwargs)


def test_empty_warehouse_gives_an_empty_frame(wh):
    frame = build_training_set(wh.con)
    assert len(frame) == 0 and "label" in frame.columns


def test_written_training_set_equals_the_frame(logged, training_frame, tmp_path):
    path = tmp_path / "ts.parquet"
    assert write_training_set(logged.con, path) == len(training_frame)
    written = pd.read_parquet(path)
    pd.testing.assert_frame_equal(written, training_frame, check_dtype=False)
    ranged = tmp_path / "ranged.parquet"
    assert write_training_set(logged.con, ranged, start=T0, end=T0 + td(days=1)) == 3
    assert "ctx_seg" in pd.read_parquet(ranged).columns  # keys of the range only
    assert "ctx_member" in pd.read_parquet(ranged).columns


def test_time_slices_give_the_same_rows(logged, training_frame, tmp_path):
    # one slice per (at most) 2 decisions rows: several queries, one sorted result
    sliced = build_training_set(logged.con, chunk_rows=2)
    pd.testing.assert_frame_equal(sliced, training_frame)
    path = tmp_path / "sliced.parquet"
    assert write_training_set(logged.con, path, chunk_rows=1) == len(training_frame)
    pd.testing.assert_frame_equal(pd.read_parquet(path), training_frame, check_dtype=False)
    assert not list(tmp_path.glob(".*partial"))
    # the offer log shared by the slices lives in a temporary table only while they run
    assert _temporary_tables(logged.con) == []


def _temporary_tables(con) -> list[str]:
    rows = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    return [name for (name,) in rows]


def test_time_slices_cover_the_range_without_splitting_a_time(logged):
    slices = time_slices(logged.con, None, None, chunk_rows=1)
    assert slices[0][0] is None and slices[-1][1] is None
    assert all(hi == lo for (_, hi), (lo, _) in itertools.pairwise(slices))
    # the two rows of the d2 slate share a time: they fall in the same slice
    assert sum(lo is not None and lo <= T0 and (hi is None or hi > T0) for lo, hi in slices) == 1
    assert time_slices(logged.con, T0, T0 + td(days=1), chunk_rows=10) == [(T0, T0 + td(days=1))]


@pytest.mark.parametrize("chunk_rows", [0, -3, 1.5])
def test_bad_chunk_rows_are_refused(logged, chunk_rows):
    with pytest.raises(ConfigError, match="`chunk_rows` must be an integer >= 1, got"):
        build_training_set(logged.con, chunk_rows=chunk_rows)


def test_background_iteration_keeps_order_errors_and_stops_early():
    assert list(in_background(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise ValueError("engine failed")

    items = in_background(failing())
    assert next(items) == 1
    with pytest.raises(ValueError, match="engine failed"):
        next(items)
    closed = []

    def endless():
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    early = in_background(endless(), depth=1)
    assert next(early) == 0
    early.close()  # the producer, blocked on a full queue, is released and joined
    assert closed == [True]  # and the generator it ran is closed (its clean-up has run)


def test_background_iteration_starts_before_the_first_read():
    started = threading.Event()

    def items():
        started.set()
        yield 1

    ahead = in_background(items())
    assert started.wait(timeout=30)  # computing while the caller prepares
    assert list(ahead) == [1]
    ahead.close()  # closing a finished iterator is harmless


def _offer_type_crosses_by_statistics_table(con) -> pd.DataFrame:
    """The offer-type crosses from the per-type statistics table of every row's offer type
    (the definition before they were read from the ``hist_<type>_*`` features)."""
    src = sources(ibis_backend(con, "duckdb"))
    dec = src.decisions
    known = dec.filter(dec.customer_id.notnull())
    points = known.select(customer_id=known.customer_id, as_of=known.ts).distinct()
    types = src.offers.select(w_offer_id=src.offers.offer_id, offer_type=src.offers.offer_type)
    rows = dec.left_join(types, dec.offer_id == types.w_offer_id)
    wanted = rows.filter(rows.customer_id.notnull()).select(
        "customer_id",
        "offer_id",
        "touchpoint_id",
        "offer_type",
        as_of=rows.ts,
        offer_category=ibis.null("string"),
        tp_channel=ibis.null("string"),
    )
    stats = point_tables(src, points, wanted=wanted).stats["offer_type"]
    t = rows.left_join(
        stats,
        [
            rows.customer_id == stats.customer_id,
            rows.ts == stats.as_of,
            rows.offer_type == stats.offer_type,
        ],
    )
    s = {k: t[k].cast("float64").fill_null(d.STAT_DEFAULTS[k]) for k in d.OFFER_TYPE_STATS}
    names = ("x_offer_type_response_rate", "x_offer_type_days_since_shown")
    crosses = {x.feature.name: x.build(s, d.IBIS_OPS) for x in d.CROSSES if x.feature.name in names}
    frame = t.select("decision_id", "offer_id", **crosses).to_pyarrow().to_pandas()
    return frame.sort_values(["decision_id", "offer_id"]).reset_index(drop=True)


def test_offer_type_crosses_equal_the_statistics_table_for_every_type():
    w = mixed_types_warehouse()
    try:
        got = build_training_set(w.con)
        got = got.sort_values(["decision_id", "offer_id"]).reset_index(drop=True)
        want = _offer_type_crosses_by_statistics_table(w.con)
        assert set(got.offer_type.dropna()) == {*OFFER_TYPES, "legacy_coupon"}
        assert got.offer_type.isna().any() and got.customer_id.isna().any()
        shown = got[got.x_offer_type_days_since_shown < 365.0]
        assert set(shown.offer_type) == {*OFFER_TYPES, "legacy_coupon"}  # not only defaults
        # exactly equal, not approximately
        pd.testing.assert_frame_equal(got[want.columns], want, check_exact=True)
        sliced = build_training_set(w.con, chunk_rows=100)  # the cached offer log
        pd.testing.assert_frame_equal(sliced, build_training_set(w.con), check_exact=True)
    finally:
        w.con.close()
