"""Customer features: the offer history's aggregates for a point ``(customer_id, as_of)``,
static attributes, the journey stage, rollups of per-key statistics, and the order of every
customer feature (purchase and interaction features: ``purchases``, ``interactions``)."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from features.definitions.base import (
    HORIZON_DAYS,
    POSITIVE_RESPONSES,
    PRIOR_IMPRESSIONS,
    PRIOR_POSITIVES,
    AggregateDef,
    DerivedDef,
    FeatureDef,
    RollupDef,
    response_rate,
)
from features.definitions.exprs import count, days_since, in_year, isin, num, within
from features.definitions.interactions import INTERACTION_AGGREGATES, INTERACTION_DERIVED
from features.definitions.purchases import (
    LIFETIME_AGGREGATES,
    PURCHASE_AGGREGATES,
    PURCHASE_DERIVED,
    RFM_DERIVED,
    TOP_CATEGORY,
    TOP_CATEGORY_SHARE,
    TX,
)
from recsys.contract import OFFER_TYPES

# --- offer history (decisions = impressions, outcomes = responses) ----------------------------

_OH = "decisions + outcomes + offers"


def _offer_history_aggregates() -> list[AggregateDef]:
    impr = lambda e: e.kind == "impression"  # noqa: E731
    pos = lambda e: isin(e.kind, POSITIVE_RESPONSES)  # noqa: E731
    out = [
        AggregateDef(
            num("hist_impressions_30d", "Offers shown in the 30 days before T.", _OH),
            lambda e: count(impr(e) & within(e, 30)),
        ),
        AggregateDef(
            num("hist_impressions_365d", "Offers shown in 365 days.", _OH),
            lambda e: count(in_year(e, impr(e))),
        ),
        AggregateDef(
            num("hist_clicks_365d", "Offer clicks in 365 days.", _OH),
            lambda e: count(in_year(e, e.kind == "click")),
        ),
        AggregateDef(
            num("hist_accepts_365d", "Offers accepted or converted in 365 days.", _OH),
            lambda e: count(in_year(e, pos(e))),
        ),
        AggregateDef(
            num("hist_dismissals_365d", "Offers dismissed in 365 days.", _OH),
            lambda e: count(in_year(e, e.kind == "dismiss")),
        ),
        AggregateDef(
            num(
                "hist_days_since_impression",
                "Days since any offer was last shown.",
                _OH,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: days_since(impr(e), e),
        ),
    ]
    for ot in OFFER_TYPES:
        out += [
            AggregateDef(
                num(f"hist_{ot}_impressions_90d", f"'{ot}' offers shown in 90 days.", _OH),
                lambda e, ot=ot: count(impr(e) & (e.offer_type == ot) & within(e, 90)),
            ),
            AggregateDef(
                num(f"hist_{ot}_accepts_365d", f"'{ot}' offers accepted in 365 days.", _OH),
                lambda e, ot=ot: count(in_year(e, pos(e) & (e.offer_type == ot))),
            ),
            AggregateDef(
                num(f"hist_{ot}_impressions_365d", f"'{ot}' offers shown in 365 days.", _OH),
                lambda e, ot=ot: count(in_year(e, impr(e) & (e.offer_type == ot))),
            ),
            AggregateDef(
                num(
                    f"hist_{ot}_days_since_shown",
                    f"Days since a '{ot}' offer was last shown (fatigue).",
                    _OH,
                    default=float(HORIZON_DAYS),
                    ages=True,
                ),
                lambda e, ot=ot: days_since(impr(e) & (e.offer_type == ot), e),
            ),
        ]
    return out


def _offer_history_derived() -> list[DerivedDef]:
    out = [
        DerivedDef(
            num(
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
                num(
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
    out.append(
        DerivedDef(
            num(
                "hist_discount_over_upsell",
                "Price-sensitivity proxy: smoothed log-odds of accepting a 'discount' offer minus "
                "that of an 'upsell' offer (365 days); each side log((accepts + "
                f"{PRIOR_POSITIVES}) / (impressions - accepts + {_PRIOR_NEGATIVES})); 0 without "
                "history.",
                _OH,
                default=0.0,
            ),
            lambda t: _log_odds(t, "discount") - _log_odds(t, "upsell"),
        )
    )
    return out


_PRIOR_NEGATIVES = PRIOR_IMPRESSIONS - PRIOR_POSITIVES


def _log_odds(t: ir.Table, offer_type: str) -> ir.FloatingValue:
    """Smoothed log-odds of accepting an offer of ``offer_type`` (365 days)."""
    accepts = t[f"hist_{offer_type}_accepts_365d"]
    rejects = ibis.greatest(t[f"hist_{offer_type}_impressions_365d"] - accepts, 0)
    return ((accepts + PRIOR_POSITIVES) / (rejects + _PRIOR_NEGATIVES)).ln()


# --- static attributes, consent, journey stage -------------------------------------------------

_CU = "customers"
CONSENT_COLUMNS = {
    "consent_email": "email_opt_in",
    "consent_sms": "sms_opt_in",
    "consent_push": "push_opt_in",
}
STATIC_FEATURES = (
    num(
        "tenure_days",
        "Days since the customer was created (created_at; 0 if unknown).",
        _CU,
        ages=True,
    ),
    *(
        num(name, f"1 if the customer opted in ({col}), else 0 (unknown = 0).", _CU)
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
        num("purch_categories_365d", "Distinct purchase categories in 365 days.", TX),
        "category",
        lambda s: count(s.cat_count_365d > 0),
    ),
    RollupDef(
        num("hist_offers_accepted_365d", "Distinct offers accepted in 365 days.", _OH),
        "accepted_offers",  # one row per (point, offer) with a positive response
        lambda s: s.count(),
    ),
)

OFFER_HISTORY_AGGREGATES = _offer_history_aggregates()
DERIVED = [
    *PURCHASE_DERIVED,
    *RFM_DERIVED,
    *INTERACTION_DERIVED,
    *_offer_history_derived(),
    JOURNEY_STAGE,
]


def customer_feature_defs() -> tuple[FeatureDef, ...]:
    """The customer-level features, in column order."""
    return (
        *(a.feature for a in PURCHASE_AGGREGATES),
        TOP_CATEGORY,
        TOP_CATEGORY_SHARE,
        *(a.feature for a in LIFETIME_AGGREGATES),
        *(a.feature for a in INTERACTION_AGGREGATES),
        *(a.feature for a in OFFER_HISTORY_AGGREGATES),
        *(r.feature for r in ROLLUPS),
        *(d.feature for d in DERIVED),
        *STATIC_FEATURES,
    )
