"""Purchase features: aggregates of the transactions in the horizon (counts, spend, units,
channels), the top category, lifetime aggregates over ``LIFETIME_DAYS`` and RFM scores."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from features.definitions.base import (
    CONFIG,
    DAY_SECONDS,
    HORIZON_DAYS,
    LIFETIME_DAYS,
    PURCHASE_CHANNELS,
    WINDOWS,
    AggregateDef,
    DerivedDef,
    FeatureDef,
)
from features.definitions.exprs import count, in_year, num, total, within, year_total

TX = "transactions"
LIFETIME_SOURCE = f"transactions (lifetime: {LIFETIME_DAYS} days)"


def _purchase_aggregates() -> list[AggregateDef]:
    out = [
        AggregateDef(
            num(
                "purch_days_since_last",
                "Days since the last purchase (capped at the horizon).",
                TX,
                default=float(HORIZON_DAYS),
                ages=True,
            ),
            lambda e: e.secs_ago.min() / DAY_SECONDS,
        ),
    ]
    for w in WINDOWS:
        out.append(
            AggregateDef(
                num(f"purch_count_{w}d", f"Purchases in the {w} days before T.", TX),
                lambda e, w=w: count(within(e, w)),
            )
        )
        out.append(
            AggregateDef(
                num(f"purch_amount_{w}d", f"Spend (sum of amount) in the {w} days before T.", TX),
                lambda e, w=w: total(within(e, w), e.amount),
            )
        )
    out.append(
        AggregateDef(
            num(
                "purch_units_365d",
                "Units bought in 365 days (sum of quantity; a purchase without one counts 1).",
                TX,
            ),
            lambda e: year_total(e, e.units),
        )
    )
    for ch in PURCHASE_CHANNELS:
        out.append(
            AggregateDef(
                num(f"purch_count_{ch}_365d", f"Purchases through channel '{ch}' in 365 days.", TX),
                lambda e, ch=ch: count(in_year(e, e.channel == ch)),
            )
        )
    return out


def _purchase_derived() -> list[DerivedDef]:
    out = [
        DerivedDef(
            num("purch_avg_basket_365d", "Average purchase amount in 365 days (0 if none).", TX),
            lambda t: t.purch_amount_365d / ibis.greatest(t.purch_count_365d, 1),
        ),
        DerivedDef(
            num(
                "purch_spend_trend",
                "Spend of the last 30 days over the 30-day average of "
                "days 31-90, smoothed: (s30 + 1) / ((s90 - s30) / 2 + 1).",
                TX,
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
                num(
                    f"purch_share_{ch}_365d",
                    f"Share of 365-day purchases made through '{ch}'.",
                    TX,
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
    TX,
    default=None,
)
TOP_CATEGORY_SHARE = num(
    "purch_top_category_share_365d",
    "Share of 365-day spend in the top category.",
    TX,
)

# --- lifetime: purchases of the LIFETIME_DAYS before T (columns secs_ago, amount) -------------


def _lifetime_aggregates() -> list[AggregateDef]:
    lifetime = float(LIFETIME_DAYS)
    return [
        AggregateDef(
            num("purch_lifetime_orders", f"Purchases in the {LIFETIME_DAYS} days before T.",
                LIFETIME_SOURCE),
            lambda e: e.count(),
        ),
        AggregateDef(
            num("purch_lifetime_spend", f"Spend (sum of amount) in the {LIFETIME_DAYS} days "
                "before T.", LIFETIME_SOURCE),
            lambda e: e.amount.sum(),
        ),
        AggregateDef(
            num("purch_lifetime_days_since_first", "Days since the first purchase (capped at "
                f"{LIFETIME_DAYS}).", LIFETIME_SOURCE, default=lifetime, ages=True),
            lambda e: e.secs_ago.max() / DAY_SECONDS,
        ),
        AggregateDef(
            num("purch_lifetime_days_since_last", "Days since the last purchase (capped at "
                f"{LIFETIME_DAYS}, unlike purch_days_since_last).", LIFETIME_SOURCE,
                default=lifetime, ages=True),
            lambda e: e.secs_ago.min() / DAY_SECONDS,
        ),
        AggregateDef(
            num("purch_mean_gap_days", "Mean days between consecutive purchases: (last - first) "
                f"/ (purchases - 1); {LIFETIME_DAYS} with fewer than two purchases.",
                LIFETIME_SOURCE, default=lifetime),
            lambda e: (e.count() > 1).ifelse(
                (e.secs_ago.max() - e.secs_ago.min()) / (e.count() - 1) / DAY_SECONDS,
                ibis.null("float64"),
            ),
        ),
    ]  # fmt: skip


def _score(value: ir.NumericValue, thresholds: tuple[float, ...], descending: bool) -> ir.Value:
    """1-5: ``value`` at or under each threshold scores 5, 4, 3, 2 (``descending``), or at or
    over each scores 2, 3, 4, 5."""
    if descending:
        cases = [(value <= x, 5 - i) for i, x in enumerate(thresholds)]
    else:
        cases = [(value >= x, i + 2) for i, x in reversed(list(enumerate(thresholds)))]
    return ibis.cases(*cases, else_=1).cast("float64")


def _rfm() -> list[DerivedDef]:
    rfm = CONFIG.rfm

    def recency(t: ir.Table) -> ir.Value:
        return (t.purch_lifetime_orders == 0).ifelse(
            1.0, _score(t.purch_lifetime_days_since_last, rfm.recency_days, True)
        )

    def frequency(t: ir.Table) -> ir.Value:
        return _score(t.purch_count_365d, rfm.frequency, False)

    def monetary(t: ir.Table) -> ir.Value:
        return _score(t.purch_amount_365d, rfm.monetary, False)

    return [
        DerivedDef(
            num("rfm_recency_score", "Recency score 1-5: days since the last purchase (lifetime) "
                f"<= {list(rfm.recency_days)} score 5, 4, 3, 2; else (or never) 1.", "derived",
                default=1.0),
            recency,
        ),
        DerivedDef(
            num("rfm_frequency_score", "Frequency score 1-5: 365-day purchases >= "
                f"{list(rfm.frequency)} score 2, 3, 4, 5; else 1.", "derived", default=1.0),
            frequency,
        ),
        DerivedDef(
            num("rfm_monetary_score", "Monetary score 1-5: 365-day spend >= "
                f"{list(rfm.monetary)} score 2, 3, 4, 5; else 1.", "derived", default=1.0),
            monetary,
        ),
        DerivedDef(
            num("rfm_score", "Sum of the recency, frequency and monetary scores (3-15).",
                "derived", default=3.0),
            lambda t: recency(t) + frequency(t) + monetary(t),
        ),
    ]  # fmt: skip


PURCHASE_AGGREGATES = _purchase_aggregates()
LIFETIME_AGGREGATES = _lifetime_aggregates()
PURCHASE_DERIVED = _purchase_derived()
RFM_DERIVED = _rfm()
