"""Decision-time slices of the warehouse, so a training set is computed a bounded slice at a time."""

from __future__ import annotations

import itertools
import math
from datetime import datetime

import duckdb

from features.context_columns import context_keys
from features.pipeline import naive_utc

CHUNK_ROWS = 1_000_000  # decisions rows per DuckDB query (bounds the engine's memory)


def range_filter(start: datetime | None, end: datetime | None) -> str:
    where = ["TRUE"]
    if start is not None:
        where.append(f"ts >= TIMESTAMP '{naive_utc(start, 'start').isoformat(sep=' ')}'")
    if end is not None:
        where.append(f"ts < TIMESTAMP '{naive_utc(end, 'end').isoformat(sep=' ')}'")
    return " AND ".join(where)


def range_context_keys(
    con: duckdb.DuckDBPyConnection, start: datetime | None, end: datetime | None
) -> list[tuple[str, bool]]:
    """Context keys of the decisions in ``[start, end)``."""
    return context_keys(con, f"(SELECT context FROM decisions WHERE {range_filter(start, end)})")


def time_slices(
    con: duckdb.DuckDBPyConnection,
    start: datetime | None,
    end: datetime | None,
    chunk_rows: int = CHUNK_ROWS,
) -> list[tuple[datetime | None, datetime | None]]:
    """Consecutive ``[lo, hi)`` decision-time ranges covering ``[start, end)``, each of about
    ``chunk_rows`` decisions rows (approximate quantiles of ``ts``; a time is never split)."""
    where = range_filter(start, end)
    rows = con.execute(f"SELECT count(*) FROM decisions WHERE {where}").fetchall()[0][0]
    slices = math.ceil(rows / chunk_rows)
    if slices <= 1:
        return [(start, end)]
    cuts = con.execute(
        f"SELECT approx_quantile(ts, ?::FLOAT[]) FROM decisions WHERE {where}",
        [[i / slices for i in range(1, slices)]],
    ).fetchall()[0][0]
    lower = naive_utc(start, "start") if start is not None else None
    bounds = sorted({c for c in cuts if c is not None and (lower is None or c > lower)})
    edges = [start, *bounds, end]
    return list(itertools.pairwise(edges))
