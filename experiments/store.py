"""Where experiments live: a table ``experiments`` in the event-log database.

Every service worker and the command line open the same database (``event_log_url``:
SQLite file or PostgreSQL schema), so ``recsys experiments start`` or ``POST
/admin/experiments/{id}/start`` changes what every running worker serves: workers poll
:meth:`ExperimentStore.snapshot` (``serving.experiments_poll_seconds``).

Rows hold the validated definition as JSON, the status (draft -> running -> stopped ->
archived; a draft may also be archived), the layer buckets of a running experiment, and the
history of every change (who, when, what). A table ``experiment_defaults`` holds the default
levers set by ``promote`` (applied outside experiments).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.assignment import Assigner, Placement, allocate_range
from experiments.definition import (
    ArmKind,
    ArmSpec,
    Experiment,
    Levers,
    Status,
    parse_experiment,
)
from recsys.errors import ConfigError, NotFoundError

#: Allowed status changes: action -> (statuses it starts from, status it leads to).
TRANSITIONS: dict[str, tuple[tuple[Status, ...], Status]] = {
    "start": ((Status.DRAFT,), Status.RUNNING),
    "stop": ((Status.RUNNING,), Status.STOPPED),
    "archive": ((Status.DRAFT, Status.STOPPED), Status.ARCHIVED),
}


@dataclass(frozen=True)
class StoredExperiment:
    """An experiment as stored: definition, status, layer buckets and history."""

    experiment: Experiment
    status: Status
    buckets: tuple[int, int] | None
    history: tuple[dict[str, Any], ...]
    updated_us: int

    @property
    def name(self) -> str:
        return self.experiment.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "status": str(self.status),
            "buckets": list(self.buckets) if self.buckets is not None else None,
            "definition": self.experiment.model_dump(mode="json"),
            "history": list(self.history),
        }


@dataclass(frozen=True)
class Snapshot:
    """What a worker serves: the running experiments with their buckets, and the default
    levers. ``version`` changes whenever any of it does."""

    placements: tuple[Placement, ...]
    default_levers: Levers
    version: tuple[Any, ...]


def _now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _entry(action: str, by: str, **detail: Any) -> dict[str, Any]:
    return {"at": datetime.now(UTC).isoformat(), "action": action, "by": by, **detail}


class ExperimentStore(ABC):
    """Experiments and default levers, shared by every process that opens the database."""

    # ------------------------------------------------------------ backend

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A write transaction holding the store's lock (a cursor-like object)."""

    @abstractmethod
    def _rows(
        self, cur: Any, where_name: str | None = None, running_only: bool = False
    ) -> list[tuple]:
        """(name, definition, status, bucket_start, bucket_end, history, updated_us) rows of
        one experiment, the running ones, or all."""

    @abstractmethod
    def _upsert(self, cur: Any, row: tuple) -> None: ...

    @abstractmethod
    def _read(self) -> contextlib.AbstractContextManager[Any]: ...

    @abstractmethod
    def _get_default(self, cur: Any) -> tuple[str, int] | None: ...

    @abstractmethod
    def _set_default(self, cur: Any, value: str, updated_us: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # ------------------------------------------------------------ reads

    def experiments(self) -> list[StoredExperiment]:
        with self._read() as cur:
            return [_stored(r) for r in self._rows(cur)]

    def get(self, name: str) -> StoredExperiment:
        """Raises NotFoundError naming the experiment."""
        with self._read() as cur:
            return self._get(cur, name)

    def _get(self, cur: Any, name: str) -> StoredExperiment:
        rows = self._rows(cur, name)
        if not rows:
            raise NotFoundError(f"`experiment` must name a stored experiment, got {name!r}")
        return _stored(rows[0])

    def promotable(self, name: str, arm_name: str) -> ArmSpec:
        """The arm ``promote`` would roll out; raises what :meth:`promote` would."""
        return _promotable(self.get(name), arm_name)

    def default_levers(self) -> Levers:
        with self._read() as cur:
            row = self._get_default(cur)
        return Levers.model_validate_json(row[0]) if row is not None else Levers()

    def snapshot(self) -> Snapshot:
        """The running experiments and default levers (what workers poll)."""
        with self._read() as cur:
            running = [_stored(r) for r in self._rows(cur, running_only=True)]
            default = self._get_default(cur)
        placements = tuple(
            Placement(s.experiment, s.buckets) for s in running if s.buckets is not None
        )
        levers = Levers.model_validate_json(default[0]) if default is not None else Levers()
        version = (
            tuple((s.name, s.updated_us) for s in running),
            default[1] if default is not None else None,
        )
        return Snapshot(placements, levers, version)

    # ------------------------------------------------------------ writes

    def create(self, experiment: Experiment, by: str, replace: bool = False) -> StoredExperiment:
        """Store a new draft (``replace``: overwrite a draft of that name).

        Raises
        ------
        ConfigError
            The name is taken (by a non-draft, or ``replace`` is off).
        """
        with self._transaction() as cur:
            rows = self._rows(cur, experiment.name)
            history: list[dict[str, Any]] = []
            if rows:
                old = _stored(rows[0])
                if not replace or old.status != Status.DRAFT:
                    raise ConfigError(
                        f"`name` must be new (or a draft with --replace), got {experiment.name!r}"
                        f" ({old.status})"
                    )
                history = list(old.history)
            history.append(_entry("replace" if rows else "create", by))
            stored = StoredExperiment(experiment, Status.DRAFT, None, tuple(history), _now_us())
            self._upsert(cur, _row(stored))
        return stored

    def transition(self, name: str, action: str, by: str) -> StoredExperiment:
        """``start``, ``stop`` or ``archive`` an experiment.

        Starting gives it a free range of its layer's buckets and checks it against the
        running experiments (experiments sharing a touchpoint must share a layer).

        Raises
        ------
        NotFoundError, ConfigError
            Unknown experiment, a change its status does not allow, or no room to start.
        """
        if action not in TRANSITIONS:
            raise ConfigError(f"`action` must be one of {', '.join(TRANSITIONS)}, got {action!r}")
        sources, target = TRANSITIONS[action]
        with self._transaction() as cur:
            stored = self._get(cur, name)
            if stored.status not in sources:
                raise ConfigError(
                    f"experiment {name} must be {' or '.join(sources)} to {action}, "
                    f"got {stored.status}"
                )
            buckets = stored.buckets
            detail: dict[str, Any] = {}
            if action == "start":
                running = [_stored(r) for r in self._rows(cur, running_only=True)]
                taken = [
                    s.buckets
                    for s in running
                    if s.buckets is not None and s.experiment.layer == stored.experiment.layer
                ]
                buckets = allocate_range(stored.experiment.traffic, taken)
                # raises if it would share a touchpoint with another layer's experiment
                Assigner(
                    [Placement(s.experiment, s.buckets) for s in running if s.buckets]
                    + [Placement(stored.experiment, buckets)]
                )
                detail["buckets"] = list(buckets)
            elif action == "stop":
                buckets = None  # the layer's buckets are free again
            history = (*stored.history, _entry(action, by, **detail))
            stored = StoredExperiment(stored.experiment, target, buckets, history, _now_us())
            self._upsert(cur, _row(stored))
        return stored

    def promote(self, name: str, arm_name: str, by: str, model_version: str | None) -> Levers:
        """Record ``arm_name`` as the winner: its levers become the default levers, and the
        experiment stops if it runs. ``model_version`` is what the caller pointed the
        champion alias at (None: the arm runs the champion already).

        Raises
        ------
        NotFoundError, ConfigError
            Unknown experiment or arm; a draft, archived or shadow-only choice.
        """
        with self._transaction() as cur:
            stored = self._get(cur, name)
            levers = _promotable(stored, arm_name).levers
            entry = _entry(
                "promote", by, arm=arm_name, model_version=model_version,
                levers=levers.model_dump(mode="json"),
            )  # fmt: skip
            history: tuple[dict[str, Any], ...] = (*stored.history, entry)
            status, buckets = stored.status, stored.buckets
            if status == Status.RUNNING:
                history = (*history, _entry("stop", by, reason="promoted"))
                status, buckets = Status.STOPPED, None
            now = _now_us()
            self._upsert(cur, _row(StoredExperiment(stored.experiment, status, buckets,
                                                    history, now)))  # fmt: skip
            self._set_default(cur, levers.model_dump_json(), now)
        return levers


def _promotable(stored: StoredExperiment, arm_name: str) -> ArmSpec:
    arm = stored.experiment.arm(arm_name)
    if stored.status not in (Status.RUNNING, Status.STOPPED):
        raise ConfigError(
            f"experiment {stored.name} must be running or stopped to promote, got {stored.status}"
        )
    if arm.kind in (ArmKind.HOLDOUT_RANDOM, ArmKind.HOLDOUT_POPULARITY):
        raise ConfigError(
            f"`arm` must be an arm with a model recipe to promote, got {arm_name!r} ({arm.kind})"
        )
    return arm


def _row(s: StoredExperiment) -> tuple:
    lo, hi = s.buckets if s.buckets is not None else (None, None)
    return (
        s.name,
        s.experiment.model_dump_json(),
        str(s.status),
        lo,
        hi,
        json.dumps(list(s.history)),
        s.updated_us,
    )


def _stored(row: Sequence[Any]) -> StoredExperiment:
    name, definition, status, lo, hi, history, updated_us = row
    return StoredExperiment(
        parse_experiment(json.loads(definition), f"stored experiment {name}"),
        Status(status),
        (int(lo), int(hi)) if lo is not None else None,
        tuple(json.loads(history)),
        int(updated_us),
    )


_COLUMNS = "name, definition, status, bucket_start, bucket_end, history, updated_us"


class SQLiteExperimentStore(ExperimentStore):
    """The store in the event log's SQLite file (WAL; shared by processes)."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 5_000):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._con.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._con.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, "
                "definition TEXT NOT NULL, status TEXT NOT NULL, bucket_start INTEGER, "
                "bucket_end INTEGER, history TEXT NOT NULL, updated_us INTEGER NOT NULL)"
            )
            cur.execute(
                "CREATE TABLE IF NOT EXISTS experiment_defaults (key TEXT PRIMARY KEY, "
                "value TEXT NOT NULL, updated_us INTEGER NOT NULL)"
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._con

    def _rows(
        self, cur: Any, where_name: str | None = None, running_only: bool = False
    ) -> list[tuple]:
        if running_only:
            return cur.execute(
                f"SELECT {_COLUMNS} FROM experiments WHERE status = 'running' ORDER BY name"
            ).fetchall()
        if where_name is None:
            return cur.execute(f"SELECT {_COLUMNS} FROM experiments ORDER BY name").fetchall()
        return cur.execute(
            f"SELECT {_COLUMNS} FROM experiments WHERE name = ?", (where_name,)
        ).fetchall()

    def _upsert(self, cur: Any, row: tuple) -> None:
        cur.execute(f"INSERT OR REPLACE INTO experiments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row)  # fmt: skip

    def _get_default(self, cur: Any) -> tuple[str, int] | None:
        row = cur.execute(
            "SELECT value, updated_us FROM experiment_defaults WHERE key = 'levers'"
        ).fetchone()
        return (row[0], int(row[1])) if row else None

    def _set_default(self, cur: Any, value: str, updated_us: int) -> None:
        cur.execute(
            "INSERT OR REPLACE INTO experiment_defaults VALUES ('levers', ?, ?)",
            (value, updated_us),
        )

    def close(self) -> None:
        with self._lock:
            self._con.close()


class PostgresExperimentStore(ExperimentStore):
    """The store in the event log's PostgreSQL schema (one connection, serialised)."""

    _LOCK = 0x7265637379730028  # advisory lock key of experiment changes

    def __init__(self, conninfo: str, schema: str = "public", connect_timeout: int = 5):
        import psycopg
        from psycopg import sql

        self._sql = sql
        self._lock = threading.Lock()
        self._connect = lambda: psycopg.connect(
            conninfo, autocommit=True, connect_timeout=connect_timeout
        )
        self._con = self._connect()
        self._t = sql.SQL("{}.experiments").format(sql.Identifier(schema))
        self._t_defaults = sql.SQL("{}.experiment_defaults").format(sql.Identifier(schema))
        with self._transaction() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (name TEXT PRIMARY KEY, definition TEXT NOT "
                    "NULL, status TEXT NOT NULL, bucket_start INTEGER, bucket_end INTEGER, "
                    "history TEXT NOT NULL, updated_us BIGINT NOT NULL)"
                ).format(self._t)
            )
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                    "updated_us BIGINT NOT NULL)"
                ).format(self._t_defaults)
            )

    def _connection(self) -> Any:
        """The connection, opened again after the server dropped it (a restart, a failover):
        a worker's next poll then reads again instead of failing forever."""
        if self._con.broken or self._con.closed:
            self._con = self._connect()
        return self._con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            con = self._connection()
            with con.transaction(), con.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._LOCK,))
                yield cur

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._lock, self._connection().cursor() as cur:
            yield cur

    def _rows(
        self, cur: Any, where_name: str | None = None, running_only: bool = False
    ) -> list[tuple]:
        sql = self._sql
        if running_only:
            cur.execute(
                sql.SQL(
                    "SELECT " + _COLUMNS + " FROM {} WHERE status = 'running' ORDER BY name"
                ).format(self._t)
            )
        elif where_name is None:
            cur.execute(sql.SQL("SELECT " + _COLUMNS + " FROM {} ORDER BY name").format(self._t))
        else:
            cur.execute(
                sql.SQL("SELECT " + _COLUMNS + " FROM {} WHERE name = %s").format(self._t),
                (where_name,),
            )
        return list(cur.fetchall())

    def _upsert(self, cur: Any, row: tuple) -> None:
        cur.execute(
            self._sql.SQL(
                "INSERT INTO {} (" + _COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, "
                "status = EXCLUDED.status, bucket_start = EXCLUDED.bucket_start, "
                "bucket_end = EXCLUDED.bucket_end, history = EXCLUDED.history, "
                "updated_us = EXCLUDED.updated_us"
            ).format(self._t),
            row,
        )

    def _get_default(self, cur: Any) -> tuple[str, int] | None:
        cur.execute(
            self._sql.SQL("SELECT value, updated_us FROM {} WHERE key = 'levers'").format(
                self._t_defaults
            )
        )
        row = cur.fetchone()
        return (row[0], int(row[1])) if row else None

    def _set_default(self, cur: Any, value: str, updated_us: int) -> None:
        cur.execute(
            self._sql.SQL(
                "INSERT INTO {} VALUES ('levers', %s, %s) ON CONFLICT (key) DO UPDATE SET "
                "value = EXCLUDED.value, updated_us = EXCLUDED.updated_us"
            ).format(self._t_defaults),
            (value, updated_us),
        )

    def close(self) -> None:
        with self._lock:
            self._con.close()


def open_experiment_store(event_log_url: str) -> ExperimentStore:
    """The store in the database of ``event_log_url`` (``sqlite:///PATH`` or
    ``postgresql://...[?schema=NAME]``).

    Raises
    ------
    ConfigError
        Another scheme.
    """
    scheme = event_log_url.split(":", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        return SQLiteExperimentStore(event_log_url[len("sqlite:///") :] or ":memory:")
    if scheme in ("postgresql", "postgres"):
        from recsys.eventlog_postgres import parse_url

        conninfo, schema = parse_url(event_log_url)
        return PostgresExperimentStore(conninfo, schema)
    raise ConfigError(
        f"`event_log_url` must be sqlite:///PATH or postgresql://..., got {event_log_url!r}"
    )
