"""Inputs of a decision row beyond the customer's features: the customer x offer / touchpoint
crosses (with the per-key statistics behind them), and offer, touchpoint and request attributes.

Crosses are written once as functions of an ``Ops`` adapter so the same formula runs on Ibis
columns (training sets) and on numpy arrays (serving).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ibis
import numpy as np

from features.definitions.base import (
    DAY_SECONDS,
    HORIZON_DAYS,
    PRIOR_IMPRESSIONS,
    PRIOR_POSITIVES,
    FeatureDef,
    response_rate,
)

# The pipeline aggregates these per (point, key); the online store keeps them as small maps
# (key -> list of values, in this order) so serving computes crosses exactly as training does.

CATEGORY_STATS = ("cat_amount_365d", "cat_count_365d")
OFFER_STATS = (
    "offer_impressions_30d",
    "offer_impressions_365d",
    "offer_accepts_365d",
    "offer_last_shown_secs_ago",
)
OFFER_TYPE_STATS = ("type_impressions_365d", "type_accepts_365d", "type_last_shown_secs_ago")
STAT_DEFAULTS = {
    "cat_amount_365d": 0.0,
    "cat_count_365d": 0.0,
    "offer_impressions_30d": 0.0,
    "offer_impressions_365d": 0.0,
    "offer_accepts_365d": 0.0,
    "offer_last_shown_secs_ago": float(HORIZON_DAYS * DAY_SECONDS),
    "type_impressions_365d": 0.0,
    "type_accepts_365d": 0.0,
    "type_last_shown_secs_ago": float(HORIZON_DAYS * DAY_SECONDS),
    "tp_impressions_365d": 0.0,
    "tp_accepts_365d": 0.0,
    "tp_interactions_90d": 0.0,
}


@dataclass(frozen=True)
class Ops:
    """The few functions crosses need, for Ibis columns or numpy arrays."""

    greatest: Callable[[Any, Any], Any]
    least: Callable[[Any, Any], Any]


IBIS_OPS = Ops(greatest=ibis.greatest, least=ibis.least)
NUMPY_OPS = Ops(greatest=np.maximum, least=np.minimum)


@dataclass(frozen=True)
class CrossDef:
    """``build(s, ops)``: ``s`` maps stat names (above, plus customer features) to columns."""

    feature: FeatureDef
    build: Callable[[Any, Ops], Any]


_X = "cross"


def _cross(name: str, description: str, source: str, default: float, ages: bool = False):
    return FeatureDef(name, "numeric", description, f"{_X}: {source}", "cross", default, ages)


CROSSES = (
    CrossDef(
        _cross(
            "x_category_spend_share_365d",
            "Share of the customer's 365-day spend in the offer's category (affinity).",
            "transactions x offers.category",
            0.0,
        ),
        lambda s, o: s["cat_amount_365d"] / o.greatest(s["purch_amount_365d"], 1e-9),
    ),
    CrossDef(
        _cross(
            "x_category_purchases_365d",
            "Purchases in the offer's category in 365 days.",
            "transactions x offers.category",
            0.0,
        ),
        lambda s, o: s["cat_count_365d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_offer_impressions_30d",
            "Times this offer was shown to the customer in 30 days (fatigue).",
            "decisions x offer",
            0.0,
        ),
        lambda s, o: s["offer_impressions_30d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_offer_response_rate",
            "Smoothed accept rate of this offer for the customer (365 days).",
            "decisions + outcomes x offer",
            PRIOR_POSITIVES / PRIOR_IMPRESSIONS,
        ),
        lambda s, o: response_rate(s["offer_accepts_365d"], s["offer_impressions_365d"]),
    ),
    CrossDef(
        _cross(
            "x_offer_days_since_shown",
            "Days since this offer was last shown to the customer (capped at the horizon).",
            "decisions x offer",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: o.least(s["offer_last_shown_secs_ago"] / DAY_SECONDS, float(HORIZON_DAYS)),
    ),
    CrossDef(
        _cross(
            "x_offer_type_response_rate",
            "Smoothed accept rate of the offer's type for the customer (365 days).",
            "decisions + outcomes x offers.offer_type",
            PRIOR_POSITIVES / PRIOR_IMPRESSIONS,
        ),
        lambda s, o: response_rate(s["type_accepts_365d"], s["type_impressions_365d"]),
    ),
    CrossDef(
        _cross(
            "x_offer_type_days_since_shown",
            "Days since an offer of this type was last shown (capped).",
            "decisions x offers.offer_type",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: o.least(s["type_last_shown_secs_ago"] / DAY_SECONDS, float(HORIZON_DAYS)),
    ),
    CrossDef(
        _cross(
            "x_touchpoint_response_rate",
            "Smoothed accept rate of offers at this touchpoint for the customer (365 days).",
            "decisions + outcomes x touchpoint",
            PRIOR_POSITIVES / PRIOR_IMPRESSIONS,
        ),
        lambda s, o: response_rate(s["tp_accepts_365d"], s["tp_impressions_365d"]),
    ),
    CrossDef(
        _cross(
            "x_touchpoint_interactions_90d",
            "The customer's interactions at this touchpoint in 90 days.",
            "interactions x touchpoint",
            0.0,
        ),
        lambda s, o: s["tp_interactions_90d"] * 1.0,
    ),
)

# --- offer, touchpoint and request attributes --------------------------------------------------

OFFER_FEATURES = (
    FeatureDef("offer_id", "categorical", "The offer.", "offers", "offer"),
    FeatureDef(
        "offer_type", "categorical", "Offer type (discount, cross_sell, ...).", "offers", "offer"
    ),
    FeatureDef("offer_category", "categorical", "Offer category.", "offers", "offer"),
    FeatureDef(
        "offer_value", "numeric", "Offer value to the business (default 1).", "offers", "offer", 1.0
    ),
)
TOUCHPOINT_FEATURES = (
    FeatureDef("touchpoint_id", "categorical", "The touchpoint.", "touchpoints", "touchpoint"),
    FeatureDef("tp_channel", "categorical", "Touchpoint channel.", "touchpoints", "touchpoint"),
    FeatureDef(
        "tp_stage",
        "categorical",
        "Journey stage the touchpoint serves.",
        "touchpoints",
        "touchpoint",
    ),
)
REQUEST_FEATURES = (
    FeatureDef(
        "req_hour", "numeric", "Hour of day (UTC) of the decision.", "decisions.ts", "request"
    ),
    FeatureDef(
        "req_dow", "numeric", "Day of week of the decision (Monday = 0).", "decisions.ts", "request"
    ),
)
CONTEXT_PREFIX = "ctx_"  # every key of decisions.context becomes ctx_<key>
