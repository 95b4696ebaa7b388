"""Interaction features: aggregates of the interactions in the horizon (joined to their
touchpoints' channel and stage), by event role (``features.config`` event vocabulary), channel
and category tag, and the features derived from them."""

from __future__ import annotations

import ibis

from features.definitions.base import (
    CART_EVENTS,
    CLICK_EVENTS,
    COMPLAINT_EVENTS,
    CONTACT_EVENTS,
    DECISION_STAGE,
    EMAIL_OPEN_EVENTS,
    HORIZON_DAYS,
    NPS_EVENTS,
    REVIEW_EVENTS,
    TICKET_EVENTS,
    VIEW_EVENTS,
    VISIT_EVENTS,
    WINDOWS,
    AggregateDef,
    DerivedDef,
)
from features.definitions.exprs import count, days_since, in_year, isin, num, within
from recsys.contract import CHANNELS

IN = "interactions + touchpoints"
_HORIZON = float(HORIZON_DAYS)


def _names(events: tuple[str, ...]) -> str:
    return ", ".join(events)


def _interaction_aggregates() -> list[AggregateDef]:
    out = [
        AggregateDef(
            num(
                "int_days_since_last",
                "Days since the last interaction of any kind.",
                IN,
                default=_HORIZON,
                ages=True,
            ),
            lambda e: e.secs_ago.min() / 86_400,
        ),
    ]
    for w in WINDOWS:
        out.append(
            AggregateDef(
                num(f"int_count_{w}d", f"Interactions in the {w} days before T.", IN),
                lambda e, w=w: count(within(e, w)),
            )
        )
    for ch in CHANNELS:
        out.append(
            AggregateDef(
                num(f"int_{ch}_count_90d", f"Interactions on channel '{ch}' in 90 days.", IN),
                lambda e, ch=ch: count((e.channel == ch) & within(e, 90)),
            )
        )
        out.append(
            AggregateDef(
                num(
                    f"int_{ch}_days_since",
                    f"Days since the last touch on channel '{ch}'.",
                    IN,
                    default=_HORIZON,
                    ages=True,
                ),
                lambda e, ch=ch: days_since(e.channel == ch, e),
            )
        )
    out += [
        AggregateDef(
            num("int_complaints_30d", f"Complaints ({_names(COMPLAINT_EVENTS)}) in 30 days.", IN),
            lambda e: count(isin(e.event_type, COMPLAINT_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num(
                "int_tickets_30d",
                f"Support tickets / complaints ({_names(TICKET_EVENTS)}) in 30 days.",
                IN,
            ),
            lambda e: count(isin(e.event_type, TICKET_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num("int_reviews_365d", f"Reviews ({_names(REVIEW_EVENTS)}) in 365 days.", IN),
            lambda e: count(in_year(e, isin(e.event_type, REVIEW_EVENTS))),
        ),
        AggregateDef(
            num("int_review_avg_365d", "Average review rating (value) in 365 days; 0 if none.", IN),
            lambda e: (
                in_year(e, isin(e.event_type, REVIEW_EVENTS))
                .ifelse(e.value, ibis.null("float64"))
                .mean()
            ),
        ),
        AggregateDef(
            num(
                "int_nps_last",
                f"Last NPS / survey score (value, 0-10) before T ({_names(NPS_EVENTS)}); -1 if "
                "never answered.",
                IN,
                default=-1.0,
            ),
            lambda e: e.value.argmin(
                e.secs_ago, where=isin(e.event_type, NPS_EVENTS) & e.value.notnull()
            ),
        ),
        AggregateDef(
            num(
                "int_nps_days_since",
                "Days since the last NPS / survey answer.",
                IN,
                default=_HORIZON,
                ages=True,
            ),
            lambda e: days_since(isin(e.event_type, NPS_EVENTS) & e.value.notnull(), e),
        ),
        AggregateDef(
            num(
                "int_decision_stage_7d",
                "Interactions on decision-stage touchpoints (cart, checkout) in 7 days.",
                IN,
            ),
            lambda e: count((e.tp_stage == DECISION_STAGE) & within(e, 7)),
        ),
    ]
    return out + _role_aggregates()


def _role_aggregates() -> list[AggregateDef]:
    """Counts by event role (views, clicks, cart adds, visits, contacts, e-mail opens) and of
    interactions tagged with a category (the denominators of the category shares)."""
    views = lambda e: isin(e.event_type, VIEW_EVENTS)  # noqa: E731
    carts = lambda e: isin(e.event_type, CART_EVENTS)  # noqa: E731
    out = [
        AggregateDef(
            num(f"int_views_{w}d", f"Views ({_names(VIEW_EVENTS)}) in {w} days.", IN),
            lambda e, w=w: count(views(e) & within(e, w)),
        )
        for w in WINDOWS
    ]
    out += [
        AggregateDef(
            num("int_days_since_view", "Days since the last view.", IN, default=_HORIZON,
                ages=True),
            lambda e: days_since(views(e), e),
        ),
        AggregateDef(
            num("int_clicks_30d", f"Clicks ({_names(CLICK_EVENTS)}) in 30 days.", IN),
            lambda e: count(isin(e.event_type, CLICK_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num("int_clicks_365d", "Clicks in 365 days.", IN),
            lambda e: count(in_year(e, isin(e.event_type, CLICK_EVENTS))),
        ),
        AggregateDef(
            num("int_cart_adds_30d", f"Cart adds ({_names(CART_EVENTS)}) in 30 days.", IN),
            lambda e: count(carts(e) & within(e, 30)),
        ),
        AggregateDef(
            num("int_cart_adds_365d", "Cart adds in 365 days.", IN),
            lambda e: count(in_year(e, carts(e))),
        ),
        AggregateDef(
            num("int_days_since_cart_add", "Days since the last cart add.", IN, default=_HORIZON,
                ages=True),
            lambda e: days_since(carts(e), e),
        ),
        AggregateDef(
            num("int_visits_30d", f"Visits ({_names(VISIT_EVENTS)}) in 30 days.", IN),
            lambda e: count(isin(e.event_type, VISIT_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num("int_contacts_30d", f"Contacts ({_names(CONTACT_EVENTS)}) in 30 days.", IN),
            lambda e: count(isin(e.event_type, CONTACT_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num("int_email_opens_30d", f"E-mail opens ({_names(EMAIL_OPEN_EVENTS)}) in 30 days.",
                IN),
            lambda e: count(isin(e.event_type, EMAIL_OPEN_EVENTS) & within(e, 30)),
        ),
        AggregateDef(
            num("int_category_events_365d", "Interactions tagged with a category in 365 days.",
                IN),
            lambda e: count(in_year(e, e.category.notnull())),
        ),
        AggregateDef(
            num("int_category_views_365d", "Views tagged with a category in 365 days.", IN),
            lambda e: count(in_year(e, views(e) & e.category.notnull())),
        ),
    ]  # fmt: skip
    return out


def _interaction_derived() -> list[DerivedDef]:
    return [
        DerivedDef(
            num(
                "int_engagement_trend",
                "Interactions of the last 30 days over the 30-day "
                "average of days 31-90, smoothed: (n30 + 1) / ((n90 - n30) / 2 + 1).",
                IN,
                default=1.0,
            ),
            lambda t: (t.int_count_30d + 1.0) / ((t.int_count_90d - t.int_count_30d) / 2.0 + 1.0),
        ),
    ]


INTERACTION_AGGREGATES = _interaction_aggregates()
INTERACTION_DERIVED = _interaction_derived()
