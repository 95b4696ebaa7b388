"""Expression helpers the definitions share, over a table of events joined to points
(columns ``secs_ago`` plus the source's columns)."""

from __future__ import annotations

import ibis
import ibis.expr.types as ir

from features.definitions.base import DAY_SECONDS, HORIZON_DAYS, FeatureDef, Group

YEAR = 365  # the fixed "365d" features read the last 365 days of the horizon


def within(e: ir.Table, days: int) -> ir.BooleanValue:
    return e.secs_ago <= days * DAY_SECONDS


def in_year(e: ir.Table, cond: ir.BooleanValue) -> ir.BooleanValue:
    """``cond`` within the last 365 days (every joined row is when the horizon is 365 days)."""
    return cond if HORIZON_DAYS == YEAR else cond & within(e, YEAR)


def year_count(e: ir.Table) -> ir.IntegerValue:
    """Rows of the last 365 days."""
    return e.count() if HORIZON_DAYS == YEAR else count(within(e, YEAR))


def year_total(e: ir.Table, value: ir.NumericValue) -> ir.NumericValue:
    """Sum of ``value`` over the last 365 days."""
    return value.sum() if HORIZON_DAYS == YEAR else total(within(e, YEAR), value)


def count(cond: ir.BooleanValue) -> ir.IntegerValue:
    return cond.ifelse(1, 0).sum()


def total(cond: ir.BooleanValue, value: ir.NumericValue) -> ir.NumericValue:
    return cond.ifelse(value, 0.0).sum()


def days_since(cond: ir.BooleanValue, e: ir.Table) -> ir.NumericValue:
    """Days since the last event matching ``cond`` (null when none; the default fills it)."""
    return cond.ifelse(e.secs_ago, ibis.null("int64")).min() / DAY_SECONDS


def secs_since(cond: ir.BooleanValue, e: ir.Table) -> ir.NumericValue:
    """Seconds since the last event matching ``cond`` as float (null when none)."""
    return cond.ifelse(e.secs_ago, ibis.null("int64")).min().cast("float64")


def isin(col: ir.StringValue, values: tuple[str, ...]) -> ir.BooleanValue:
    return col.isin(list(values))


def num(
    name: str,
    description: str,
    source: str,
    default: float = 0.0,
    ages: bool = False,
    group: Group = "customer",
) -> FeatureDef:
    return FeatureDef(name, "numeric", description, source, group, default, ages)
