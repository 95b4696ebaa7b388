"""The SQLite backend of the event log: one file in WAL mode, shared by several processes."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.eligibility import ContactHistory
from recsys.errors import ConfigError, EventLogUnavailable
from recsys.eventlog.base import (
    ADDED_DECISION_COLUMNS,
    CAP_PROBES_PER_QUERY,
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


_INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))})"
)
_INSERT_EMPTY = "INSERT INTO decisions_without_offers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS decisions (
        decision_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        ts_us INTEGER NOT NULL,
        touchpoint_id TEXT NOT NULL,
        channel TEXT,
        customer_id TEXT,
        position INTEGER NOT NULL,
        propensity REAL NOT NULL,
        policy TEXT,
        score REAL,
        explored INTEGER NOT NULL,
        fallback INTEGER NOT NULL,
        model_name TEXT,
        model_version TEXT,
        context TEXT,
        experiment_id TEXT NULL,
        arm TEXT NULL,
        unit_id TEXT NULL,
        shadow INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (decision_id, offer_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS decisions_customer_ts ON decisions (customer_id, ts_us)",
    """CREATE TABLE IF NOT EXISTS events (
        event_id TEXT PRIMARY KEY,
        decision_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        customer_id TEXT,
        type TEXT NOT NULL,
        ts_us INTEGER NOT NULL,
        revenue REAL,
        received_us INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_customer_type ON events (customer_id, type)",
    "CREATE INDEX IF NOT EXISTS events_decision ON events (decision_id)",
    """CREATE TABLE IF NOT EXISTS decisions_without_offers (
        decision_id TEXT PRIMARY KEY,
        ts_us INTEGER NOT NULL,
        touchpoint_id TEXT NOT NULL,
        channel TEXT,
        customer_id TEXT,
        policy TEXT,
        fallback INTEGER NOT NULL,
        model_name TEXT,
        model_version TEXT,
        context TEXT
    )""",
)
_TABLES = ("decisions", "events", "decisions_without_offers")


class SQLiteEventLog(EventLog):
    """The event log in one SQLite file, WAL mode; several processes may share the file.

    Parameters
    ----------
    path : path of the SQLite file (created with its folder), or ``":memory:"``
    busy_timeout_ms : how long a writer waits for another process's write lock
    clock : callable returning an aware datetime (receive time of events)
    """

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 5_000,
        clock: Callable[[], datetime] | None = None,
    ):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()  # the connection: one statement at a time
        self._write_lock = threading.Lock()  # one writer of this process at a time
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._last_fault: str | None = None  # of the last write; cleared by the next one
        self._con, self._file_id = self._open()
        # Writers of all processes queue on an flock of a side file before BEGIN IMMEDIATE:
        # a blocked writer wakes the moment the lock is free, where SQLite's own busy
        # handler would sleep in steps of up to 100 ms (the latency tail under load).
        self._lock_file = None if self.path == ":memory:" else open(f"{self.path}.lock", "a+b")  # noqa: SIM115
        self._create_schema()
        logger.info("event log opened: sqlite %s (WAL)", self.path)

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
        """A connection to the file (isolation_level=None: explicit BEGIN/COMMIT) and the
        file's identity (device, inode), to notice a file deleted or replaced under us."""
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise ConfigError(f"event log {self.path!r} must support WAL mode, got {mode!r}")
        # Decisions: NORMAL (durable against a process crash, fast). Events: FULL per commit.
        con.execute("PRAGMA synchronous = NORMAL")
        if self._checkpointer is not None:
            con.execute("PRAGMA wal_autocheckpoint = 0")
        return con, self._current_file_id()

    def _current_file_id(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _create_schema(self) -> None:
        with self._write():
            for statement in _SCHEMA:
                self._con.execute(statement)
            self._add_missing_columns()

    def _reopen(self) -> None:
        """A fresh connection (the file may have been replaced, or been read-only)."""
        with self._lock:
            try:
                con, file_id = self._open()
            except sqlite3.Error as exc:  # still broken: the next failure tries again
                logger.warning("event log %s not reopened: %s", self.path, _describe(exc))
                return
            self._con.close()
            self._con, self._file_id = con, file_id

    def _fault(self, exc: sqlite3.Error) -> EventLogUnavailable:
        """Heal what can be healed after ``exc`` (no lock held); the error for the caller."""
        kind = fault_kind(exc)
        if (kind == "read_only" or _broken_file(exc)) and self.path != ":memory:":
            self._reopen()
        elif kind == "schema_missing":
            try:
                self._create_schema()
            except EventLogUnavailable as again:
                logger.warning("event log tables missing and not created again: %s", again)
            else:
                logger.warning("event log tables were missing: created again in %s", self.path)
        return EventLogUnavailable(kind, _describe(exc))

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        """The connection for reading; a failure comes out classified."""
        try:
            with self._lock:
                yield
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc

    @contextlib.contextmanager
    def _write(self, durable: bool = False) -> Iterator[None]:
        """:meth:`_transaction`; a failure comes out classified (after the locks are free)."""
        try:
            with self._transaction(durable):
                yield
        except sqlite3.Error as exc:
            fault = self._fault(exc)
            self._last_fault = fault.kind
            raise fault from exc
        self._last_fault = None

    def _add_missing_columns(self) -> None:
        """Migrate a log written by an older release in place (columns added since)."""
        have = {row[1] for row in self._con.execute("PRAGMA table_info(decisions)")}
        for name, kind in ADDED_DECISION_COLUMNS.items():
            if name not in have:
                self._con.execute(f"ALTER TABLE decisions ADD COLUMN {name} {kind}")
                logger.info("event log %s: added column decisions.%s", self.path, name)

    def checkpoint_in_background(self, every_s: float) -> None:
        """Move WAL checkpoints off the write path: a thread checkpoints every ``every_s``.

        By default the commit that grows the WAL past 1000 pages runs the checkpoint itself
        (copy to the database file, fsync), a stall of that one request. With this, commits
        only append; the thread's PASSIVE checkpoints never wait for readers or writers (a
        busy checkpoint is retried on the next tick). For the service, not for batch jobs.
        """
        if self.path == ":memory:" or self._checkpointer is not None:
            return
        with self._lock:
            self._con.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(every_s,), name="wal-checkpoints", daemon=True
        )
        self._checkpointer.start()

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint on its own connection: (busy, WAL frames, frames copied)."""
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            busy, frames, copied = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            con.close()
        return int(busy), int(frames), int(copied)

    def _checkpoint_loop(self, every_s: float) -> None:
        while not self._stop_checkpoints.wait(every_s):
            try:
                self.checkpoint()
            except sqlite3.Error as exc:  # the next tick tries again; writes go on
                logger.warning("event log checkpoint failed: %s", exc)

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[None]:
        """One write transaction, serialised within the process and across processes.

        ``durable``: synced to disk at commit (acknowledged events); decisions are not
        (NORMAL in WAL mode survives a process crash, which is what they need). Waiting for
        another process's write holds only the writers' lock: reads go on meanwhile.
        """
        with self._write_lock:
            if self._lock_file is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
            try:
                with self._lock:
                    if durable:
                        self._con.execute("PRAGMA synchronous = FULL")
                    try:
                        self._con.execute("BEGIN IMMEDIATE")
                        try:
                            yield
                            self._con.execute("COMMIT")
                        except BaseException:
                            self._con.execute("ROLLBACK")
                            raise
                    finally:
                        if durable:
                            self._con.execute("PRAGMA synchronous = NORMAL")
            finally:
                if self._lock_file is not None:
                    fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SQLiteEventLog:
        prefix = "sqlite:///"
        if not url.startswith(prefix):
            raise ConfigError(f"`event_log_url` must look like sqlite:///PATH, got {url!r}")
        return cls(url[len(prefix) :] or ":memory:", **kwargs)

    def __repr__(self) -> str:
        return f"SQLiteEventLog({self.path!r})"

    # ---------------------------------------------------------------- writes

    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        rows, empty = _decision_rows(decisions), _empty_decision_rows(decisions)
        if not rows and not empty:
            return
        with self._write():
            self._con.executemany(_INSERT_DECISION, rows)
            self._con.executemany(_INSERT_EMPTY, empty)

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        if not decisions:
            return set()
        # Rows are built before the lock: every worker waits for whoever holds it.
        rows, empty = _decision_rows(decisions), _empty_decision_rows(decisions)
        # The write lock is held from the count to the insert: no other process can add a
        # contact in between.
        with self._write():
            _, refused = within_caps(decisions, caps, self._cap_counts)
            if refused:
                rows = [row for row in rows if row[0] not in refused]
            if rows:
                self._con.executemany(_INSERT_DECISION, rows)
            if empty:  # no offer: no cap to break
                self._con.executemany(_INSERT_EMPTY, empty)
        return refused

    def _cap_counts(self, probes: list[CapProbe]) -> dict[CapProbe, int]:
        """Logged contacts of each probe: one query per ``CAP_PROBES_PER_QUERY`` probes."""
        rows: list[tuple[str, str, int, int]] = []
        for start in range(0, len(probes), CAP_PROBES_PER_QUERY):
            chunk = probes[start : start + CAP_PROBES_PER_QUERY]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            rows += self._con.execute(
                f"WITH p(customer_id, offer_id, since) AS (VALUES {values}) "
                "SELECT p.customer_id, p.offer_id, p.since, (SELECT count(*) FROM decisions d "
                "WHERE d.customer_id = p.customer_id AND d.offer_id = p.offer_id "
                "AND d.ts_us >= p.since AND d.shadow = 0) FROM p",
                [value for probe in chunk for value in probe],
            ).fetchall()
        return {(c, o, since): n for c, o, since, n in rows}

    def record_events(self, events: Sequence[Event]) -> EventWriteResult:
        new: list[str] = []
        duplicates: list[str] = []
        rejected: list[EventRejection] = []
        received_us = _us(self._clock())
        with self._write(durable=True):
            served = self._served_offers({e.decision_id for e in events})
            for index, event in enumerate(events):
                problem = _check_event(index, event, served)
                if problem is not None:
                    rejected.append(problem)
                    continue
                customer_id, _ = served[event.decision_id][event.offer_id]
                cursor = self._con.execute(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING",
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
                )
                (new if cursor.rowcount == 1 else duplicates).append(event.event_id)
        return EventWriteResult(tuple(new), tuple(duplicates), tuple(rejected))

    def _served_offers(self, decision_ids: Collection[str]) -> dict[str, dict[str, tuple]]:
        """decision_id -> offer_id -> (customer_id, ts_us), for the given decisions."""
        served: dict[str, dict[str, tuple]] = defaultdict(dict)
        ids = list(decision_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for decision_id, offer_id, customer_id, ts_us in self._con.execute(
                "SELECT decision_id, offer_id, customer_id, ts_us FROM decisions "
                f"WHERE decision_id IN ({marks}) AND shadow = 0",
                chunk,
            ):
                served[decision_id][offer_id] = (customer_id, ts_us)
        return served

    # ---------------------------------------------------------------- reads

    def decision_customers(self, decision_ids: Collection[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(decision_ids))
        owners: dict[str, str] = {}
        with self._read():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                owners.update(
                    self._con.execute(
                        "SELECT DISTINCT decision_id, customer_id FROM decisions "
                        f"WHERE decision_id IN ({marks}) AND shadow = 0",
                        chunk,
                    ).fetchall()
                )
        return owners

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        ids = [c for c in dict.fromkeys(customer_ids) if c]
        if not ids:
            return {}
        since_us = _us(since)
        contacts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        accepted: dict[str, set[str]] = defaultdict(set)
        with self._read():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # One statement (one read transaction): contacts (ts_us set) and acceptances.
                for customer_id, offer_id, ts_us in self._con.execute(
                    "SELECT customer_id, offer_id, ts_us FROM decisions "
                    f"WHERE customer_id IN ({marks}) AND ts_us >= ? AND shadow = 0 "
                    "UNION ALL SELECT customer_id, offer_id, NULL FROM events "
                    f"WHERE customer_id IN ({marks}) AND type IN ('accept', 'convert')",
                    [*chunk, since_us, *chunk],
                ):
                    if ts_us is None:
                        accepted[customer_id].add(offer_id)
                    else:
                        contacts[customer_id][offer_id].append(ts_us)
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
        with self._read():
            cursor = self._con.execute(
                "SELECT decision_id, ts_us, touchpoint_id, offer_id, customer_id, position, "
                "propensity, policy, context, channel, score, explored, fallback, model_name, "
                "model_version, experiment_id, arm, unit_id, shadow FROM decisions "
                "ORDER BY ts_us, decision_id, position"
            )
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        out = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            record["ts"] = _from_us(record.pop("ts_us"))
            record["explored"] = bool(record["explored"])
            record["fallback"] = bool(record["fallback"])
            record["shadow"] = bool(record["shadow"])
            out.append(record)
        return out

    def outcome_rows(self) -> list[dict[str, Any]]:
        types = ",".join(f"'{t}'" for t in OUTCOME_TYPES)
        with self._read():
            rows = self._con.execute(
                "SELECT decision_id, offer_id, ts_us, type, revenue, event_id FROM events "
                f"WHERE type IN ({types}) ORDER BY ts_us, event_id"
            ).fetchall()
        return _outcome_dicts(rows)

    def event_ids(self) -> set[str]:
        with self._read():
            return {r[0] for r in self._con.execute("SELECT event_id FROM events")}

    def counts(self) -> dict[str, int]:
        with self._read():
            decisions = self._con.execute("SELECT count(*) FROM decisions").fetchone()[0]
            empty = self._con.execute("SELECT count(*) FROM decisions_without_offers").fetchone()[0]
            events = self._con.execute("SELECT count(*) FROM events").fetchone()[0]
        return {
            "decision_rows": int(decisions),
            "decisions_without_offers": int(empty),
            "events": int(events),
        }

    def ping(self) -> None:
        """Raise :class:`EventLogUnavailable` unless the file is ours, has both tables and
        takes writes. A file deleted or replaced under the service is opened again."""
        if self._current_file_id() != self._file_id:
            logger.warning("event log %s was deleted or replaced: opening it again", self.path)
            self._reopen()
            self._create_schema()
        with self._read():
            tables = {
                r[0]
                for r in self._con.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
        if not tables.issuperset(_TABLES):
            logger.warning("event log tables were missing: creating them again in %s", self.path)
            self._create_schema()
        elif self._last_fault is not None:
            with self._write():  # does it take writes again? (rewrites the same version)
                version = int(self._con.execute("PRAGMA user_version").fetchone()[0])
                self._con.execute(f"PRAGMA user_version = {version}")

    def close(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            self._con.close()
            if self._lock_file is not None:
                self._lock_file.close()


def fault_kind(exc: sqlite3.Error) -> str:
    """The kind of an error of SQLite: read_only, schema_missing, constraint, else
    unavailable (locked, disk I/O, full, damaged file)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "constraint"
    name = exc.sqlite_errorname or ""
    if name.startswith("SQLITE_READONLY"):
        return "read_only"
    if str(exc).startswith("no such table"):
        return "schema_missing"
    return "unavailable"


#: Errors after which the connection is opened again (the file may have been replaced or
#: repaired); a busy or locked database is not one of them: it only has to be waited for.
_REOPEN_ERRORS = ("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_CORRUPT", "SQLITE_NOTADB")


def _broken_file(exc: sqlite3.Error) -> bool:
    return (exc.sqlite_errorname or "").startswith(_REOPEN_ERRORS)


def _describe(exc: sqlite3.Error) -> str:
    """One short line about ``exc`` (no SQL, no values)."""
    return f"{type(exc).__name__} {exc.sqlite_errorname or ''}".strip()
