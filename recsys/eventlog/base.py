"""The event log's types and the port every backend implements (:class:`EventLog`).

Also the pieces both backends share: contact-cap checks (:func:`within_caps`), the row
layout of a decision, and the validation of a feedback event against its decision.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from recsys.catalog import to_utc
from recsys.eligibility import ContactHistory

if TYPE_CHECKING:
    from recsys.decision import Decision


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    ACCEPT = "accept"
    CONVERT = "convert"
    DISMISS = "dismiss"
    #: the customer objected to the offer (marked it as spam, unsubscribed from it, ...)
    COMPLAINT = "complaint"


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
    def decision_customers(self, decision_ids: Collection[str]) -> dict[str, str]:
        """decision_id -> the customer it was made for, for the served decisions among
        ``decision_ids`` (unknown ids are left out): whose decision a browser reports on."""

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
        """Row counts: decision_rows (served offers), decisions_without_offers, events."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the log cannot be read."""

    @abstractmethod
    def close(self) -> None: ...


#: (customer, offer, window start) probes per contact-cap count query (3 parameters each).
CAP_PROBES_PER_QUERY = 300

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
        if d.customer_id and not d.shadow
        for o in d.offers
        if o.offer_id in caps
    }
    logged = count(list(probes)) if probes else {}
    added: dict[tuple[str, str], int] = defaultdict(int)
    keep: list[Decision] = []
    refused: set[str] = set()
    for d in decisions:
        if d.shadow:  # never served: never refused, never a contact
            keep.append(d)
            continue
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


#: The columns of the ``decisions`` table, in the order of :func:`_decision_rows`. The last four
#: came with experiments (issue 28) and are added in place to older logs.
DECISION_COLUMNS = (
    "decision_id", "offer_id", "ts_us", "touchpoint_id", "channel", "customer_id", "position",
    "propensity", "policy", "score", "explored", "fallback", "model_name", "model_version",
    "context", "experiment_id", "arm", "unit_id", "shadow",
)  # fmt: skip
#: Columns added after the first release: name -> SQL type (the same in SQLite and PostgreSQL).
ADDED_DECISION_COLUMNS = {
    "experiment_id": "TEXT NULL",
    "arm": "TEXT NULL",
    "unit_id": "TEXT NULL",
    "shadow": "INTEGER NOT NULL DEFAULT 0",
}


def _decision_rows(decisions: Sequence[Decision]) -> list[tuple]:
    """One row per offer of each decision, in the order of :data:`DECISION_COLUMNS`.

    Shadow decisions (``shadow`` 1) are logged but were never served: contact caps, already
    accepted offers and feedback events ignore them."""
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
            d.experiment_id,
            d.arm,
            d.unit_id,
            int(d.shadow),
        )
        for d in decisions
        for o in d.offers
    ]


def _empty_decision_rows(decisions: Sequence[Decision]) -> list[tuple]:
    """One row per decision that served no offer (``decisions`` has one row per offer, so
    these go to ``decisions_without_offers``: every acknowledged decision leaves a row)."""
    return [
        (
            d.decision_id,
            _us(d.ts),
            d.touchpoint_id,
            d.channel,
            d.customer_id,
            d.policy,
            int(d.fallback),
            d.model.name,
            d.model.version,
            json.dumps(dict(d.context), sort_keys=True, default=str) if d.context else None,
        )
        for d in decisions
        if not d.offers
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
