"""Point-in-time customer features: the definitions applied to points ``(customer_id, as_of)``.

A *point* asks "what did we know about this customer just before ``as_of``?". Each event source
is joined to the points with ``as_of - horizon <= ts < as_of`` (a range join both DuckDB and
Spark run; Ibis 12 has no ``asof_join`` on Spark) and aggregated per point. Serving uses one
point per customer at ``now``; training sets use one point per logged decision, so both read
the very same expressions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd

from features import definitions as d
from features.engines import ibis_backend
from recsys.contract import CUSTOMERS
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

POINT_KEYS = ("customer_id", "as_of")


@dataclass(frozen=True)
class Sources:
    """The warehouse tables as Ibis tables, shaped for the feature joins."""

    customers: ir.Table
    purchases: ir.Table  # ev_customer_id, ts, amount, units, category, channel
    touches: ir.Table  # ev_customer_id, ts, touchpoint_id, event_type, value, category,
    # channel, tp_stage
    offer_log: ir.Table  # ev_customer_id, ts, offer_id, offer_type, touchpoint_id, kind
    offers: ir.Table
    touchpoints: ir.Table
    decisions: ir.Table
    outcomes: ir.Table
    lifetime: ir.Table  # purchases over LIFETIME_DAYS: ev_customer_id, ts, amount


def sources(backend: Any) -> Sources:
    """Bind the contract tables of ``backend`` (an Ibis backend)."""
    customers = backend.table("customers")
    tx = backend.table("transactions")
    inter = backend.table("interactions")
    tps = backend.table("touchpoints")
    offers = backend.table("offers")
    dec = backend.table("decisions")
    out = backend.table("outcomes")

    purchases = tx.select(
        ev_customer_id=tx.customer_id,
        ts=tx.ts,
        amount=tx.amount.cast("float64"),
        units=tx.quantity.cast("float64").fill_null(1.0),
        category=tx.category,
        channel=tx.channel,
    )
    lifetime = tx.select(ev_customer_id=tx.customer_id, ts=tx.ts, amount=tx.amount.cast("float64"))
    tp_small = tps.select(tp_id=tps.touchpoint_id, channel=tps.channel, tp_stage=tps.stage)
    touches = inter.left_join(tp_small, inter.touchpoint_id == tp_small.tp_id).select(
        ev_customer_id=inter.customer_id,
        ts=inter.ts,
        touchpoint_id=inter.touchpoint_id,
        event_type=inter.event_type,
        value=inter.value.cast("float64"),
        category=inter.category,
        channel=tp_small.channel,
        tp_stage=tp_small.tp_stage,
    )
    offer_types = offers.select(o_offer_id=offers.offer_id, offer_type=offers.offer_type)
    known = dec.filter(dec.customer_id.notnull())
    impressions = known.left_join(offer_types, known.offer_id == offer_types.o_offer_id).select(
        ev_customer_id=known.customer_id,
        ts=known.ts,
        offer_id=known.offer_id,
        offer_type=offer_types.offer_type,
        touchpoint_id=known.touchpoint_id,
        kind=ibis.literal("impression"),
    )
    dec_small = known.select(
        d_decision_id=known.decision_id,
        d_offer_id=known.offer_id,
        d_customer_id=known.customer_id,
        d_touchpoint_id=known.touchpoint_id,
    )
    resp = out.join(
        dec_small,
        [out.decision_id == dec_small.d_decision_id, out.offer_id == dec_small.d_offer_id],
    )
    resp = resp.left_join(offer_types, resp.offer_id == offer_types.o_offer_id).select(
        ev_customer_id=resp.d_customer_id,
        ts=resp.ts,
        offer_id=resp.offer_id,
        offer_type=offer_types.offer_type,
        touchpoint_id=resp.d_touchpoint_id,
        kind=resp.outcome,
    )
    return Sources(
        customers=customers,
        purchases=purchases,
        touches=touches,
        offer_log=impressions.union(resp),
        offers=offers,
        touchpoints=tps,
        decisions=dec,
        outcomes=out,
        lifetime=lifetime,
    )


def _epoch(ts: ir.TimestampValue) -> ir.IntegerValue:
    # Whole seconds on both engines (Spark's unix_timestamp truncates; DuckDB's epoch does not).
    return ts.epoch_seconds().floor().cast("int64")


def _join_points(
    points: ir.Table,
    events: ir.Table,
    key: tuple[str, str] | None = None,
    days: int = d.HORIZON_DAYS,
) -> ir.Table:
    """Points x their events in ``[as_of - days, as_of)`` (the horizon), with ``secs_ago``
    per row.

    ``key = (points column, events column)`` also requires those to be equal.
    """
    horizon = ibis.interval(days=days)
    conditions = [
        points.customer_id == events.ev_customer_id,
        events.ts < points.as_of,
        events.ts >= points.as_of - horizon,
    ]
    if key is not None:
        conditions.append(points[key[0]] == events[key[1]])
    joined = points.join(events, conditions)
    if key is not None:
        joined = joined.drop(key[0])
    return joined.mutate(secs_ago=_epoch(joined.as_of) - _epoch(joined.ts))


def _window_events(
    events: ir.Table,
    as_of: datetime,
    customers: ir.Table | None = None,
    days: int = d.HORIZON_DAYS,
) -> ir.Table:
    """The events of ``[as_of - days, as_of)`` as if joined to one point per customer.

    All points share ``as_of`` (serving, materialisation), so a time filter replaces the
    range join: same rows and columns as :func:`_join_points` for points at ``as_of``.
    ``customers`` (optional, column ``customer_id``) keeps only those customers' events.
    """
    at = ibis.literal(as_of, type="timestamp")
    horizon = ibis.interval(days=days)
    rows = events.filter(events.ev_customer_id.notnull(), events.ts < at, events.ts >= at - horizon)
    if customers is not None:
        rows = rows.semi_join(customers, rows.ev_customer_id == customers.customer_id)
    return rows.mutate(
        customer_id=rows.ev_customer_id, as_of=at, secs_ago=_epoch(at) - _epoch(rows.ts)
    )


def _aggregate(
    joined: ir.Table, aggregates: Sequence[d.AggregateDef], keys: Sequence[str] = POINT_KEYS
) -> ir.Table:
    return joined.group_by(list(keys)).aggregate(
        **{a.feature.name: a.build(joined) for a in aggregates}
    )


@dataclass(frozen=True)
class PointTables:
    """Ibis expressions of the features of a set of points.

    ``customer``: one row per point (point keys, customer features, ``attr_*``).
    ``stats``: per-key statistics behind the crosses, one table per key (see ``STAT_TABLES``).
    """

    customer: ir.Table
    stats: dict[str, ir.Table]
    cached: tuple[ir.Table, ...] = ()  # cached intermediate tables (``.release()`` them)


StatTable = d.StatTable
STAT_TABLES = d.STAT_TABLES


def attribute_columns(customers: ir.Table) -> list[str]:
    """Extra (non-contract) customers columns, kept as ``attr_<column>`` features."""
    contract = set(CUSTOMERS.column_names)
    return [c for c in customers.columns if c not in contract]


def _stat_table(name: str, joined: ir.Table, keys: Sequence[str] = POINT_KEYS) -> ir.Table:
    key = STAT_TABLES[name].key
    rows = joined.filter(joined[key].notnull())
    # A key with events but none a statistic counts (a category viewed never, only bought)
    # gets the statistic's default, as a key without any event does: the same value in the
    # training set and in the online store's maps.
    return rows.group_by([*keys, key]).aggregate(
        **{s.name: s.build(rows).fill_null(s.default) for s in STAT_TABLES[name].defs}
    )


def point_tables(
    src: Sources, points: ir.Table, wanted: ir.Table | None = None, cache_joins: bool = False
) -> PointTables:
    """The feature expressions for ``points`` (columns ``customer_id``, ``as_of``).

    ``wanted`` (optional; columns ``customer_id``, ``as_of`` and the ``offer_key`` columns of
    ``STAT_TABLES``, e.g. the decisions rows of a training set) restricts the per-key
    statistics to the keys asked for; without it every key of a point's history is computed
    (what the online store keeps). The values are the same either way. ``cache_joins``
    materialises the point-event joins once (temporary tables) for callers that execute
    several of the returned expressions.
    """
    points = points.select(customer_id=points.customer_id, as_of=points.as_of.cast("timestamp"))
    joined = {
        "purchases": _join_points(points, src.purchases),
        "touches": _join_points(points, src.touches),
        "offer_log": _join_points(points, src.offer_log),
        "lifetime": _join_points(points, src.lifetime, days=d.LIFETIME_DAYS),
    }
    if cache_joins:  # several queries will read them (materialisation): join once
        joined = {name: table.cache() for name, table in joined.items()}
    positives = None
    if not cache_joins:
        # Accepted offers from their own (small) range join, so that the big joined offer log
        # is read once (the engine then streams it instead of materialising it).
        positives = _join_points(points, _positive_responses(src.offer_log))
    return _point_tables(src, points, joined, list(POINT_KEYS), wanted, positives)


def customer_tables(
    src: Sources,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    cache: bool = False,
) -> PointTables:
    """:func:`point_tables` of one point per customer at ``as_of`` (serving, materialisation).

    The same values as ``point_tables(src, customer_points(src, as_of, customer_ids))``, but
    as every point is at ``as_of`` the events are filtered by time instead of range-joined to
    the points and grouped by customer only, which is much cheaper. ``cache`` materialises the
    filtered events once (temporary tables) for callers that execute several of the returned
    expressions.
    """
    as_of = naive_utc(as_of)
    points = customer_points(src, as_of, customer_ids)
    subset = points if customer_ids is not None else None
    joined = {
        "purchases": _window_events(src.purchases, as_of, subset),
        "touches": _window_events(src.touches, as_of, subset),
        "offer_log": _window_events(src.offer_log, as_of, subset),
        "lifetime": _window_events(src.lifetime, as_of, subset, days=d.LIFETIME_DAYS),
    }
    if cache:
        joined = {name: table.cache() for name, table in joined.items()}
    tables = _point_tables(src, points, joined, ["customer_id"], None, None)
    at = ibis.literal(as_of, type="timestamp")
    stats = {
        name: table.mutate(as_of=at).select("customer_id", "as_of", *table.columns[1:])
        for name, table in tables.stats.items()
    }
    cached = tuple(joined.values()) if cache else ()
    return PointTables(customer=tables.customer, stats=stats, cached=cached)


def _positive_responses(offer_log: ir.Table) -> ir.Table:
    return offer_log.filter(offer_log.kind.isin(list(d.POSITIVE_RESPONSES)))


def _point_tables(
    src: Sources,
    points: ir.Table,
    joined: dict[str, ir.Table],
    keys: list[str],
    wanted: ir.Table | None,
    positives: ir.Table | None,
) -> PointTables:
    """The feature expressions from the points' events (``joined`` by source name).

    ``keys``: the group keys of a point in ``joined`` (``customer_id``, ``as_of``; or only
    ``customer_id`` when every point has the same ``as_of``). ``positives``: the positive
    responses joined to the points (default: filtered from ``joined["offer_log"]``).
    """
    purchases, touches, offer_log = joined["purchases"], joined["touches"], joined["offer_log"]
    purchase_aggs = _aggregate(purchases, d.PURCHASE_AGGREGATES, keys)
    touch_aggs = _aggregate(touches, d.INTERACTION_AGGREGATES, keys)
    lifetime_aggs = _aggregate(joined["lifetime"], d.LIFETIME_AGGREGATES, keys)
    offer_aggs = _aggregate(offer_log, d.OFFER_HISTORY_AGGREGATES, keys)

    cat_stats = _stat_table("category", purchases, keys)
    # Top category: highest spend, ties broken alphabetically (same on every engine).
    ranked = cat_stats.mutate(
        _rank=ibis.row_number().over(
            group_by=keys, order_by=[ibis.desc("cat_amount_365d"), ibis.asc("category")]
        ),
    )
    top = ranked.filter(ranked._rank == 0).select(
        *keys,
        purch_top_category_365d=ranked.category,
        _top_amount=ranked.cat_amount_365d,
    )
    positive = positives if positives is not None else _positive_responses(offer_log)
    if d.HORIZON_DAYS > 365:  # the rollup counts the offers of the last 365 days
        positive = positive.filter(positive.secs_ago <= 365 * d.DAY_SECONDS)
    rollup_sources = {
        "category": cat_stats,
        "accepted_offers": positive.group_by([*keys, "offer_id"]).aggregate(n=positive.count()),
    }

    stats = {}
    for name, spec in STAT_TABLES.items():
        if name == "category":
            stats[name] = cat_stats  # needed in full for the top category anyway
        elif wanted is None:
            stats[name] = _stat_table(name, joined[spec.source], keys)
        else:
            asked = wanted.select(
                customer_id=wanted.customer_id,
                as_of=wanted.as_of.cast("timestamp"),
                _key=wanted[spec.offer_key],
            )
            # A null key matches no event: without those rows an empty ask skips the join.
            asked = asked.filter(asked._key.notnull()).distinct()
            events = getattr(src, spec.source)
            stats[name] = _stat_table(name, _join_points(asked, events, key=("_key", spec.key)))

    rollups = []
    for name in dict.fromkeys(r.table for r in d.ROLLUPS):
        table = rollup_sources[name]
        rollups.append(
            table.group_by(keys).aggregate(
                **{r.feature.name: r.build(table) for r in d.ROLLUPS if r.table == name}
            )
        )

    cust = src.customers
    attrs = attribute_columns(cust)
    static = cust.select(
        c_customer_id=cust.customer_id,
        c_created_at=cust.created_at.cast("timestamp"),
        **{
            name: cust[col].cast("boolean").ifelse(1.0, 0.0)
            for name, col in d.CONSENT_COLUMNS.items()
        },
        **{f"{d.ATTRIBUTE_PREFIX}{a}": cust[a] for a in attrs},
    )

    table = points
    for aggs in (purchase_aggs, lifetime_aggs, touch_aggs, offer_aggs, top, *rollups):
        table = table.left_join(aggs, [table[k] == aggs[k] for k in keys])
        table = table.drop(*[c for c in table.columns if c.endswith("_right")])
    table = table.left_join(static, table.customer_id == static.c_customer_id)

    defaults = {
        a.feature.name: a.feature.default
        for a in (
            *d.PURCHASE_AGGREGATES,
            *d.LIFETIME_AGGREGATES,
            *d.INTERACTION_AGGREGATES,
            *d.OFFER_HISTORY_AGGREGATES,
            *d.ROLLUPS,
        )
    }
    filled = {
        name: table[name].cast("float64").fill_null(float(default))
        for name, default in defaults.items()
    }
    for name in d.CONSENT_COLUMNS:
        filled[name] = table[name].fill_null(0.0)
    tenure_secs = _epoch(table.as_of) - _epoch(table.c_created_at)
    filled["tenure_days"] = (
        ibis.greatest(tenure_secs, 0).cast("float64") / d.DAY_SECONDS
    ).fill_null(0.0)
    filled[d.TOP_CATEGORY_SHARE.name] = table._top_amount.fill_null(0.0) / ibis.greatest(
        filled["purch_amount_365d"], 1e-9
    )
    table = table.mutate(**filled)
    table = table.mutate(**{x.feature.name: x.build(table) for x in d.DERIVED})

    order = [f.name for f in d.customer_feature_defs()]
    customer = table.select(*POINT_KEYS, *order, *[f"{d.ATTRIBUTE_PREFIX}{a}" for a in attrs])
    return PointTables(customer=customer, stats=stats)


def customer_points(
    src: Sources, as_of: datetime, customer_ids: Iterable[str] | None = None
) -> ir.Table:
    """One point per known customer (or per listed customer) at ``as_of``."""
    cust = src.customers
    if customer_ids is not None:
        cust = cust.filter(cust.customer_id.isin(list(customer_ids)))
    return cust.select(
        customer_id=cust.customer_id, as_of=ibis.literal(naive_utc(as_of), type="timestamp")
    )


def naive_utc(ts: datetime, name: str = "as_of") -> datetime:
    """Naive UTC, as the warehouse stores timestamps (aware times are converted)."""
    if not isinstance(ts, datetime):
        raise ConfigError(f"`{name}` must be a datetime, got {type(ts).__name__}")
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts


def to_pandas(expr: ir.Table) -> pd.DataFrame:
    """Execute on the expression's backend into pandas (via Arrow)."""
    return expr.to_pyarrow().to_pandas()


def customer_features(
    con: Any,
    as_of: datetime,
    engine: str = "duckdb",
    customer_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Each customer's features as of ``as_of``, from events strictly before it.

    Parameters
    ----------
    con : DuckDB connection (the warehouse), SparkSession or Ibis backend
    as_of : datetime
        Naive = UTC.
    engine : {"duckdb", "spark"}
    customer_ids : optional subset of customers (unknown ids are left out).

    Returns
    -------
    pandas.DataFrame, one row per customer sorted by ``customer_id``: ``customer_id``, the
    customer features of ``features.spec`` in spec order, then ``attr_*`` attributes.
    """
    as_of = naive_utc(as_of)
    src = sources(ibis_backend(con, engine))
    tables = customer_tables(src, as_of, customer_ids)
    frame = to_pandas(tables.customer.drop("as_of"))
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)
