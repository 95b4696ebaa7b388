"""The event log: every decision served and every feedback event, durable and idempotent.

Three tables, all append-only:

- ``decisions``: one row per offer served (the contract's ``decisions`` table plus model,
  score, explored and fallback flags). Decisions are the contact history: an offer served
  counts toward its cap from the moment the decision is committed, on every channel.
- ``events``: impression / click / accept / convert / dismiss / complaint, keyed by ``event_id``; the
  same id twice is stored once. ``record_events`` returns only after the commit, with
  ``synchronous=FULL`` so an acknowledged event survives a crash of the process or the OS.
- ``decisions_without_offers``: one row per decision that served no offer (no eligible
  offer, no consent), so every acknowledged decision leaves a row.

Every backend error comes out as :class:`~recsys.errors.EventLogUnavailable` with its kind
(unavailable, read-only, schema missing, constraint); the backends drop broken or read-only
connections and create missing tables again, so they recover without a restart.

The default backend is a SQLite file in WAL mode (``sqlite:///data/events.sqlite``). The
:class:`EventLog` interface and the URL registry (:data:`BACKENDS`) let a PostgreSQL
backend be added for several service replicas (settings ``event_log_url``).

:func:`export_contract` writes the log as contract files (``decisions.parquet``,
``outcomes.parquet``) that ``recsys data load`` reads back, closing the loop to training.

Modules: ``base`` (types, the :class:`EventLog` port, contact caps), ``sqlite`` (the default
backend), ``backends`` (the URL registry), ``export`` (contract files).
"""

from recsys.eventlog.backends import BACKENDS, open_event_log
from recsys.eventlog.base import (
    ACCEPTED_TYPES,
    CAP_PROBES_PER_QUERY,
    EVENT_CLOCK_SKEW,
    OUTCOME_TYPES,
    CapProbe,
    Event,
    EventLog,
    EventRejection,
    EventType,
    EventWriteResult,
    within_caps,
)
from recsys.eventlog.export import ExportSummary, export_contract
from recsys.eventlog.sqlite import SQLiteEventLog

__all__ = [
    "ACCEPTED_TYPES",
    "BACKENDS",
    "CAP_PROBES_PER_QUERY",
    "EVENT_CLOCK_SKEW",
    "OUTCOME_TYPES",
    "CapProbe",
    "Event",
    "EventLog",
    "EventRejection",
    "EventType",
    "EventWriteResult",
    "ExportSummary",
    "SQLiteEventLog",
    "export_contract",
    "open_event_log",
    "within_caps",
]
