"""Eligibility rules naming a feature customers do not have are found, with close names."""

from __future__ import annotations

import logging

from features.online import SQLiteOnlineStore, StoreFeatureSource
from features.online.source import DEFAULT_ALIASES
from features.rule_features import unknown_rule_features
from features.spec import FEATURE_SPEC_VERSION
from recsys.catalog import catalog_from_records

TOUCHPOINTS = [{"touchpoint_id": "web_home", "channel": "web"}]


def _catalog(*rules: dict):
    offers = [
        {"offer_id": f"OF{i}", "name": f"offer {i}", "offer_type": "discount", "eligibility": [r]}
        for i, r in enumerate(rules, start=1)
    ]
    return catalog_from_records(offers, TOUCHPOINTS)


def test_rules_on_features_aliases_and_customer_columns_are_known():
    catalog = _catalog(
        {"feature": "tenure_days", "op": "<", "value": 30},
        {"feature": "order_count", "op": ">=", "value": 1},  # alias of purch_lifetime_orders
        {"feature": "loyalty_tier", "op": "==", "value": "gold"},  # customers column
    )
    names = ["tenure_days", "purch_lifetime_orders", "attr_loyalty_tier"]
    assert unknown_rule_features(catalog, names, DEFAULT_ALIASES) == []


def test_a_misspelled_rule_feature_names_the_offer_the_rule_and_the_closest_names():
    catalog = _catalog({"feature": "tenure_dyas", "op": "<", "value": 30})
    [unknown] = unknown_rule_features(catalog, ["tenure_days", "rfm_score"], DEFAULT_ALIASES)
    assert unknown.offer_id == "OF1" and unknown.feature == "tenure_dyas"
    assert unknown.closest[0] == "tenure_days"
    assert "offer 'OF1'" in unknown.message and "`tenure_dyas < 30`" in unknown.message


def test_the_service_logs_such_rules_when_it_opens_the_store(tmp_path, caplog):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.write([("C1", {"tenure_days": 3.0, "attr_loyalty_tier": "gold"})], FEATURE_SPEC_VERSION)
    source = StoreFeatureSource(
        store, _catalog({"feature": "loyalty_teir", "op": "==", "value": "gold"})
    )
    with caplog.at_level(logging.ERROR):
        source.spec_version()  # what the service checks at start
    store.close()
    [record] = [r for r in caplog.records if "loyalty_teir" in r.getMessage()]
    assert "offer 'OF1'" in record.getMessage() and "loyalty_tier" in record.getMessage()
