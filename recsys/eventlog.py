"""The event log: every decision served and every feedback event, durable and idempotent.

Two tables, both append-only:

- ``decisions``: one row per offer served (the contract's ``decisions`` table plus model,
  score, explored and fallback flags). Decisions are the contact history: an offer served
  counts toward its cap from the moment the decision is committed, on every channel.
- ``events``: impression / click / accept / convert / dismiss, keyed by ``event_id``; the
  same id twice is stored once. ``record_events`` returns only after the commit, with
  ``synchronous=FULL`` so an acknowledged event survives a crash of the process or the OS.

The default backend is a SQLite file in WAL mode (``sqlite:///data/events.sqlite``). The
:class:`EventLog` interface and the URL registry (:data:`BACKENDS`) let a PostgreSQL
backend be added for several service replicas (settings ``event_log_url``).

:func:`export_contract` writes the log as contract files (``decisions.parquet``,
``outcomes.parquet``) that ``recsys data load`` reads back, closing the loop to training.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.catalog import to_utc
from recsys.eligibility import ContactHistory
from recsys.errors import ConfigError

if TYPE_CHECKING:
    from recsys.decision import Decision

logger = logging.getLogger(__name__)


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    ACCEPT = "accept"
    CONVERT = "convert"
    DISMISS = "dismiss"


#: Event types that mean the customer took the offer (it is not offered again).
ACCEPTED_TYPES = (EventType.ACCEPT, EventType.CONVERT)
#: Event types exported as contract ``outcomes`` (impressions are the decisions themselves).
OUTCOME_TYPES = (EventType.CLICK, EventType.ACCEPT, EventType.CONVERT, EventType.DISMISS)
#: How much earlier than its decision an event may be stamped (clock skew between systems).
EVENT_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Event:
    """One feedback event about an offer served in a decision."""

    event_id: str
    decision_id: str
    offer_id: str
    type: EventType
    ts: datetime
    revenue: float | None = None


@dataclass(frozen=True)
class EventRejection:
    """An event refused by the log (the others of its batch are still stored)."""

    index: int
    event_id: str
    field: str
    expected: str
    received: Any
    message: str


@dataclass(frozen=True)
class EventWriteResult:
    new: tuple[str, ...]
    duplicates: tuple[str, ...]
    rejected: tuple[EventRejection, ...]


@functools.lru_cache(maxsize=256)
def _us(ts: datetime) -> int:
    # cached: every decision of a batch (and every offer row of it) shares one time
    return int(to_utc(ts).timestamp() * 1_000_000)


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


class EventLog(ABC):
    """Decisions and feedback events. Implementations must be safe across threads."""

    @abstractmethod
    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        """Store the served offers of ``decisions``; committed when this returns."""

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        """Store the decisions that keep every contact cap; return the ids of the others.

        ``caps`` maps offer_id -> (cap_per_customer, cap_window_days). A decision serving a
        capped offer its customer already got ``cap`` times in the window (counted at commit
        time, so a concurrent decision by another worker counts) is not stored; the caller
        decides again. Backends that cannot check atomically store everything (this default).
        """
        self.record_decisions(decisions)
        return set()

    @abstractmethod
    def record_events(self, events: Sequence[Event]) -> EventWriteResult:
        """Store ``events`` idempotently by ``event_id``; committed when this returns.

        Events naming an unknown decision, an offer not served in it, or a time before the
        decision are rejected one by one; the others are stored.
        """

    @abstractmethod
    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        """Per customer: offers served since ``since`` (any channel) and offers accepted."""

    @abstractmethod
    def decision_rows(self) -> list[dict[str, Any]]:
        """Every served offer as a contract ``decisions`` row (plus log columns)."""

    @abstractmethod
    def outcome_rows(self) -> list[dict[str, Any]]:
        """Every click/accept/convert/dismiss event as a contract ``outcomes`` row."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Row counts: decisions (served offers), events."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the log cannot be read."""

    @abstractmethod
    def close(self) -> None: ...


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
)


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
        # isolation_level=None: explicit BEGIN/COMMIT, no implicit transactions.
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = self._con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise ConfigError(f"event log {self.path!r} must support WAL mode, got {mode!r}")
        # Decisions: NORMAL (durable against a process crash, fast). Events: FULL per commit.
        self._con.execute("PRAGMA synchronous = NORMAL")
        # Writers of all processes queue on an flock of a side file before BEGIN IMMEDIATE:
        # a blocked writer wakes the moment the lock is free, where SQLite's own busy
        # handler would sleep in steps of up to 100 ms (the latency tail under load).
        self._lock_file = None if self.path == ":memory:" else open(f"{self.path}.lock", "a+b")  # noqa: SIM115
        with self._write():
            for statement in _SCHEMA:
                self._con.execute(statement)
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        logger.info("event log opened: sqlite %s (WAL)", self.path)

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
    def _write(self, durable: bool = False) -> Iterator[None]:
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
        rows = _decision_rows(decisions)
        if not rows:
            return
        with self._write():
            self._con.executemany(_INSERT_DECISION, rows)

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        if not decisions:
            return set()
        # Rows are built before the lock: every worker waits for whoever holds it.
        rows = _decision_rows(decisions)
        # The write lock is held from the count to the insert: no other process can add a
        # contact in between.
        with self._write():
            _, refused = within_caps(decisions, caps, self._cap_counts)
            if refused:
                rows = [row for row in rows if row[0] not in refused]
            if rows:
                self._con.executemany(_INSERT_DECISION, rows)
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
                "AND d.ts_us >= p.since) FROM p",
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
                f"WHERE decision_id IN ({marks})",
                chunk,
            ):
                served[decision_id][offer_id] = (customer_id, ts_us)
        return served

    # ---------------------------------------------------------------- reads

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        ids = [c for c in dict.fromkeys(customer_ids) if c]
        if not ids:
            return {}
        since_us = _us(since)
        contacts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        accepted: dict[str, set[str]] = defaultdict(set)
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # One statement (one read transaction): contacts (ts_us set) and acceptances.
                for customer_id, offer_id, ts_us in self._con.execute(
                    "SELECT customer_id, offer_id, ts_us FROM decisions "
                    f"WHERE customer_id IN ({marks}) AND ts_us >= ? "
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
        with self._lock:
            cursor = self._con.execute(
                "SELECT decision_id, ts_us, touchpoint_id, offer_id, customer_id, position, "
                "propensity, policy, context, channel, score, explored, fallback, model_name, "
                "model_version FROM decisions ORDER BY ts_us, decision_id, position"
            )
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        out = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            record["ts"] = _from_us(record.pop("ts_us"))
            record["explored"] = bool(record["explored"])
            record["fallback"] = bool(record["fallback"])
            out.append(record)
        return out

    def outcome_rows(self) -> list[dict[str, Any]]:
        types = ",".join(f"'{t}'" for t in OUTCOME_TYPES)
        with self._lock:
            rows = self._con.execute(
                "SELECT decision_id, offer_id, ts_us, type, revenue, event_id FROM events "
                f"WHERE type IN ({types}) ORDER BY ts_us, event_id"
            ).fetchall()
        return _outcome_dicts(rows)

    def event_ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._con.execute("SELECT event_id FROM events")}

    def counts(self) -> dict[str, int]:
        with self._lock:
            decisions = self._con.execute("SELECT count(*) FROM decisions").fetchone()[0]
            events = self._con.execute("SELECT count(*) FROM events").fetchone()[0]
        return {"decision_rows": int(decisions), "events": int(events)}

    def ping(self) -> None:
        with self._lock:
            self._con.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        with self._lock:
            self._con.close()
            if self._lock_file is not None:
                self._lock_file.close()


#: (customer, offer, window start) probes per contact-cap count query (3 parameters each).
CAP_PROBES_PER_QUERY = 300

_INSERT_DECISION = "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


#: (customer_id, offer_id, start of the cap window in epoch us)
CapProbe = tuple[str, str, int]


def within_caps(
    decisions: Sequence[Decision],
    caps: Mapping[str, tuple[int, int]],
    count: Callable[[list[CapProbe]], Mapping[CapProbe, int]],
) -> tuple[list[Decision], set[str]]:
    """Split ``decisions`` into those that keep every contact cap and the ids of the others.

    ``caps``: offer_id -> (cap_per_customer, cap_window_days). ``count`` returns the logged
    contacts of each probe (one backend query for all). Decisions are taken in order and
    each kept one counts for the next, as if they were logged one by one.
    """
    probes = {
        (d.customer_id, o.offer_id, _cap_since(d, caps[o.offer_id]))
        for d in decisions
        if d.customer_id
        for o in d.offers
        if o.offer_id in caps
    }
    logged = count(list(probes)) if probes else {}
    added: dict[tuple[str, str], int] = defaultdict(int)
    keep: list[Decision] = []
    refused: set[str] = set()
    for d in decisions:
        if d.customer_id and _breaks_cap(d, caps, logged, added):
            refused.add(d.decision_id)
            continue
        keep.append(d)
        for o in d.offers:
            added[(d.customer_id, o.offer_id)] += 1
    return keep, refused


def _breaks_cap(
    decision: Decision,
    caps: Mapping[str, tuple[int, int]],
    logged: Mapping[CapProbe, int],
    added: Mapping[tuple[str, str], int],
) -> bool:
    """Would ``decision`` serve a capped offer its customer already got ``cap`` times?"""
    for offer in decision.offers:
        cap = caps.get(offer.offer_id)
        if cap is None:
            continue
        key = (decision.customer_id, offer.offer_id)
        if logged.get((*key, _cap_since(decision, cap)), 0) + added.get(key, 0) >= cap[0]:
            return True
    return False


def _cap_since(decision: Decision, cap: tuple[int, int]) -> int:
    """Start (epoch us) of the cap window ``(per_customer, window_days)`` of ``decision``."""
    return _us(decision.ts) - cap[1] * 86_400 * 1_000_000


def _decision_rows(decisions: Sequence[Decision]) -> list[tuple]:
    """One row per served offer, in the column order of the ``decisions`` table."""
    return [
        (
            d.decision_id,
            o.offer_id,
            _us(d.ts),
            d.touchpoint_id,
            d.channel,
            d.customer_id,
            o.rank,
            o.propensity,
            d.policy,
            o.score,
            int(o.explored),
            int(d.fallback),
            d.model.name,
            d.model.version,
            json.dumps(dict(d.context), sort_keys=True, default=str) if d.context else None,
        )
        for d in decisions
        for o in d.offers
    ]


def _outcome_dicts(rows: Sequence[tuple]) -> list[dict[str, Any]]:
    """Rows of (decision_id, offer_id, ts_us, type, revenue, event_id) as outcome records."""
    return [
        {
            "decision_id": d,
            "offer_id": o,
            "ts": _from_us(ts),
            "outcome": t,
            "revenue": r,
            "event_id": e,
        }
        for d, o, ts, t, r, e in rows
    ]


def _check_event(
    index: int, event: Event, served: dict[str, dict[str, tuple]]
) -> EventRejection | None:
    offers = served.get(event.decision_id)
    if not offers:
        return EventRejection(
            index,
            event.event_id,
            "decision_id",
            "the decision_id of a decision served by this service",
            event.decision_id,
            f"unknown decision_id {event.decision_id!r}",
        )
    if event.offer_id not in offers:
        return EventRejection(
            index,
            event.event_id,
            "offer_id",
            f"one of the offers served in decision {event.decision_id}: "
            + ", ".join(sorted(offers)),
            event.offer_id,
            f"offer {event.offer_id!r} was not served in decision {event.decision_id!r}",
        )
    _, decided_us = offers[event.offer_id]
    earliest = decided_us - int(EVENT_CLOCK_SKEW.total_seconds() * 1_000_000)
    if _us(event.ts) < earliest:
        return EventRejection(
            index,
            event.event_id,
            "ts",
            f"a time at or after the decision ({_from_us(decided_us).isoformat()})",
            event.ts.isoformat(),
            "event is stamped before its decision",
        )
    return None


def _postgres(url: str, **kwargs: Any) -> EventLog:
    # Imported on use: psycopg is only needed when the log is in PostgreSQL.
    from recsys.eventlog_postgres import PostgresEventLog

    return PostgresEventLog.from_url(url, **kwargs)


#: URL scheme -> constructor.
BACKENDS: dict[str, Callable[..., EventLog]] = {
    "sqlite": SQLiteEventLog.from_url,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def open_event_log(url: str, **kwargs: Any) -> EventLog:
    """Open the event log named by ``url`` (``sqlite:///PATH``; more backends by scheme)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    try:
        factory = BACKENDS[scheme]
    except KeyError:
        raise ConfigError(
            f"`event_log_url` scheme must be one of {', '.join(sorted(BACKENDS))}, got {url!r}"
        ) from None
    return factory(url, **kwargs)


# ------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportSummary:
    decisions_path: Path
    outcomes_path: Path
    decision_rows: int
    outcome_rows: int
    anonymised_customers: int


def export_contract(
    log: EventLog,
    out_dir: str | Path,
    known_customers: Collection[str] | None = None,
) -> ExportSummary:
    """Write the log as contract files ``decisions.parquet`` and ``outcomes.parquet``.

    ``recsys data load OUT_DIR`` then appends the new rows to the warehouse (loading twice
    adds nothing: both tables are keyed), so the next training sees what was served.

    Parameters
    ----------
    log : EventLog
    out_dir : folder to write into (created)
    known_customers : collection of str, optional
        The warehouse's customer ids. Decisions for other ids (cold-start customers the
        warehouse does not know) are written with ``customer_id`` empty, as anonymous
        decisions, so the reference check of the load passes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    decisions = log.decision_rows()
    outcomes = log.outcome_rows()
    anonymised: set[str] = set()
    if known_customers is not None:
        known = set(known_customers)
        for row in decisions:
            if row["customer_id"] is not None and row["customer_id"] not in known:
                anonymised.add(row["customer_id"])
                row["customer_id"] = None

    def naive(ts: datetime) -> datetime:
        return to_utc(ts).replace(tzinfo=None)

    decisions_table = pa.table(
        {
            "decision_id": pa.array([r["decision_id"] for r in decisions], pa.string()),
            "ts": pa.array([naive(r["ts"]) for r in decisions], pa.timestamp("us")),
            "touchpoint_id": pa.array([r["touchpoint_id"] for r in decisions], pa.string()),
            "offer_id": pa.array([r["offer_id"] for r in decisions], pa.string()),
            "customer_id": pa.array([r["customer_id"] for r in decisions], pa.string()),
            "position": pa.array([r["position"] for r in decisions], pa.int64()),
            "propensity": pa.array([r["propensity"] for r in decisions], pa.float64()),
            "policy": pa.array([r["policy"] for r in decisions], pa.string()),
            "context": pa.array([r["context"] for r in decisions], pa.string()),
        }
    )
    outcomes_table = pa.table(
        {
            "decision_id": pa.array([r["decision_id"] for r in outcomes], pa.string()),
            "offer_id": pa.array([r["offer_id"] for r in outcomes], pa.string()),
            "ts": pa.array([naive(r["ts"]) for r in outcomes], pa.timestamp("us")),
            "outcome": pa.array([r["outcome"] for r in outcomes], pa.string()),
            "revenue": pa.array([r["revenue"] for r in outcomes], pa.float64()),
        }
    )
    decisions_path = out / "decisions.parquet"
    outcomes_path = out / "outcomes.parquet"
    pq.write_table(decisions_table, decisions_path)
    pq.write_table(outcomes_table, outcomes_path)
    logger.info(
        "event log exported: %d decision rows, %d outcomes -> %s",
        len(decisions),
        len(outcomes),
        out,
    )
    return ExportSummary(
        decisions_path, outcomes_path, len(decisions), len(outcomes), len(anonymised)
    )
