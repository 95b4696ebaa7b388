"""Event-log backends by URL scheme: ``open_event_log(url)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recsys.errors import ConfigError
from recsys.eventlog.base import EventLog
from recsys.eventlog.sqlite import SQLiteEventLog


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
