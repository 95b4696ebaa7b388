"""Customer features as of T: hand-computed values, cold start, point-in-time correctness."""

from __future__ import annotations

import math
from datetime import timedelta as td

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.definitions import HORIZON_DAYS
from features.engines import ibis_backend
from features.pipeline import (
    POINT_KEYS,
    STAT_TABLES,
    customer_features,
    customer_points,
    customer_tables,
    point_tables,
    sources,
    to_pandas,
)
from features.spec import FEATURE_SPEC_VERSION, feature_spec
from features.training_set import cold_start_vector
from recsys.errors import ConfigError
from tests.features.conftest import T0, Warehouse, build_story


def _row(frame: pd.DataFrame, customer_id: str) -> dict:
    return frame.set_index("customer_id").loc[customer_id].to_dict()


def test_hand_computed_customer_with_history(story):
    c1 = _row(customer_features(story.con, T0), "c1")
    expected = {
        "purch_days_since_last": 2.0,
        "purch_count_30d": 1.0,
        "purch_amount_30d": 50.0,
        "purch_count_90d": 2.0,
        "purch_amount_90d": 80.0,
        "purch_amount_365d": 80.0,
        "purch_count_store_365d": 1.0,
        "purch_count_web_365d": 1.0,
        "purch_categories_365d": 2.0,
        "purch_top_category_365d": "shoes",
        "purch_top_category_share_365d": 50 / 80,
        "purch_avg_basket_365d": 40.0,
        "purch_spend_trend": (50 + 1) / ((80 - 50) / 2 + 1),
        "purch_share_store_365d": 0.5,
        "int_days_since_last": 1.0,
        "int_count_30d": 3.0,
        "int_web_count_90d": 1.0,
        "int_email_count_90d": 2.0,
        "int_email_days_since": 3.0,
        "int_nps_last": 4.0,
        "int_nps_days_since": 3.0,
        "int_decision_stage_7d": 1.0,
        "hist_impressions_30d": 1.0,
        "hist_accepts_365d": 1.0,
        "hist_days_since_impression": 10.0,
        "hist_discount_days_since_shown": 10.0,
        "hist_response_rate": (1 + 0.5) / (1 + 5),
        "hist_upsell_days_since_shown": float(HORIZON_DAYS),
        # discount: 1 shown, 1 accepted; upsell: none shown
        "hist_discount_over_upsell": math.log((1 + 0.5) / (0 + 4.5)) - math.log(0.5 / 4.5),
        "journey_stage": "post_purchase",
        "tenure_days": 100.0,
        "consent_email": 1.0,
        "consent_sms": 0.0,
        "consent_push": 0.0,
        "attr_region": "north",
    }
    assert {k: c1[k] for k in expected} == pytest.approx(expected)


def test_complaint_puts_customer_in_service_stage_and_old_purchase_is_beyond_horizon(story):
    c3 = _row(customer_features(story.con, T0), "c3")
    assert c3["journey_stage"] == "service"
    assert c3["int_complaints_30d"] == 1.0
    assert c3["int_call_center_count_90d"] == 1.0
    assert c3["int_call_center_days_since"] == 20.0
    assert c3["purch_count_365d"] == 0.0
    assert c3["purch_days_since_last"] == float(HORIZON_DAYS)
    assert c3["tenure_days"] == 500.0
    assert c3["consent_push"] == 1.0


def test_customer_without_history_gets_the_declared_cold_start_vector(story):
    c2 = _row(customer_features(story.con, T0), "c2")
    cold = cold_start_vector()
    for name, value in cold.items():
        if value is None:
            assert pd.isna(c2[name]), name
        else:
            assert c2[name] == pytest.approx(value), name
    assert c2["attr_region"] == "south"


def test_columns_follow_the_spec_and_customer_subset(story):
    frame = customer_features(story.con, T0, customer_ids=["c3", "c1", "nobody"])
    assert list(frame["customer_id"]) == ["c1", "c3"]
    customer_names = [f.name for f in feature_spec().features if f.group == "customer"]
    assert list(frame.columns) == ["customer_id", *customer_names, "attr_region"]
    assert len(FEATURE_SPEC_VERSION) == 12


def test_timezone_aware_as_of_is_read_as_utc(story):
    from datetime import UTC, timezone

    aware = T0.replace(tzinfo=UTC).astimezone(timezone(td(hours=2)))
    pd.testing.assert_frame_equal(
        customer_features(story.con, aware), customer_features(story.con, T0)
    )


def test_unknown_engine_is_refused(story):
    with pytest.raises(ConfigError, match="`engine` must be one of duckdb, spark, got 'pandas'"):
        customer_features(story.con, T0, engine="pandas")


# --- point-in-time correctness as a property --------------------------------------------------

_late_event = st.tuples(
    st.sampled_from(["purchase", "interaction", "decision", "outcome"]),
    st.sampled_from(["c1", "c2", "c3"]),
    st.integers(min_value=0, max_value=400 * 86_400),  # seconds at or after T0
    st.floats(min_value=0, max_value=1_000, allow_nan=False),
    st.sampled_from(["web_home", "cart", "email_w", "call"]),
    st.sampled_from(["page_view", "complaint", "nps", "review"]),
)


@pytest.fixture(scope="module")
def baseline() -> pd.DataFrame:
    w = build_story(Warehouse())
    return customer_features(w.con, T0)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(_late_event, min_size=1, max_size=8))
def test_events_at_or_after_t_change_no_feature_as_of_t(baseline, events):
    w = build_story(Warehouse())
    for i, (kind, cid, secs, amount, tp, event_type) in enumerate(events):
        ts = T0 + td(seconds=secs)
        if kind == "purchase":
            w.purchase(cid, ts, amount, category="toys")
        elif kind == "interaction":
            w.interaction(cid, ts, tp, event_type, value=amount % 11)
        elif kind == "decision":
            w.decision(f"late{i}", ts, tp, "o2", cid)
        else:  # a late response to an early decision counts only from its own time
            w.outcome("d1", "o1", ts, "dismiss")
    after = customer_features(w.con, T0)
    pd.testing.assert_frame_equal(after, baseline)
    w.con.close()


@pytest.mark.parametrize("customer_ids", [None, ["c3", "c1", "nobody"]])
def test_one_point_per_customer_equals_the_range_join(customer_ids):
    """``customer_tables`` (time filter) gives what the range join gives for the same points."""
    w = build_story(Warehouse())
    w.decision("d9", T0 - td(days=3), "cart", "o2", "c3")
    w.outcome("d9", "o2", T0 - td(days=2), "convert", 7.0)
    src = sources(ibis_backend(w.con))

    def frame(table, keys):
        return to_pandas(table).sort_values(keys, kind="stable").reset_index(drop=True)

    for as_of in (T0, T0 + td(days=2, hours=1)):
        fast = customer_tables(src, as_of, customer_ids)
        joined = point_tables(src, customer_points(src, as_of, customer_ids))
        keys = list(POINT_KEYS)
        pd.testing.assert_frame_equal(frame(fast.customer, keys), frame(joined.customer, keys))
        for name, spec in STAT_TABLES.items():
            got, want = (
                frame(fast.stats[name], [*keys, spec.key]),
                frame(joined.stats[name], [*keys, spec.key]),
            )
            pd.testing.assert_frame_equal(got, want)
            assert len(got) > 0, name
    w.con.close()
