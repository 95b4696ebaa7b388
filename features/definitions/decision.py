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

#: Customer features the crosses read besides the statistics (0 when missing: anonymous).
CROSS_CUSTOMER_INPUTS = (
    "purch_amount_365d",
    "purch_count_365d",
    "int_count_90d",
    "int_category_events_365d",
    "int_category_views_365d",
)


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


def _days(secs: Any, o: Ops) -> Any:
    """Seconds ago as days, capped at the horizon."""
    return o.least(secs / DAY_SECONDS, float(HORIZON_DAYS))


def _share(part: Any, whole: Any, o: Ops) -> Any:
    return part / o.greatest(whole, 1.0)


#: The category taste estimate's prior: ``TASTE_PRIOR_EVENTS`` pseudo-events spread evenly
#: over ``1 / TASTE_PRIOR_SHARE`` categories (a Dirichlet(0.4) prior over 10 categories).
TASTE_PRIOR_EVENTS = 4.0
TASTE_PRIOR_SHARE = 0.1


def _taste(s: Any, o: Ops) -> Any:
    """Posterior mean share of the offer's category in the customer's purchases and views."""
    events = s["cat_count_365d"] + s["ci_views_365d"]
    total = s["purch_count_365d"] + s["int_category_views_365d"]
    return (events + TASTE_PRIOR_EVENTS * TASTE_PRIOR_SHARE) / (total + TASTE_PRIOR_EVENTS)


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
            "x_category_units_365d",
            "Units bought in the offer's category in 365 days (quantity; 1 a purchase without).",
            "transactions x offers.category",
            0.0,
        ),
        lambda s, o: s["cat_units_365d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_category_views_30d",
            "Views in the offer's category in 30 days (interactions tagged with it).",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: s["ci_views_30d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_category_views_365d",
            "Views in the offer's category in 365 days.",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: s["ci_views_365d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_category_view_share_365d",
            "Share of the customer's category-tagged views of 365 days in the offer's category.",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: _share(s["ci_views_365d"], s["int_category_views_365d"], o),
    ),
    CrossDef(
        _cross(
            "x_category_interaction_share_365d",
            "Share of the customer's category-tagged interactions of 365 days (any event "
            "type) in the offer's category.",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: _share(s["ci_events_365d"], s["int_category_events_365d"], o),
    ),
    CrossDef(
        _cross(
            "x_category_taste_365d",
            "The customer's taste for the offer's category: purchases and views in it over all "
            f"purchases and category-tagged views (365 days), smoothed towards "
            f"{TASTE_PRIOR_SHARE} with {TASTE_PRIOR_EVENTS:g} pseudo-events: (purchases + views "
            f"+ {TASTE_PRIOR_EVENTS * TASTE_PRIOR_SHARE:g}) / (all purchases + all views + "
            f"{TASTE_PRIOR_EVENTS:g}).",
            "transactions + interactions x offers.category",
            TASTE_PRIOR_EVENTS * TASTE_PRIOR_SHARE / TASTE_PRIOR_EVENTS,
        ),
        _taste,
    ),
    CrossDef(
        _cross(
            "x_category_clicks_365d",
            "Clicks in the offer's category in 365 days.",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: s["ci_clicks_365d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_category_cart_adds_365d",
            "Cart adds in the offer's category in 365 days.",
            "interactions x offers.category",
            0.0,
        ),
        lambda s, o: s["ci_cart_adds_365d"] * 1.0,
    ),
    CrossDef(
        _cross(
            "x_category_days_since_view",
            "Days since the customer last viewed the offer's category (capped at the horizon).",
            "interactions x offers.category",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: _days(s["ci_last_view_secs_ago"], o),
    ),
    CrossDef(
        _cross(
            "x_category_days_since_interaction",
            "Days since any interaction tagged with the offer's category (capped).",
            "interactions x offers.category",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: _days(s["ci_last_secs_ago"], o),
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
        lambda s, o: _days(s["offer_last_shown_secs_ago"], o),
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
        lambda s, o: _days(s["type_last_shown_secs_ago"], o),
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
    CrossDef(
        _cross(
            "x_touchpoint_interaction_share_90d",
            "Share of the customer's 90-day interactions made at this touchpoint.",
            "interactions x touchpoint",
            0.0,
        ),
        lambda s, o: _share(s["tp_interactions_90d"], s["int_count_90d"], o),
    ),
    CrossDef(
        _cross(
            "x_touchpoint_days_since_interaction",
            "Days since the customer's last interaction at this touchpoint (capped).",
            "interactions x touchpoint",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: _days(s["tp_last_interaction_secs_ago"], o),
    ),
    CrossDef(
        _cross(
            "x_channel_interaction_share_90d",
            "Share of the customer's 90-day interactions made on the touchpoint's channel.",
            "interactions x touchpoints.channel",
            0.0,
        ),
        lambda s, o: _share(s["ch_interactions_90d"], s["int_count_90d"], o),
    ),
    CrossDef(
        _cross(
            "x_channel_days_since_interaction",
            "Days since the customer's last interaction on the touchpoint's channel (capped).",
            "interactions x touchpoints.channel",
            float(HORIZON_DAYS),
            ages=True,
        ),
        lambda s, o: _days(s["ch_last_interaction_secs_ago"], o),
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
#: The request context x the offer: the page (or search, or campaign) a customer is on names a
#: category, and offers of that category are the ones that page is about.
CONTEXT_CATEGORY_MATCH = FeatureDef(
    "x_context_category_match",
    "numeric",
    "1 if a value of the request context equals the offer's category (e.g. the category of "
    "the page the customer is on), else 0.",
    "cross: decisions.context x offers.category",
    "cross",
    0.0,
)
