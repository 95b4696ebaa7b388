"""The feature definitions: each feature once, as an Ibis expression plus its metadata.

Every customer feature is computed for a *point* ``(customer_id, as_of)`` from events with
``as_of - HORIZON_DAYS <= ts < as_of`` (strictly before ``as_of``). The pipeline
(``features.pipeline``) joins points to each event source and hands the joined table to the
aggregate definitions below; derived features are then computed from the aggregates. The same
expressions run on DuckDB and on Spark (Ibis compiles them), for one point per customer (serving,
``as_of = now``) or for one point per logged decision (training sets).

Crosses (customer x offer / touchpoint) are written once as functions of an ``Ops`` adapter so
the same formula runs on Ibis columns (training sets) and on numpy arrays (serving).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import ibis
import ibis.expr.types as ir
import numpy as np

from recsys.contract import CHANNELS, OFFER_TYPES

HORIZON_DAYS = 365  # history older than this is not looked at (like a Feast ttl)
DAY_SECONDS = 86_400
WINDOWS = (30, 90, 365)
# Response rates are smoothed towards a prior of 0.1 with the weight of 5 impressions.
PRIOR_POSITIVES = 0.5
PRIOR_IMPRESSIONS = 5.0
POSITIVE_RESPONSES = ("accept", "convert")  # what counts as an accepted offer in the history
PURCHASE_CHANNELS = ("store", "web", "app")
COMPLAINT_EVENTS = ("complaint",)
TICKET_EVENTS = ("support_ticket", "ticket", "support", "complaint")
REVIEW_EVENTS = ("review",)
NPS_EVENTS = ("nps", "nps_answer", "nps_response", "nps_survey")
DECISION_STAGE = "decision"

Kind = Literal["numeric", "categorical"]
Group = Literal["customer", "offer", "touchpoint", "cross", "request"]


@dataclass(frozen=True)
class FeatureDef:
    """One model input: its name, kind, meaning and where it comes from.

    ``default`` is the value of a customer without any history (the cold-start vector);
    ``ages`` marks "days since ..." features, which grow with elapsed time (serving adds the
    days elapsed since the vector was materialised, capped at ``HORIZON_DAYS``).
    """

    name: str
    kind: Kind
    description: str
    source: str
    group: Group = "customer"
    default: float | str | None = None
    ages: bool = False


@dataclass(frozen=True)
class AggregateDef:
    """An aggregate over one source joined to points; ``build(events) -> scalar expression``."""

    feature: FeatureDef
    build: Callable[[ir.Table], ir.Value]


@dataclass(frozen=True)
class DerivedDef:
    """A feature computed from the aggregates of a point; ``build(table) -> column``."""

    feature: FeatureDef
    build: Callable[[ir.Table], ir.Value]


@dataclass(frozen=True)
class RollupDef:
    """A customer feature aggregated from a per-(point, key) statistics table.

    ``table``: "category" (per-category spend) or "accepted_offers" (offers with a positive
    response); ``build(stats) -> aggregate``.
    (Cheaper than a COUNT DISTINCT over the joined events.)
    """

    feature: FeatureDef
    table: str
    build: Callable[[ir.Table], ir.Value]


# --- helpers over a joined event table (columns: secs_ago, plus the source's columns) ---------


def _within(e: ir.Table, days: int) -> ir.BooleanValue:
    return e.secs_ago <= days * DAY_SECONDS


def _count(cond: ir.BooleanValue) -> ir.IntegerValue:
    return cond.ifelse(1, 0).sum()


def _sum(cond: ir.BooleanValue, value: ir.NumericValue) -> ir.NumericValue:
    return cond.ifelse(value, 0.0).sum()


def _days_since(cond: ir.BooleanValue, e: ir.Table) -> ir.NumericValue:
    """Days since the last event matching ``cond`` (null when none; the default fills it)."""
    return cond.ifelse(e.secs_ago, ibis.null("int64")).min() / DAY_SECONDS


def _num(
    name: str,
    description: str,
    source: str,
    default: float = 0.0,
    ages: bool = False,
    group: Group = "customer",
) -> FeatureDef:
    return FeatureDef(name, "numeric", description, source, group, default, ages)


def _isin(col: ir.StringValue, values: tuple[str, ...]) -> ir.BooleanValue:
    return col.isin(list(values))


# --- purchases (transactions) ------------------------------------------------------------------

_TX = "transactions"


def _purchase_aggregates() -> list[AggregateDef]:
    out = [
        AggregateDef(
            _num(
                "purch_days_since_last",
                "Days since the last purchase (capped at the horizon).",
                _TX,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: e.secs_ago.min() / DAY_SECONDS,
        ),
    ]
    for w in WINDOWS:
        out.append(
            AggregateDef(
                _num(f"purch_count_{w}d", f"Purchases in the {w} days before T.", _TX),
                lambda e, w=w: _count(_within(e, w)),
            )
        )
        out.append(
            AggregateDef(
                _num(f"purch_amount_{w}d", f"Spend (sum of amount) in the {w} days before T.", _TX),
                lambda e, w=w: _sum(_within(e, w), e.amount),
            )
        )
    for ch in PURCHASE_CHANNELS:
        out.append(
            AggregateDef(
                _num(
                    f"purch_count_{ch}_365d", f"Purchases through channel '{ch}' in 365 days.", _TX
                ),
                lambda e, ch=ch: _count(e.channel == ch),
            )
        )
    return out


def _purchase_derived() -> list[DerivedDef]:
    out = [
        DerivedDef(
            _num("purch_avg_basket_365d", "Average purchase amount in 365 days (0 if none).", _TX),
            lambda t: t.purch_amount_365d / ibis.greatest(t.purch_count_365d, 1),
        ),
        DerivedDef(
            _num(
                "purch_spend_trend",
                "Spend of the last 30 days over the 30-day average of "
                "days 31-90, smoothed: (s30 + 1) / ((s90 - s30) / 2 + 1).",
                _TX,
                default=1.0,
            ),
            lambda t: (
                (t.purch_amount_30d + 1.0) / ((t.purch_amount_90d - t.purch_amount_30d) / 2.0 + 1.0)
            ),
        ),
    ]
    for ch in PURCHASE_CHANNELS:
        out.append(
            DerivedDef(
                _num(
                    f"purch_share_{ch}_365d",
                    f"Share of 365-day purchases made through '{ch}'.",
                    _TX,
                ),
                lambda t, ch=ch: t[f"purch_count_{ch}_365d"] / ibis.greatest(t.purch_count_365d, 1),
            )
        )
    return out


# The top category needs a per-(point, category) aggregate first; see features.pipeline.
TOP_CATEGORY = FeatureDef(
    "purch_top_category_365d",
    "categorical",
    "Category with the highest 365-day spend (ties: alphabetical first); null if none.",
    _TX,
    default=None,
)
TOP_CATEGORY_SHARE = _num(
    "purch_top_category_share_365d",
    "Share of 365-day spend in the top category.",
    _TX,
)

# --- interactions (interactions x touchpoints) -------------------------------------------------

_IN = "interactions + touchpoints"


def _interaction_aggregates() -> list[AggregateDef]:
    out = [
        AggregateDef(
            _num(
                "int_days_since_last",
                "Days since the last interaction of any kind.",
                _IN,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: e.secs_ago.min() / DAY_SECONDS,
        ),
    ]
    for w in WINDOWS:
        out.append(
            AggregateDef(
                _num(f"int_count_{w}d", f"Interactions in the {w} days before T.", _IN),
                lambda e, w=w: _count(_within(e, w)),
            )
        )
    for ch in CHANNELS:
        out.append(
            AggregateDef(
                _num(f"int_{ch}_count_90d", f"Interactions on channel '{ch}' in 90 days.", _IN),
                lambda e, ch=ch: _count((e.channel == ch) & _within(e, 90)),
            )
        )
        out.append(
            AggregateDef(
                _num(
                    f"int_{ch}_days_since",
                    f"Days since the last touch on channel '{ch}'.",
                    _IN,
                    default=float(HORIZON_DAYS),
                    ages=True,
                ),
                lambda e, ch=ch: _days_since(e.channel == ch, e),
            )
        )
    out += [
        AggregateDef(
            _num(
                "int_complaints_30d", f"Complaints ({', '.join(COMPLAINT_EVENTS)}) in 30 days.", _IN
            ),
            lambda e: _count(_isin(e.event_type, COMPLAINT_EVENTS) & _within(e, 30)),
        ),
        AggregateDef(
            _num(
                "int_tickets_30d",
                f"Support tickets / complaints ({', '.join(TICKET_EVENTS)}) in 30 days.",
                _IN,
            ),
            lambda e: _count(_isin(e.event_type, TICKET_EVENTS) & _within(e, 30)),
        ),
        AggregateDef(
            _num("int_reviews_365d", "Reviews written in 365 days.", _IN),
            lambda e: _count(_isin(e.event_type, REVIEW_EVENTS)),
        ),
        AggregateDef(
            _num(
                "int_review_avg_365d", "Average review rating (value) in 365 days; 0 if none.", _IN
            ),
            lambda e: (
                _isin(e.event_type, REVIEW_EVENTS).ifelse(e.value, ibis.null("float64")).mean()
            ),
        ),
        AggregateDef(
            _num(
                "int_nps_last",
                "Last NPS score (0-10) before T; -1 if never answered.",
                _IN,
                default=-1.0,
            ),
            lambda e: e.value.argmin(e.secs_ago, where=_isin(e.event_type, NPS_EVENTS)),
        ),
        AggregateDef(
            _num(
                "int_nps_days_since",
                "Days since the last NPS answer.",
                _IN,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: _days_since(_isin(e.event_type, NPS_EVENTS), e),
        ),
        AggregateDef(
            _num(
                "int_decision_stage_7d",
                "Interactions on decision-stage touchpoints (cart, checkout) in 7 days.",
                _IN,
            ),
            lambda e: _count((e.tp_stage == DECISION_STAGE) & _within(e, 7)),
        ),
    ]
    return out


def _interaction_derived() -> list[DerivedDef]:
    return [
        DerivedDef(
            _num(
                "int_engagement_trend",
                "Interactions of the last 30 days over the 30-day "
                "average of days 31-90, smoothed: (n30 + 1) / ((n90 - n30) / 2 + 1).",
                _IN,
                default=1.0,
            ),
            lambda t: (t.int_count_30d + 1.0) / ((t.int_count_90d - t.int_count_30d) / 2.0 + 1.0),
        ),
    ]


# --- offer history (decisions = impressions, outcomes = responses) ----------------------------

_OH = "decisions + outcomes + offers"


def response_rate(positives: Any, impressions: Any) -> Any:
    """Smoothed response rate; works on Ibis columns and numpy arrays alike."""
    return (positives + PRIOR_POSITIVES) / (impressions + PRIOR_IMPRESSIONS)


def _offer_history_aggregates() -> list[AggregateDef]:
    impr = lambda e: e.kind == "impression"  # noqa: E731
    pos = lambda e: _isin(e.kind, POSITIVE_RESPONSES)  # noqa: E731
    out = [
        AggregateDef(
            _num("hist_impressions_30d", "Offers shown in the 30 days before T.", _OH),
            lambda e: _count(impr(e) & _within(e, 30)),
        ),
        AggregateDef(
            _num("hist_impressions_365d", "Offers shown in 365 days.", _OH),
            lambda e: _count(impr(e)),
        ),
        AggregateDef(
            _num("hist_clicks_365d", "Offer clicks in 365 days.", _OH),
            lambda e: _count(e.kind == "click"),
        ),
        AggregateDef(
            _num("hist_accepts_365d", "Offers accepted or converted in 365 days.", _OH),
            lambda e: _count(pos(e)),
        ),
        AggregateDef(
            _num("hist_dismissals_365d", "Offers dismissed in 365 days.", _OH),
            lambda e: _count(e.kind == "dismiss"),
        ),
        AggregateDef(
            _num(
                "hist_days_since_impression",
                "Days since any offer was last shown.",
                _OH,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: _days_since(impr(e), e),
        ),
    ]
    for ot in OFFER_TYPES:
        out += [
            AggregateDef(
                _num(f"hist_{ot}_impressions_90d", f"'{ot}' offers shown in 90 days.", _OH),
                lambda e, ot=ot: _count(impr(e) & (e.offer_type == ot) & _within(e, 90)),
            ),
            AggregateDef(
                _num(f"hist_{ot}_accepts_365d", f"'{ot}' offers accepted in 365 days.", _OH),
                lambda e, ot=ot: _count(pos(e) & (e.offer_type == ot)),
            ),
            AggregateDef(
                _num(f"hist_{ot}_impressions_365d", f"'{ot}' offers shown in 365 days.", _OH),
                lambda e, ot=ot: _count(impr(e) & (e.offer_type == ot)),
            ),
            AggregateDef(
                _num(
                    f"hist_{ot}_days_since_shown",
                    f"Days since a '{ot}' offer was last shown (fatigue).",
                    _OH,
                    default=float(HORIZON_DAYS),
                    ages=True,
                ),
                lambda e, ot=ot: _days_since(impr(e) & (e.offer_type == ot), e),
            ),
        ]
    return out


def _offer_history_derived() -> list[DerivedDef]:
    out = [
        DerivedDef(
            _num(
                "hist_response_rate",
                "Smoothed accept rate over all offers shown in 365 days: "
                f"(accepts + {PRIOR_POSITIVES}) / (impressions + {PRIOR_IMPRESSIONS}).",
                _OH,
                default=PRIOR_POSITIVES / PRIOR_IMPRESSIONS,
            ),
            lambda t: response_rate(t.hist_accepts_365d, t.hist_impressions_365d),
        ),
    ]
    for ot in OFFER_TYPES:
        out.append(
            DerivedDef(
                _num(
                    f"hist_{ot}_response_rate",
                    f"Smoothed accept rate of '{ot}' offers (365 days).",
                    _OH,
                    default=PRIOR_POSITIVES / PRIOR_IMPRESSIONS,
                ),
                lambda t, ot=ot: response_rate(
                    t[f"hist_{ot}_accepts_365d"], t[f"hist_{ot}_impressions_365d"]
                ),
            )
        )
    return out


# --- static attributes, consent, journey stage -------------------------------------------------

_CU = "customers"
CONSENT_COLUMNS = {
    "consent_email": "email_opt_in",
    "consent_sms": "sms_opt_in",
    "consent_push": "push_opt_in",
}
STATIC_FEATURES = (
    _num(
        "tenure_days",
        "Days since the customer was created (created_at; 0 if unknown).",
        _CU,
        ages=True,
    ),
    *(
        _num(name, f"1 if the customer opted in ({col}), else 0 (unknown = 0).", _CU)
        for name, col in CONSENT_COLUMNS.items()
    ),
)
ATTRIBUTE_PREFIX = "attr_"  # every extra customers column becomes attr_<column>


def _journey_stage(t: ir.Table) -> ir.StringValue:
    return ibis.cases(
        ((t.int_complaints_30d + t.int_tickets_30d) > 0, "service"),
        (t.purch_days_since_last <= 14, "post_purchase"),
        (t.int_decision_stage_7d > 0, "decision"),
        ((t.purch_count_365d > 0) | (t.int_count_30d >= 3), "consideration"),
        else_="awareness",
    )


JOURNEY_STAGE = DerivedDef(
    FeatureDef(
        "journey_stage",
        "categorical",
        "Journey stage, first rule that matches: complaint/ticket in 30 days -> service; "
        "purchase in 14 days -> post_purchase; decision-stage touchpoint in 7 days -> decision; "
        "any purchase in 365 days or >= 3 interactions in 30 days -> consideration; "
        "else awareness.",
        "derived",
        default="awareness",
    ),
    _journey_stage,
)

ROLLUPS = (
    RollupDef(
        _num("purch_categories_365d", "Distinct purchase categories in 365 days.", _TX),
        "category",
        lambda s: s.count(),
    ),
    RollupDef(
        _num("hist_offers_accepted_365d", "Distinct offers accepted in 365 days.", _OH),
        "accepted_offers",  # one row per (point, offer) with a positive response
        lambda s: s.count(),
    ),
)

PURCHASE_AGGREGATES = _purchase_aggregates()
INTERACTION_AGGREGATES = _interaction_aggregates()
OFFER_HISTORY_AGGREGATES = _offer_history_aggregates()
DERIVED = [*_purchase_derived(), *_interaction_derived(), *_offer_history_derived(), JOURNEY_STAGE]

# --- per-key statistics behind the crosses, and the crosses themselves -------------------------
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
TOUCHPOINT_STATS = ("tp_impressions_365d", "tp_accepts_365d", "tp_interactions_90d")
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


def customer_feature_defs() -> tuple[FeatureDef, ...]:
    """The customer-level features, in column order."""
    return (
        *(a.feature for a in PURCHASE_AGGREGATES),
        TOP_CATEGORY,
        TOP_CATEGORY_SHARE,
        *(a.feature for a in INTERACTION_AGGREGATES),
        *(a.feature for a in OFFER_HISTORY_AGGREGATES),
        *(r.feature for r in ROLLUPS),
        *(d.feature for d in DERIVED),
        *STATIC_FEATURES,
    )


def all_feature_defs() -> tuple[FeatureDef, ...]:
    """Every fixed model input (customer, offer, touchpoint, crosses, request), in order.

    Customer attributes (``attr_*``) and request context keys (``ctx_*``) come from the data
    and are fixed by the encoding a model carries (``features.matrix.Encoding``).
    """
    return (
        *customer_feature_defs(),
        *OFFER_FEATURES,
        *TOUCHPOINT_FEATURES,
        *(c.feature for c in CROSSES),
        *REQUEST_FEATURES,
    )
