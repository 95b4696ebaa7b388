"""Materialisation: the warehouse's latest features -> an online store (Feast's
``materialize``), computed by the same feature definitions as the training set.

:func:`materialize` fills a store from the warehouse (all customers, or some);
:func:`refresh` re-materialises only the customers whose features may have changed since the
last run (new events, or events leaving a window). The vectors are assembled as compact JSON
(:mod:`features.online.base`) by one DuckDB query.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import duckdb
import ibis
import orjson
import pyarrow as pa

from features import definitions as d
from features.background import Background, in_background
from features.engines import ibis_backend
from features.online.base import (
    AS_OF_KEY,
    BATCH,
    NUMBERS_KEY,
    SPEC_KEY,
    STATS_KEY,
    TEXTS_KEY,
    Layout,
    OnlineStore,
)
from features.pipeline import (
    POINT_KEYS,
    STAT_TABLES,
    Sources,
    customer_tables,
    naive_utc,
    sources,
)
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import with_cached_offer_log
from recsys.errors import ConfigError
from recsys.progress import progress_bar

log = logging.getLogger(__name__)

# Customers per id range of a full materialisation: the store writes one range while the
# engine computes the next (4 ranges at 1M customers: 3 s faster than 8, whose boundaries
# each leave a core idle for a moment; 1 GB less memory than one pass).
RANGE_CUSTOMERS = 250_000
EMPTY_STATS = '{"keys":[],"values":[]}'

Pair = tuple[str, bytes]


def vectors_as_of(
    con: Any,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> tuple[Layout, Iterator[Pair]]:
    """The layout and ``(customer_id, compact vector JSON)`` of customers as of ``as_of``.

    The vectors are computed lazily, when the iterator is first read, and come sorted by
    customer id. On DuckDB everything runs in the warehouse connection (temporary tables,
    dropped at the end), a full run in customer-id ranges of about ``range_customers``
    customers; on Spark the features are collected and the vectors assembled in a local
    DuckDB.
    """
    layout, parts = vector_parts(con, as_of, customer_ids, engine, range_customers=range_customers)
    return layout, _flatten(_batches(parts))


def _flatten(batches: Generator[list[Pair], None, None]) -> Iterator[Pair]:
    try:
        for batch in batches:
            yield from batch
    finally:  # a consumer that stops early: the producer's clean-up runs now
        batches.close()


def _batches(
    parts: Generator[pa.Table, None, None] | Background,
) -> Generator[list[Pair], None, None]:
    """The ``(customer_id, vector)`` pairs of each part, in lists of up to ``BATCH``."""
    try:
        for part in parts:
            for batch in part.to_batches(BATCH):
                ids = batch.column(0).to_pylist()
                vectors = batch.column(1).cast(pa.binary()).to_pylist()
                yield list(zip(ids, vectors, strict=True))
    finally:
        parts.close()


def vector_parts(
    con: Any,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> tuple[Layout, Generator[pa.Table, None, None]]:
    """The layout and the vectors as Arrow tables (``customer_id``, ``vector`` JSON text),
    one per customer-id range of a full DuckDB run (in id order, each sorted), so a consumer
    can write one range while the engine computes the next."""
    if not isinstance(range_customers, int) or range_customers < 1:
        raise ConfigError(f"`range_customers` must be an integer >= 1, got {range_customers!r}")
    as_of = naive_utc(as_of)
    backend = ibis_backend(con, engine)
    ids = list(customer_ids) if customer_ids is not None else None
    schema = customer_tables(sources(backend), as_of, ids).customer.schema()
    feature_cols = [c for c in schema.names if c not in POINT_KEYS]
    numeric = tuple(
        c
        for c in feature_cols
        if schema[c].is_floating() or schema[c].is_integer() or schema[c].is_boolean()
    )
    layout = Layout(numeric=numeric, text=tuple(c for c in feature_cols if c not in numeric))
    if engine == "duckdb" and isinstance(con, duckdb.DuckDBPyConnection):
        return layout, _duckdb_vectors(con, backend, as_of, ids, layout, range_customers)
    return layout, _collected_vectors(backend, as_of, ids, layout)


def id_ranges(
    con: duckdb.DuckDBPyConnection, range_customers: int = RANGE_CUSTOMERS
) -> list[tuple[str | None, str | None]]:
    """Consecutive customer-id ranges ``[lo, hi)`` (None = unbounded) covering every id, each
    of about ``range_customers`` customers (quantiles of ``customers.customer_id``)."""
    count = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
    parts = math.ceil(count / range_customers)
    if parts <= 1:
        return [(None, None)]
    cuts = con.execute(
        "SELECT quantile_disc(customer_id, ?::DOUBLE[]) FROM customers",
        [[i / parts for i in range(1, parts)]],
    ).fetchall()[0][0]
    bounds = sorted({c for c in cuts if c is not None})
    return list(itertools.pairwise([None, *bounds, None]))


def _in_range(src: Sources, lo: str | None, hi: str | None) -> Sources:
    """``src`` holding only the customers (and their events) with ``lo <= id < hi``: every
    feature of a customer depends on its own events only."""

    def keep(table: ibis.Table, column: str) -> ibis.Table:
        conditions = []
        if lo is not None:
            conditions.append(table[column] >= lo)
        if hi is not None:
            conditions.append(table[column] < hi)
        return table.filter(*conditions) if conditions else table

    return dataclasses.replace(
        src,
        customers=keep(src.customers, "customer_id"),
        purchases=keep(src.purchases, "ev_customer_id"),
        touches=keep(src.touches, "ev_customer_id"),
        offer_log=keep(src.offer_log, "ev_customer_id"),
        lifetime=keep(src.lifetime, "ev_customer_id"),
    )


def _duckdb_vectors(
    con: duckdb.DuckDBPyConnection,
    backend: Any,
    as_of: datetime,
    customer_ids: list[str] | None,
    layout: Layout,
    range_customers: int,
) -> Generator[pa.Table, None, None]:
    """Vectors computed in the warehouse's DuckDB: features and per-key statistics go to
    temporary tables, then one query joins them into JSON; a full run does this range of
    customer ids by range (one Arrow table each, the next range computed while the previous
    one is written).

    Only the offer log, read by four of the queries and costly to build, is shared through a
    temporary table (built once, read by every range); the other sources are read by each
    query (at 1M customers / 56M events, copying every event of the window to temporary
    tables first was ~10 s slower and 4 GB larger).
    """
    src = sources(backend)
    if customer_ids is not None:
        yield _range_vectors(con, _feature_sql(src, as_of, customer_ids), as_of, layout)
        return
    started = time.perf_counter()
    # The customer features and three statistics tables read the offer log: built once (the
    # events of [as_of - horizon, as_of), what a point at as_of sees). 1/8 of it per range
    # cost 1.5x the CPU of building it whole; reading a range of it costs next to nothing.
    src, offer_log = with_cached_offer_log(src, as_of, as_of)
    bar = progress_bar("materialising (customer-id ranges)", None, "range")
    try:
        ranges = id_ranges(con, range_customers)
        log.debug("offer log built in %.1f s", time.perf_counter() - started)
        # The SQL is compiled once per shape, with sentinel bounds (Ibis takes ~0.8 s of
        # Python per compilation; per range that competed with the writer thread).
        compiled: dict[tuple[bool, bool], dict[str, str]] = {}
        bar.reset(total=len(ranges))
        for i, (lo, hi) in enumerate(ranges):
            bar.update()
            started = time.perf_counter()
            shape = (len(ranges) > 1, hi is not None)
            if shape not in compiled:
                bounded = _in_range(src, _LO if shape[0] else None, _HI if shape[1] else None)
                compiled[shape] = _feature_sql(bounded, as_of, None)
            sql = {
                role: query.replace(_sql_text(_LO), _sql_text(lo or "")).replace(
                    _sql_text(_HI), _sql_text(hi or "")
                )
                for role, query in compiled[shape].items()
            }
            vectors = _range_vectors(con, sql, as_of, layout)
            log.debug("range %d/%d of customer ids computed in %.1f s", i + 1, len(ranges),
                      time.perf_counter() - started)  # fmt: skip
            yield vectors
    finally:
        offer_log.release()
        bar.close()


_LO = "__recsys_range_lo__"  # sentinels for an id range's bounds, replaced per range
_HI = "__recsys_range_hi__"


def _feature_sql(src: Sources, as_of: datetime, customer_ids: list[str] | None) -> dict[str, str]:
    """The SELECTs of the customer features (``customer``) and of each statistics table's
    JSON (by name)."""
    tables = customer_tables(src, as_of, customer_ids)
    sql = {"customer": ibis.to_sql(tables.customer, dialect="duckdb")}
    for name, table in tables.stats.items():
        sql[name] = _stats_json_sql(name, ibis.to_sql(table, dialect="duckdb"))
    return sql


def _range_vectors(
    con: duckdb.DuckDBPyConnection, sql: Mapping[str, str], as_of: datetime, layout: Layout
) -> pa.Table:
    """The vectors of one set of customers, sorted by id: the feature queries ``sql`` (as
    :func:`_feature_sql`) into temporary tables, joined into JSON."""
    tag = uuid.uuid4().hex[:12]
    names = {role: f"recsys_mat_{tag}_{role}" for role in sql}
    try:
        started = time.perf_counter()
        for role, query in sql.items():
            con.execute(f'CREATE TEMP TABLE "{names[role]}" AS {query}')
            if role == "customer":
                log.debug("customer features computed in %.1f s", time.perf_counter() - started)
        log.debug("features and statistics computed in %.1f s", time.perf_counter() - started)
        started = time.perf_counter()
        vectors = con.sql(_vector_sql(names, as_of, layout)).to_arrow_table()
        log.debug("vectors assembled in %.1f s", time.perf_counter() - started)
        return vectors
    finally:
        for name in names.values():
            con.execute(f'DROP TABLE IF EXISTS temp."{name}"')


def _collected_vectors(
    backend: Any, as_of: datetime, customer_ids: list[str] | None, layout: Layout
) -> Generator[pa.Table, None, None]:
    """Vectors of any engine: features and statistics collected as Arrow, joined locally."""
    tables = customer_tables(sources(backend), as_of, customer_ids, cache=True)
    local = duckdb.connect()
    try:
        names = {"customer": "customer"}
        local.register("customer_arrow", tables.customer.to_pyarrow())
        local.execute('CREATE TABLE "customer" AS SELECT * FROM customer_arrow')
        for name, table in tables.stats.items():
            names[name] = f"stats_{name}"
            local.register(f"{name}_arrow", table.to_pyarrow())
            local.execute(
                f'CREATE TABLE "{names[name]}" AS '
                f"{_stats_json_sql(name, f'SELECT * FROM {name}_arrow')}"
            )
            local.unregister(f"{name}_arrow")
        local.unregister("customer_arrow")
        for table in tables.cached:
            table.release()
        reader = local.sql(_vector_sql(names, as_of, layout)).to_arrow_reader(BATCH)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    finally:
        local.close()


def _stats_json_sql(name: str, source: str) -> str:
    """One row per customer: its statistics of table ``name`` as ``{"keys": [..],
    "values": [[..], ..]}`` JSON text (keys and values aggregated side by side, so they stay
    aligned; readers sort the keys)."""
    spec = STAT_TABLES[name]
    values = ", ".join(f'CAST("{s}" AS DOUBLE)' for s in spec.stats)
    return (
        "SELECT customer_id, concat('{\"keys\":[', "
        f"string_agg(to_json(CAST(\"{spec.key}\" AS VARCHAR)), ','), "
        f"'],\"values\":[', string_agg(to_json([{values}]), ','), ']}}') AS stats "
        f'FROM ({source}) WHERE "{spec.key}" IS NOT NULL GROUP BY customer_id'
    )


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vector_sql(names: Mapping[str, str], as_of: datetime, layout: Layout) -> str:
    """The compact JSON vector of each customer (sorted by id), from the customer features
    table and the per-table statistics JSON (``names``: role -> table)."""
    numbers = ", ".join(f'CAST(c."{col}" AS DOUBLE)' for col in layout.numeric)
    texts = ", ".join(f'CAST(c."{col}" AS VARCHAR)' for col in layout.text)
    meta = orjson.dumps({AS_OF_KEY: as_of.isoformat(), SPEC_KEY: FEATURE_SPEC_VERSION})
    parts = [
        _sql_text(f'{{"{NUMBERS_KEY}":'),
        f"to_json([{numbers}]::DOUBLE[])",
        _sql_text(f',"{TEXTS_KEY}":'),
        f"to_json([{texts}]::VARCHAR[])",
        _sql_text("," + meta.decode()[1:-1] + f',"{STATS_KEY}":{{'),
    ]
    joins = []
    for i, name in enumerate(STAT_TABLES):
        parts.append(_sql_text(("," if i else "") + orjson.dumps(name).decode() + ":"))
        parts.append(f"coalesce(s{i}.stats, {_sql_text(EMPTY_STATS)})")
        joins.append(f'LEFT JOIN "{names[name]}" AS s{i} ON s{i}.customer_id = c.customer_id')
    parts.append(_sql_text("}}"))
    return (
        f"SELECT c.customer_id, concat({', '.join(parts)}) AS vector "
        f'FROM "{names["customer"]}" AS c {" ".join(joins)} ORDER BY c.customer_id'
    )


def materialize(
    con: Any,
    store: OnlineStore,
    as_of: datetime | None = None,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> int:
    """Write the vectors of all customers (or of ``customer_ids``) as of ``as_of`` (now).

    A full run replaces the store's contents in one go; a run for some customers updates
    only theirs. Returns the number of vectors written. On DuckDB a full run computes the
    vectors in customer-id ranges of about ``range_customers`` customers (the same vectors
    as one pass), and the store writes each range while the engine computes the next.
    """
    as_of = naive_utc(as_of) if as_of is not None else datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    ids = list(customer_ids) if customer_ids is not None else None
    layout, parts = vector_parts(con, as_of, ids, engine, range_customers=range_customers)
    if ids is not None and store.layout() not in (None, layout):
        log.info("the vector layout changed: materialising every customer")
        return materialize(con, store, as_of=as_of, engine=engine, range_customers=range_customers)
    # The engine computes the next range of vectors while the store writes the previous one
    # (and, before the first, prepares: dropping an old table takes seconds at 1M vectors).
    # Whole ranges cross the threads (a hand-over per vector cost more than the writes); the
    # store's thread turns them into Python values while the engine works.
    ahead = in_background(parts, depth=1)
    try:
        written = store.write(
            _flatten(_batches(ahead)),
            FEATURE_SPEC_VERSION,
            replace=ids is None,
            as_of=as_of,
            layout=layout,
        )
    finally:
        ahead.close()  # also when the store refused the write before reading any vector
    log.info(
        "materialised %d vectors as of %s in %.1f s",
        written,
        as_of.isoformat(),
        time.perf_counter() - started,
    )
    return written


def changed_customers(
    con: duckdb.DuckDBPyConnection, since: datetime, as_of: datetime
) -> list[str]:
    """Customers whose features may differ between ``since`` and ``as_of``.

    New events in ``[since, as_of)`` (purchases, interactions, decisions, outcomes), or events
    that left a feature window (``WINDOWS``, 7 days, the horizon and the lifetime) in that time.
    """
    spans = sorted({7, *d.WINDOWS, d.HORIZON_DAYS, d.LIFETIME_DAYS})
    windows = " OR ".join(
        f"(ts >= $since - INTERVAL {w} DAY AND ts < $as_of - INTERVAL {w} DAY)" for w in spans
    )
    cond = f"(ts >= $since AND ts < $as_of) OR {windows}"
    sql = f"""
        SELECT customer_id FROM transactions WHERE {cond}
        UNION SELECT customer_id FROM interactions WHERE {cond}
        UNION SELECT customer_id FROM decisions WHERE customer_id IS NOT NULL AND ({cond})
        UNION SELECT d.customer_id FROM outcomes o JOIN decisions d
            USING (decision_id, offer_id) WHERE d.customer_id IS NOT NULL AND
            ((o.ts >= $since AND o.ts < $as_of) OR {windows.replace("ts", "o.ts")})
    """
    rows = con.execute(sql, {"since": since, "as_of": as_of}).fetchall()
    return sorted(r[0] for r in rows)


def refresh(
    con: duckdb.DuckDBPyConnection, store: OnlineStore, as_of: datetime | None = None
) -> int:
    """Incremental materialisation: only customers changed since the store's last ``as_of``.

    Falls back to a full :func:`materialize` when the store is empty or of another spec.
    """
    as_of = naive_utc(as_of) if as_of is not None else datetime.now(UTC).replace(tzinfo=None)
    since = store.last_as_of()
    if since is None or store.spec_version() != FEATURE_SPEC_VERSION:
        return materialize(con, store, as_of=as_of)
    if as_of < since:
        raise ConfigError(f"`as_of` must be >= the store's last as_of {since}, got {as_of}")
    ids = changed_customers(con, since, as_of)
    if not ids:
        store.write([], FEATURE_SPEC_VERSION, as_of=as_of)
        return 0
    return materialize(con, store, as_of=as_of, customer_ids=ids)
