"""The event log in PostgreSQL (psycopg 3): the same contract as the SQLite log, for replicas.

URL: ``postgresql://USER@HOST:PORT/DB?schema=NAME`` (``schema`` optional, default
``public``; ``postgresql+psycopg://`` accepted). Tables ``decisions`` and ``events`` are
created if missing (under an advisory lock, so replicas starting together do not race).

Same guarantees as :class:`recsys.eventlog.SQLiteEventLog`:

- ``record_events`` runs in one transaction: the served offers are read, each event is
  checked, the valid ones are inserted with ``INSERT ... ON CONFLICT (event_id) DO NOTHING``
  and the call returns only after ``COMMIT`` (``synchronous_commit = on``), so an
  acknowledged event survives a crash and a batch is stored whole or not at all;
- the same ``event_id`` twice is stored once, also when two replicas receive it at the same
  time (the second insert waits for the first transaction and then does nothing);
- decisions are committed before the decision is returned (contacts count toward caps on
  every replica from then on).

PostgreSQL text cannot hold NUL characters: ids containing one are refused with a
:class:`~recsys.errors.DataError` naming the field.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from recsys.eligibility import ContactHistory
from recsys.errors import ConfigError, DataError, EventLogUnavailable
from recsys.eventlog.base import (
    ADDED_DECISION_COLUMNS,
    DECISION_COLUMNS,
    OUTCOME_TYPES,
    CapProbe,
    Event,
    EventLog,
    EventRejection,
    EventWriteResult,
    _check_event,
    _decision_rows,
    _empty_decision_rows,
    _from_us,
    _outcome_dicts,
    _us,
    within_caps,
)

if TYPE_CHECKING:
    from recsys.decision import Decision

logger = logging.getLogger(__name__)

_SCHEMA_LOCK = 0x7265637379730001  # pg_advisory_xact_lock key while creating tables
_CAP_LOCK = 0x72637031  # first key of the per-customer contact-cap locks


def _ddl(schema: str) -> list[sql.Composed]:
    s = sql.Identifier(schema)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.decisions (
                decision_id TEXT NOT NULL,
                offer_id TEXT NOT NULL,
                ts_us BIGINT NOT NULL,
                touchpoint_id TEXT NOT NULL,
                channel TEXT,
                customer_id TEXT,
                position INTEGER NOT NULL,
                propensity DOUBLE PRECISION NOT NULL,
                policy TEXT,
                score DOUBLE PRECISION,
                explored BOOLEAN NOT NULL,
                fallback BOOLEAN NOT NULL,
                model_name TEXT,
                model_version TEXT,
                context TEXT,
                experiment_id TEXT NULL,
                arm TEXT NULL,
                unit_id TEXT NULL,
                shadow INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (decision_id, offer_id))"""
        ).format(s),
        # an older log gets the columns added since (in place)
        *(
            sql.SQL("ALTER TABLE {}.decisions ADD COLUMN IF NOT EXISTS {} {}").format(
                s, sql.Identifier(name), sql.SQL(kind)
            )
            for name, kind in ADDED_DECISION_COLUMNS.items()
        ),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS decisions_customer_ts ON {}.decisions (customer_id, ts_us)"
        ).format(s),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.events (
                event_id TEXT PRIMARY KEY,
                decision_id TEXT NOT NULL,
                offer_id TEXT NOT NULL,
                customer_id TEXT,
                type TEXT NOT NULL,
                ts_us BIGINT NOT NULL,
                revenue DOUBLE PRECISION,
                received_us BIGINT NOT NULL)"""
        ).format(s),
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS events_customer_type ON {}.events (customer_id, type)"
        ).format(s),
        sql.SQL("CREATE INDEX IF NOT EXISTS events_decision ON {}.events (decision_id)").format(s),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {}.decisions_without_offers (
                decision_id TEXT PRIMARY KEY,
                ts_us BIGINT NOT NULL,
                touchpoint_id TEXT NOT NULL,
                channel TEXT,
                customer_id TEXT,
                policy TEXT,
                fallback BOOLEAN NOT NULL,
                model_name TEXT,
                model_version TEXT,
                context TEXT)"""
        ).format(s),
    ]


def parse_url(url: str) -> tuple[str, str]:
    """``postgresql[+psycopg]://...?schema=NAME`` -> (libpq connection URL, schema)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"`event_log_url` must start with postgresql://, got {parts.scheme!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = "public"
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if not schema or not schema.replace("_", "").isalnum() or len(schema) > 63:
        raise ConfigError(
            f"`event_log_url` schema must be letters, digits and _ (at most 63), got {schema!r}"
        )
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept), ""))
    return conninfo, schema


def _no_nul(field: str, values: Collection[str | None]) -> None:
    for value in values:
        if value is not None and "\x00" in value:
            raise DataError(f"`{field}` must not contain NUL characters, got {value[:40]!r}")


class PostgresEventLog(EventLog):
    """The event log in PostgreSQL; safe across threads (a small connection pool).

    Parameters
    ----------
    conninfo : str
        libpq URL or key=value string.
    schema : str
        Schema of the tables (created if missing).
    pool_size : int
        Connections kept open (each thread uses one at a time).
    connect_timeout : int
        Seconds to wait for a connection.
    clock : callable returning an aware datetime (receive time of events)
    """

    def __init__(
        self,
        conninfo: str,
        schema: str = "public",
        pool_size: int = 4,
        connect_timeout: int = 5,
        clock: Any = None,
    ):
        if pool_size < 1:
            raise ConfigError(f"`pool_size` must be >= 1, got {pool_size}")
        from datetime import UTC

        self.conninfo = conninfo
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._clock = clock or (lambda: datetime.now(UTC))
        self._pool: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        self._t_decisions = sql.SQL("{}.decisions").format(sql.Identifier(schema))
        self._t_events = sql.SQL("{}.events").format(sql.Identifier(schema))
        self._t_empty = sql.SQL("{}.decisions_without_offers").format(sql.Identifier(schema))
        with self._connection() as con:
            self._create_schema(con)
        logger.info("event log opened: postgresql schema %s", schema)

    def _create_schema(self, con: psycopg.Connection) -> None:
        """Create the schema and tables that are missing (replicas wait on one lock)."""
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _ddl(self.schema):
                con.execute(statement)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresEventLog:
        conninfo, schema = parse_url(url)
        return cls(conninfo, schema=schema, **kwargs)

    def __repr__(self) -> str:
        return f"PostgresEventLog(schema={self.schema!r})"

    # ------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection:
        con = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self.connect_timeout)
        # Acknowledged means on disk, whatever the server's default is.
        con.execute("SET synchronous_commit = on")
        return con

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise psycopg.OperationalError("the event log is closed")
        self._slots.acquire()
        con = None
        try:
            try:
                con = self._pool.get_nowait()
            except queue.Empty:
                con = self._connect()
            if con.closed:
                con = self._connect()
            yield con
        except psycopg.Error as exc:
            con = self._heal(fault_kind(exc), con)
            raise EventLogUnavailable(fault_kind(exc), _describe(exc)) from exc
        except EventLogUnavailable as exc:  # found by ping
            con = self._heal(exc.kind, con)
            raise
        finally:
            if con is not None and not con.closed:
                self._pool.put(con)
            self._slots.release()

    def _heal(self, kind: str, con: psycopg.Connection | None) -> psycopg.Connection | None:
        """Act on a fault of ``con``; return the connection if it may go back to the pool."""
        if kind in ("unavailable", "read_only"):
            # Broken, or a session that keeps the read-only default it started with: none
            # of the pooled connections is reused; new ones see the server as it is now.
            if con is not None:
                con.close()
            self._drop_pool()
            return None
        if kind == "schema_missing" and con is not None:
            self._recreate_schema(con)
        return con

    def _drop_pool(self) -> None:
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return

    def _recreate_schema(self, con: psycopg.Connection) -> None:
        """Tables dropped under the service: create them again (the next call succeeds)."""
        try:
            self._create_schema(con)
        except psycopg.Error as exc:  # read-only or gone too: the next failure tries again
            logger.warning("event log tables missing and not created again: %s", _describe(exc))
            con.close()
            return
        logger.warning("event log tables were missing: created again in schema %s", self.schema)

    # ----------------------------------------------------------------- writes

    def _decision_rows(self, decisions: Sequence[Decision]) -> list[tuple]:
        # The SQLite layout, with PostgreSQL booleans for `explored` and `fallback`.
        rows = [
            (*row[:10], bool(row[10]), bool(row[11]), *row[12:])
            for row in _decision_rows(decisions)
        ]
        _no_nul("customer_id", [r[5] for r in rows])
        _no_nul("decision_id", [r[0] for r in rows])
        return rows

    def _insert_decisions(self, cur: psycopg.Cursor, rows: list[tuple]) -> None:
        cur.executemany(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                self._t_decisions,
                sql.SQL(", ").join(sql.Identifier(c) for c in DECISION_COLUMNS),
                sql.SQL(", ").join(sql.Placeholder() * len(DECISION_COLUMNS)),
            ),
            rows,
        )

    def _empty_rows(self, decisions: Sequence[Decision]) -> list[tuple]:
        rows = [(*r[:6], bool(r[6]), *r[7:]) for r in _empty_decision_rows(decisions)]
        _no_nul("customer_id", [r[4] for r in rows])
        return rows

    def _insert_empty(self, cur: psycopg.Cursor, rows: list[tuple]) -> None:
        if rows:
            cur.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(
                    self._t_empty
                ),
                rows,
            )

    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        rows, empty = self._decision_rows(decisions), self._empty_rows(decisions)
        if not rows and not empty:
            return
        with self._connection() as con, con.transaction(), con.cursor() as cur:
            if rows:
                self._insert_decisions(cur, rows)
            self._insert_empty(cur, empty)

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        """Store the decisions that keep every contact cap; return the ids of the others.

        A transaction-scoped advisory lock per customer (taken in a fixed order) makes the
        count and the insert atomic across replicas: two decisions for one customer on two
        replicas cannot both take the last contact of a cap.
        """
        if not decisions:
            return set()
        self._decision_rows(decisions)  # NUL check before any lock is taken
        customers = sorted({d.customer_id for d in decisions if d.customer_id})
        with self._connection() as con, con.transaction(), con.cursor() as cur:
            for customer_id in customers:
                cur.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_CAP_LOCK, customer_id)
                )
            keep, refused = within_caps(decisions, caps, lambda p: self._cap_counts(cur, p))
            rows = self._decision_rows(keep)
            if rows:
                self._insert_decisions(cur, rows)
            self._insert_empty(cur, self._empty_rows(keep))  # no offer: no cap to break
        return refused

    def _cap_counts(self, cur: psycopg.Cursor, probes: list[CapProbe]) -> dict[CapProbe, int]:
        """Logged contacts of each (customer, offer, window start) probe, in one query."""
        customers, offers, since = (list(column) for column in zip(*probes, strict=True))
        cur.execute(
            sql.SQL(
                "SELECT p.c, p.o, p.s, (SELECT count(*) FROM {} d WHERE d.customer_id = p.c "
                "AND d.offer_id = p.o AND d.ts_us >= p.s AND d.shadow = 0) "
                "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS p(c, o, s)"
            ).format(self._t_decisions),
            (customers, offers, since),
        )
        return {(c, o, s): n for c, o, s, n in cur.fetchall()}

    def record_events(self, events: Sequence[Event]) -> EventWriteResult:
        for field in ("event_id", "decision_id", "offer_id"):
            _no_nul(field, [getattr(e, field) for e in events])
        rejected: list[EventRejection] = []
        received_us = _us(self._clock())
        with self._connection() as con, con.transaction():
            served = self._served_offers(con, {e.decision_id for e in events})
            valid: list[Event] = []
            columns: list[list[Any]] = [[] for _ in range(8)]
            for index, event in enumerate(events):
                problem = _check_event(index, event, served)
                if problem is not None:
                    rejected.append(problem)
                    continue
                valid.append(event)
                customer_id, _ = served[event.decision_id][event.offer_id]
                for column, value in zip(
                    columns,
                    (
                        event.event_id,
                        event.decision_id,
                        event.offer_id,
                        customer_id,
                        str(event.type),
                        _us(event.ts),
                        event.revenue,
                        received_us,
                    ),
                    strict=True,
                ):
                    column.append(value)
            inserted: set[str] = set()
            if valid:
                rows = con.execute(
                    sql.SQL(
                        "INSERT INTO {} SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], "
                        "%s::text[], %s::text[], %s::bigint[], %s::float8[], %s::bigint[]) "
                        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
                    ).format(self._t_events),
                    columns,
                ).fetchall()
                inserted = {r[0] for r in rows}
        # Committed: classify in the batch's order (a repeated id is new once).
        new: list[str] = []
        duplicates: list[str] = []
        for event in valid:
            if event.event_id in inserted:
                inserted.discard(event.event_id)
                new.append(event.event_id)
            else:
                duplicates.append(event.event_id)
        return EventWriteResult(tuple(new), tuple(duplicates), tuple(rejected))

    def _served_offers(
        self, con: psycopg.Connection, decision_ids: Collection[str]
    ) -> dict[str, dict[str, tuple]]:
        served: dict[str, dict[str, tuple]] = defaultdict(dict)
        if not decision_ids:
            return served
        rows = con.execute(
            sql.SQL(
                "SELECT decision_id, offer_id, customer_id, ts_us FROM {} "
                "WHERE decision_id = ANY(%s) AND shadow = 0"
            ).format(self._t_decisions),
            (list(decision_ids),),
        ).fetchall()
        for decision_id, offer_id, customer_id, ts_us in rows:
            served[decision_id][offer_id] = (customer_id, ts_us)
        return served

    # ------------------------------------------------------------------ reads

    def decision_customers(self, decision_ids: Collection[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(decision_ids))
        if not ids:
            return {}
        _no_nul("decision_id", ids)
        with self._connection() as con:
            rows = con.execute(
                sql.SQL(
                    "SELECT DISTINCT decision_id, customer_id FROM {} "
                    "WHERE decision_id = ANY(%s) AND shadow = 0"
                ).format(self._t_decisions),
                (ids,),
            ).fetchall()
        return {d: c for d, c in rows}

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        ids = [c for c in dict.fromkeys(customer_ids) if c]
        if not ids:
            return {}
        _no_nul("customer_id", ids)
        contacts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        accepted: dict[str, set[str]] = defaultdict(set)
        with self._connection() as con:
            for customer_id, offer_id, ts_us in con.execute(
                sql.SQL(
                    "SELECT customer_id, offer_id, ts_us FROM {} "
                    "WHERE customer_id = ANY(%s) AND ts_us >= %s AND shadow = 0"
                ).format(self._t_decisions),
                (ids, _us(since)),
            ):
                contacts[customer_id][offer_id].append(ts_us)
            for customer_id, offer_id in con.execute(
                sql.SQL(
                    "SELECT customer_id, offer_id FROM {} "
                    "WHERE customer_id = ANY(%s) AND type IN ('accept', 'convert')"
                ).format(self._t_events),
                (ids,),
            ):
                accepted[customer_id].add(offer_id)
        return {
            c: ContactHistory(
                contacts=MappingProxyType(
                    {o: np.asarray(t, dtype=np.int64) for o, t in contacts.get(c, {}).items()}
                ),
                accepted=frozenset(accepted.get(c, ())),
            )
            for c in ids
            if c in contacts or c in accepted
        }

    def decision_rows(self) -> list[dict[str, Any]]:
        with self._connection() as con, con.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT decision_id, ts_us, touchpoint_id, offer_id, customer_id, position, "
                    "propensity, policy, context, channel, score, explored, fallback, "
                    "model_name, model_version, experiment_id, arm, unit_id, shadow FROM {} "
                    "ORDER BY ts_us, decision_id, position"
                ).format(self._t_decisions)
            )
            rows = cur.fetchall()
        out = []
        for record in rows:
            record["ts"] = _from_us(record.pop("ts_us"))
            record["shadow"] = bool(record["shadow"])
            out.append(record)
        return out

    def outcome_rows(self) -> list[dict[str, Any]]:
        with self._connection() as con:
            rows = con.execute(
                sql.SQL(
                    "SELECT decision_id, offer_id, ts_us, type, revenue, event_id FROM {} "
                    "WHERE type = ANY(%s) ORDER BY ts_us, event_id"
                ).format(self._t_events),
                ([str(t) for t in OUTCOME_TYPES],),
            ).fetchall()
        return _outcome_dicts(rows)

    def event_ids(self) -> set[str]:
        with self._connection() as con:
            return {
                r[0] for r in con.execute(sql.SQL("SELECT event_id FROM {}").format(self._t_events))
            }

    def counts(self) -> dict[str, int]:
        with self._connection() as con:
            decisions = _count(con, self._t_decisions)
            empty = _count(con, self._t_empty)
            events = _count(con, self._t_events)
        return {"decision_rows": decisions, "decisions_without_offers": empty, "events": events}

    def ping(self) -> None:
        """Raise :class:`EventLogUnavailable` unless the tables are there and writable."""
        with self._connection() as con:
            row = con.execute(
                "SELECT current_setting('transaction_read_only'), "
                "to_regclass(%s), to_regclass(%s), to_regclass(%s)",
                [
                    f'"{self.schema}".{t}'
                    for t in ("decisions", "events", "decisions_without_offers")
                ],
            ).fetchone()
            read_only, *tables = row if row is not None else ("on", None)
            if read_only == "on":
                raise EventLogUnavailable("read_only", "the database is read-only")
            if None in tables:
                raise EventLogUnavailable("schema_missing", "the tables are missing")

    def close(self) -> None:
        self._closed = True
        self._drop_pool()


#: SQLSTATE classes and codes -> the kind of fault (:data:`recsys.errors.EVENT_LOG_FAULTS`).
_FAULT_BY_SQLSTATE = {
    "25006": "read_only",  # read_only_sql_transaction
    "42P01": "schema_missing",  # undefined_table
    "3F000": "schema_missing",  # invalid_schema_name
    "23": "constraint",  # integrity constraint violation
}


def fault_kind(exc: psycopg.Error) -> str:
    """The kind of an error of PostgreSQL: read_only, schema_missing, constraint, else
    unavailable (connection lost or refused, server shutting down, disk full, ...)."""
    state = exc.sqlstate or ""
    return _FAULT_BY_SQLSTATE.get(state) or _FAULT_BY_SQLSTATE.get(state[:2]) or "unavailable"


def _describe(exc: psycopg.Error) -> str:
    """One short line about ``exc`` (no SQL, no values: they may carry customer ids)."""
    return f"{type(exc).__name__} {exc.sqlstate or ''}".strip()


def _count(con: psycopg.Connection, table: sql.Composable) -> int:
    row = con.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    if row is None:  # count(*) always returns a row; psycopg types it as optional
        raise DataError("`SELECT count(*)` must return a row, got none")
    return int(row[0])
