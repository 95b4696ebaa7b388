"""Per-(point, key) statistics: what the crosses read at the offer's (or touchpoint's) key.

The pipeline aggregates each table per point and key; the online store keeps them as small
maps (key -> list of values, in the table's order) so serving computes crosses exactly as the
training set does. A statistic's ``build`` aggregates the joined events of one (point, key);
``default`` is its value for a key without events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ibis.expr.types as ir

from features.definitions.base import (
    CART_EVENTS,
    CLICK_EVENTS,
    DAY_SECONDS,
    HORIZON_DAYS,
    POSITIVE_RESPONSES,
    VIEW_EVENTS,
)
from features.definitions.exprs import in_year, isin, secs_since, within, year_count, year_total

NEVER_SECS = float(HORIZON_DAYS * DAY_SECONDS)  # "last ... secs ago" of a key without events


@dataclass(frozen=True)
class StatDef:
    name: str
    default: float
    build: Callable[[ir.Table], ir.Value]


@dataclass(frozen=True)
class StatTable:
    """A per-(point, key) statistics table: the key column and the statistics it carries.

    ``offer_key``: the training-set / serving column it is matched on (an offer's column, or
    ``touchpoint_id`` / ``tp_channel`` of the request's touchpoint); ``source``: the
    ``features.pipeline.Sources`` table it aggregates.
    """

    key: str
    offer_key: str
    source: str
    defs: tuple[StatDef, ...]

    @property
    def stats(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.defs)


def _n(cond: ir.BooleanValue) -> ir.FloatingValue:
    return cond.ifelse(1.0, 0.0).sum()


def _impr(e: ir.Table) -> ir.BooleanValue:
    return e.kind == "impression"


def _pos(e: ir.Table) -> ir.BooleanValue:
    return isin(e.kind, POSITIVE_RESPONSES)


def _views(e: ir.Table) -> ir.BooleanValue:
    return isin(e.event_type, VIEW_EVENTS)


STAT_TABLES: dict[str, StatTable] = {
    "category": StatTable("category", "offer_category", "purchases", (
        StatDef("cat_amount_365d", 0.0, lambda e: year_total(e, e.amount)),
        StatDef("cat_count_365d", 0.0, lambda e: year_count(e).cast("float64")),
        StatDef("cat_units_365d", 0.0, lambda e: year_total(e, e.units)),
    )),
    "category_interactions": StatTable("category", "offer_category", "touches", (
        StatDef("ci_views_30d", 0.0, lambda e: _n(_views(e) & within(e, 30))),
        StatDef("ci_views_365d", 0.0, lambda e: _n(in_year(e, _views(e)))),
        StatDef("ci_clicks_365d", 0.0, lambda e: _n(in_year(e, isin(e.event_type, CLICK_EVENTS)))),
        StatDef("ci_cart_adds_365d", 0.0,
                lambda e: _n(in_year(e, isin(e.event_type, CART_EVENTS)))),
        StatDef("ci_events_365d", 0.0, lambda e: year_count(e).cast("float64")),
        StatDef("ci_last_view_secs_ago", NEVER_SECS, lambda e: secs_since(_views(e), e)),
        StatDef("ci_last_secs_ago", NEVER_SECS, lambda e: e.secs_ago.min().cast("float64")),
    )),
    "offer": StatTable("offer_id", "offer_id", "offer_log", (
        StatDef("offer_impressions_30d", 0.0, lambda e: _n(_impr(e) & within(e, 30))),
        StatDef("offer_impressions_365d", 0.0, lambda e: _n(in_year(e, _impr(e)))),
        StatDef("offer_accepts_365d", 0.0, lambda e: _n(in_year(e, _pos(e)))),
        StatDef("offer_last_shown_secs_ago", NEVER_SECS, lambda e: secs_since(_impr(e), e)),
    )),
    "offer_type": StatTable("offer_type", "offer_type", "offer_log", (
        StatDef("type_impressions_365d", 0.0, lambda e: _n(in_year(e, _impr(e)))),
        StatDef("type_accepts_365d", 0.0, lambda e: _n(in_year(e, _pos(e)))),
        StatDef("type_last_shown_secs_ago", NEVER_SECS, lambda e: secs_since(_impr(e), e)),
    )),
    "touchpoint_offers": StatTable("touchpoint_id", "touchpoint_id", "offer_log", (
        StatDef("tp_impressions_365d", 0.0, lambda e: _n(in_year(e, _impr(e)))),
        StatDef("tp_accepts_365d", 0.0, lambda e: _n(in_year(e, _pos(e)))),
    )),
    "touchpoint_interactions": StatTable("touchpoint_id", "touchpoint_id", "touches", (
        StatDef("tp_interactions_90d", 0.0, lambda e: _n(within(e, 90))),
        StatDef("tp_last_interaction_secs_ago", NEVER_SECS,
                lambda e: e.secs_ago.min().cast("float64")),
    )),
    "channel_interactions": StatTable("channel", "tp_channel", "touches", (
        StatDef("ch_interactions_90d", 0.0, lambda e: _n(within(e, 90))),
        StatDef("ch_last_interaction_secs_ago", NEVER_SECS,
                lambda e: e.secs_ago.min().cast("float64")),
    )),
}  # fmt: skip

#: Every statistic's value for a key without events.
STAT_DEFAULTS: dict[str, float] = {
    s.name: s.default for table in STAT_TABLES.values() for s in table.defs
}
#: "Seconds ago" statistics: they grow with the time elapsed since they were computed.
AGING_STATS = tuple(name for name in STAT_DEFAULTS if name.endswith("_secs_ago"))
CATEGORY_STATS = STAT_TABLES["category"].stats
OFFER_STATS = STAT_TABLES["offer"].stats
OFFER_TYPE_STATS = STAT_TABLES["offer_type"].stats
