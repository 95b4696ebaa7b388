"""Category affinity from every interaction, channel and touchpoint shares, lifetime and RFM
features, and the event vocabulary: hand-computed on a tiny warehouse, offline and served."""

from __future__ import annotations

import json
from datetime import timedelta as td

import numpy as np
import pytest

from features.decision_matrix import MatrixColumns
from features.matrix import Encoding, fit_encoding
from features.offers import offer_arrays
from features.online import SQLiteOnlineStore, StoreFeatureSource, materialize
from features.pipeline import customer_features
from features.training_set import build_training_set
from recsys.catalog import catalog_from_records
from tests.features.conftest import T0, Warehouse

WEB_PRODUCT = {"touchpoint_id": "web_product", "channel": "web", "stage": "consideration"}


def affinity_warehouse() -> Warehouse:
    """Customer a, as of T0:

    interactions: page view of shoes 2 days before (web_product), product view of shoes 40
    days before (app_feed), page view of bags 10 days before (web_product), click on shoes 5
    days before (web_product), cart add of bags 3 days before (cart), page view without a
    category 1 day before (web_home), a survey answer 8 six days before (email), an event
    ``foo`` 7 days before (app_feed): 8 interactions in 90 days, 5 on web touchpoints, 3 at
    web_product; category-tagged: 5 (3 shoes, 2 bags), of which views: 3 (2 shoes, 1 bag).
    purchases: 20.0 of 2 units of shoes 100 days before, 50.0 500 days before and 30.0 1,000
    days before (both beyond the 365-day horizon, within the lifetime).
    Customer b: no history. Decision d1 at T0: a at web_product, offers shoes and bags.
    """
    w = Warehouse()
    w.touchpoint("web_product")
    w.touchpoint("web_home")
    w.touchpoint("cart", stage="decision")
    w.touchpoint("app_feed", channel="app")
    w.touchpoint("email", channel="email", stage="post_purchase")
    w.offer("o_shoes", category="shoes")
    w.offer("o_bags", offer_type="cross_sell", category="bags")
    w.customer("a", created_at=T0 - td(days=2000))
    w.customer("b")
    w.interaction("a", T0 - td(days=2), "web_product", "page_view", category="shoes")
    w.interaction("a", T0 - td(days=40), "app_feed", "product_view", category="shoes")
    w.interaction("a", T0 - td(days=10), "web_product", "page_view", category="bags")
    w.interaction("a", T0 - td(days=5), "web_product", "click", category="shoes")
    w.interaction("a", T0 - td(days=3), "cart", "add_to_cart", category="bags")
    w.interaction("a", T0 - td(days=1), "web_home", "page_view")
    w.interaction("a", T0 - td(days=6), "email", "survey", 8.0)
    w.interaction("a", T0 - td(days=7), "app_feed", "foo")
    w.purchase("a", T0 - td(days=100), 20.0, quantity=2)
    w.purchase("a", T0 - td(days=500), 50.0, category="bags")
    w.purchase("a", T0 - td(days=1000), 30.0)
    w.decision("d1", T0, "web_product", "o_shoes", "a", position=1)
    w.decision("d1", T0, "web_product", "o_bags", "a", position=2)
    return w


@pytest.fixture(scope="module")
def affinity():
    w = affinity_warehouse()
    yield w
    w.con.close()


CUSTOMER_A = {
    "int_views_30d": 3.0,
    "int_views_90d": 4.0,
    "int_views_365d": 4.0,
    "int_days_since_view": 1.0,
    "int_clicks_30d": 1.0,
    "int_cart_adds_30d": 1.0,
    "int_days_since_cart_add": 3.0,
    "int_category_events_365d": 5.0,
    "int_category_views_365d": 3.0,
    "int_count_90d": 8.0,
    "int_nps_last": 8.0,  # `survey` is an NPS answer by default
    "int_nps_days_since": 6.0,
    "purch_count_365d": 1.0,
    "purch_units_365d": 2.0,
    "purch_lifetime_orders": 3.0,
    "purch_lifetime_spend": 100.0,
    "purch_lifetime_days_since_first": 1000.0,
    "purch_lifetime_days_since_last": 100.0,
    "purch_mean_gap_days": 450.0,  # (1000 - 100) / 2
    "rfm_recency_score": 3.0,  # 100 days: <= 180
    "rfm_frequency_score": 2.0,  # 1 purchase in 365 days: >= 1
    "rfm_monetary_score": 2.0,  # 20.0 in 365 days: >= 1, < 100
    "rfm_score": 7.0,
}
CUSTOMER_B = {
    "int_views_30d": 0.0,
    "int_days_since_view": 365.0,
    "int_nps_last": -1.0,
    "purch_lifetime_orders": 0.0,
    "purch_lifetime_days_since_first": 3650.0,
    "purch_mean_gap_days": 3650.0,
    "rfm_recency_score": 1.0,
    "rfm_score": 3.0,
}
CROSSES = {  # (shoes, bags) at web_product
    "x_category_views_30d": (1.0, 1.0),
    "x_category_views_365d": (2.0, 1.0),
    "x_category_view_share_365d": (2 / 3, 1 / 3),
    "x_category_interaction_share_365d": (3 / 5, 2 / 5),
    "x_category_clicks_365d": (1.0, 0.0),
    "x_category_cart_adds_365d": (0.0, 1.0),
    "x_category_days_since_view": (2.0, 10.0),
    "x_category_days_since_interaction": (2.0, 3.0),
    "x_category_units_365d": (2.0, 0.0),
    # (purchases + views in the category + 0.4) / (1 purchase + 3 category views + 4)
    "x_category_taste_365d": ((1 + 2 + 0.4) / 8, (0 + 1 + 0.4) / 8),
    "x_channel_interaction_share_90d": (5 / 8, 5 / 8),
    "x_channel_days_since_interaction": (1.0, 1.0),
    "x_touchpoint_interaction_share_90d": (3 / 8, 3 / 8),
    "x_touchpoint_days_since_interaction": (2.0, 2.0),
}


@pytest.mark.parametrize(("customer", "expected"), [("a", CUSTOMER_A), ("b", CUSTOMER_B)])
def test_interaction_lifetime_and_rfm_features_by_hand(affinity, customer, expected):
    frame = customer_features(affinity.con, T0).set_index("customer_id")
    got = {name: float(frame.loc[customer, name]) for name in expected}
    assert got == pytest.approx(expected)


def test_category_channel_and_touchpoint_crosses_by_hand(affinity):
    frame = build_training_set(affinity.con).set_index("offer_id")
    for name, (shoes, bags) in CROSSES.items():
        got = (frame.loc["o_shoes", name], frame.loc["o_bags", name])
        assert got == pytest.approx((shoes, bags)), name


def test_served_crosses_equal_the_training_sets(affinity, tmp_path):
    """The statistics travel through the online store: served rows hold the same crosses."""
    frame = build_training_set(affinity.con)
    encoding = Encoding.from_json(json.dumps(fit_encoding(frame).to_dict()))
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(affinity.con, store, as_of=T0)
    columns = MatrixColumns(encoding)
    offers = [{"offer_id": "o_shoes", "offer_type": "discount", "category": "shoes"},
              {"offer_id": "o_bags", "offer_type": "cross_sell", "category": "bags"}]  # fmt: skip
    prepared = columns.prepare(offer_arrays(offers), WEB_PRODUCT)
    served = columns.rows(
        store.read_block(["a"]), prepared, [{}], T0, np.zeros(2, np.intp), np.arange(2)
    )
    for name, expected in CROSSES.items():
        got = served[:, encoding.names.index(name)]
        np.testing.assert_allclose(got, np.float32(expected), rtol=1e-6, err_msg=name)
    # a day later the days-since crosses have aged by a day, the counts have not
    later = columns.rows(
        store.read_block(["a"]), prepared, [{}], T0 + td(days=1), np.zeros(2, np.intp),
        np.arange(2),
    )  # fmt: skip
    at = encoding.names.index("x_category_days_since_view")
    np.testing.assert_allclose(later[:, at], [3.0, 11.0])
    at = encoding.names.index("x_category_views_365d")
    np.testing.assert_allclose(later[:, at], [2.0, 1.0])
    store.close()


def test_order_count_and_total_spend_rules_read_the_lifetime_purchases(affinity, tmp_path):
    """A rule on ``order_count`` / ``total_spend`` (all-time in the contract's demo catalogue)
    reads the lifetime purchases, not the 365-day ones."""
    catalog = catalog_from_records(
        [{"offer_id": "o", "name": "o", "offer_type": "discount", "eligibility": [
            {"feature": "order_count", "op": ">=", "value": 2},
            {"feature": "total_spend", "op": ">", "value": 50}]}],
        [{"touchpoint_id": "web_product", "channel": "web"}],
    )  # fmt: skip
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(affinity.con, store, as_of=T0)
    block = StoreFeatureSource(store, catalog).read(["a", "b"])
    assert block.column("order_count").tolist() == [3.0, 0.0]  # 1 purchase in 365 days
    assert block.column("total_spend").tolist() == [100.0, 0.0]
    store.close()
