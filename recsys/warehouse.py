"""The embedded warehouse: one DuckDB file holding the seven contract tables.

Table and column names are the contract's (``recsys.contract``); timestamps are naive UTC,
``offers.touchpoints`` is ``VARCHAR[]``, JSON columns are canonical JSON text. Columns not
named by the contract (customer attributes, ...) are added as they arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from recsys.contract import DUCKDB_TYPES, TABLES, TableSpec
from recsys.errors import DataError
from recsys.settings import DEFAULT_DUCKDB_MEMORY_LIMIT


def connect(
    path: str | Path,
    read_only: bool = False,
    memory_limit: str | None = DEFAULT_DUCKDB_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """Open (and create if needed) the warehouse at ``path``; ``":memory:"`` for tests.

    ``memory_limit`` bounds DuckDB's memory; beyond it, large loads and joins spill to a
    temporary folder next to the file instead of taking the machine's memory (DuckDB's own
    default is 80% of RAM).
    """
    config: dict[str, str | bool | int | float | list[str]] = {}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(Path(path).with_suffix(".tmp"))
    con = duckdb.connect(str(path), read_only=read_only, config=config)
    if not read_only:
        create_tables(con)
    return con


def table_ddl(spec: TableSpec) -> str:
    cols = ", ".join(f'"{c.name}" {DUCKDB_TYPES[c.type]}' for c in spec.columns)
    return f'CREATE TABLE IF NOT EXISTS "{spec.name}" ({cols})'


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create any missing contract table (idempotent)."""
    for spec in TABLES.values():
        con.execute(table_ddl(spec))


def existing_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return {name: dtype for name, dtype in rows}


def one_row(
    con: duckdb.DuckDBPyConnection, query: str, parameters: object = None
) -> tuple[Any, ...]:
    """The row of a query that returns exactly one (an aggregate, a setting).

    Raises
    ------
    DataError
        If the query returns no row.
    """
    row = con.execute(query, parameters).fetchone()
    if row is None:
        raise DataError(f"`query` must return one row, got none: {query}")
    return row


#: Tables whose ``ts`` says how recent the warehouse's history is.
EVENT_TABLES = ("transactions", "interactions", "decisions", "outcomes")
#: A history whose last event is older than this is taken to be historical data.
STALE_HISTORY = timedelta(days=1)


def latest_event_time(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The time of the warehouse's last event (naive UTC); None when it holds none."""
    union = " UNION ALL ".join(f'SELECT max(ts) AS ts FROM "{t}"' for t in EVENT_TABLES)
    (latest,) = one_row(con, f"SELECT max(ts) FROM ({union})")
    return latest


@dataclass(frozen=True)
class AsOf:
    """A point in time for features or decisions, and why it was chosen (None: as asked)."""

    ts: datetime
    note: str | None = None


def default_as_of(con: duckdb.DuckDBPyConnection, now: datetime) -> AsOf:
    """``now``, or just after the last event when the history ended more than a day before.

    Features "as of now" on a history that ended months ago are every customer's cold start
    (nothing in their windows); decisions as of then are what the data can tell.
    ``now`` is naive UTC.
    """
    latest = latest_event_time(con)
    if latest is None or now - latest <= STALE_HISTORY:
        return AsOf(now)
    ts = latest + timedelta(seconds=1)
    days = (now - latest) / timedelta(days=1)
    return AsOf(
        ts,
        f"as of {ts.isoformat()}: the warehouse's last event is {days:,.0f} days old "
        "(pass --as-of to choose another time)",
    )


def connect_when_free(
    path: str | Path,
    wait_seconds: float = 10.0,
    read_only: bool = False,
    memory_limit: str | None = DEFAULT_DUCKDB_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """:func:`connect`, trying again while another process holds the file's lock.

    DuckDB lets one process write a file, and no other process open it meanwhile; the
    workers of a running service open the warehouse for a moment when it changed (to read
    the catalogue), so a writer that starts then waits for them instead of failing.

    Raises
    ------
    duckdb.IOException
        The lock is still held after ``wait_seconds``.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return connect(path, read_only=read_only, memory_limit=memory_limit)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
