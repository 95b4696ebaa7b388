"""Customer features: aggregates of each event source for a point ``(customer_id, as_of)``,
the features derived from them, rollups of per-key statistics, and static attributes."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from features.definitions.base import (
    COMPLAINT_EVENTS,
    DAY_SECONDS,
    DECISION_STAGE,
    HORIZON_DAYS,
    NPS_EVENTS,
    POSITIVE_RESPONSES,
    PRIOR_IMPRESSIONS,
    PRIOR_POSITIVES,
    PURCHASE_CHANNELS,
    REVIEW_EVENTS,
    TICKET_EVENTS,
    WINDOWS,
    AggregateDef,
    DerivedDef,
    FeatureDef,
    Group,
    RollupDef,
    response_rate,
)
from recsys.contract import CHANNELS, OFFER_TYPES

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
