"""A small event log whose offer performance is counted by hand (see :data:`EXPECTED`).

Decisions and events go through the event log's own port (``record_decisions``,
``record_events``), so the SQLite and PostgreSQL backends store them as the service does.
The catalogue is the decision-path factories' (``tests.recsys.factories``): web_home is web /
awareness, app_home app / consideration, email_weekly email / post_purchase; ``kiosk`` is not
in it (its stage is ``unknown``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from recsys.decision import ModelInfo
from recsys.decision.types import Decision, ServedOffer
from recsys.eventlog import Event, EventLog, EventType

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
#: The window of the hand counts: d6 (day 3) is after it.
UNTIL = T0 + timedelta(days=3)
_CHANNELS = {"web_home": "web", "app_home": "app", "email_weekly": "email", "kiosk": "store"}


def _decision(
    decision_id: str, hours: float, touchpoint: str, offers: list[str], shadow: bool = False
) -> Decision:
    return Decision(
        decision_id=decision_id,
        ts=T0 + timedelta(hours=hours),
        customer_id=f"c-{decision_id}",
        touchpoint_id=touchpoint,
        channel=_CHANNELS[touchpoint],
        offers=tuple(
            ServedOffer(o, o, rank, 0.5, 1.0, 1.0, False, ()) for rank, o in enumerate(offers, 1)
        ),
        fallback=False,
        cold_start=False,
        model=ModelInfo("offer-ranker", "1"),
        policy="greedy",
        context={},
        shadow=shadow,
    )


DECISIONS = [
    _decision("d1", 0, "web_home", ["o_tv", "o_dress"]),
    _decision("d2", 1, "web_home", ["o_tv"]),
    _decision("d3", 2, "app_home", ["o_dress"]),
    _decision("d4", 24, "email_weekly", ["o_tv", "o_sofa"]),
    _decision("d5", 30, "app_home", ["o_tv"], shadow=True),  # never served: not counted
    _decision("d6", 72, "web_home", ["o_dress"]),  # at UNTIL: outside [since, until)
    _decision("d7", 3, "kiosk", ["o_sofa"]),
]

_E = EventType


def _event(n: int, decision: str, offer: str, kind: EventType, minutes: float, revenue=None):
    ts = next(d.ts for d in DECISIONS if d.decision_id == decision)
    return Event(f"e{n}", decision, offer, kind, ts + timedelta(minutes=minutes), revenue)


EVENTS = [
    _event(1, "d1", "o_tv", _E.IMPRESSION, 1),
    _event(2, "d1", "o_tv", _E.CLICK, 2),
    _event(3, "d1", "o_tv", _E.ACCEPT, 3),
    _event(4, "d1", "o_tv", _E.CONVERT, 60, 50.0),
    _event(5, "d1", "o_dress", _E.IMPRESSION, 1),
    _event(6, "d1", "o_dress", _E.DISMISS, 2),
    _event(7, "d2", "o_tv", _E.IMPRESSION, 1),
    _event(8, "d2", "o_tv", _E.CLICK, 2),
    _event(9, "d2", "o_tv", _E.CLICK, 5),  # a second click of the same impression: once
    _event(10, "d3", "o_dress", _E.CLICK, 2),
    _event(11, "d3", "o_dress", _E.ACCEPT, 4, 20.0),
    _event(12, "d4", "o_tv", _E.CLICK, 8 * 24 * 60),  # after the 7-day attribution window
    _event(13, "d4", "o_tv", _E.COMPLAINT, 10),
    _event(14, "d4", "o_sofa", _E.CONVERT, 60, 30.0),
    _event(15, "d6", "o_dress", _E.ACCEPT, 5, 10.0),
    _event(16, "d7", "o_sofa", _E.ACCEPT, 5, 5.0),
]

#: (dimension, segment) -> (impressions, reported seen, clicks, accepts, conversions,
#: dismissals, complaints, revenue) for decisions in [T0, UNTIL), attribution 7 days.
EXPECTED: dict[tuple[str, str], tuple[int, int, int, int, int, int, int, float]] = {
    ("all", "all"): (7, 3, 3, 4, 2, 1, 1, 105.0),
    ("offer", "o_tv"): (3, 2, 2, 1, 1, 0, 1, 50.0),
    ("offer", "o_dress"): (2, 1, 1, 1, 0, 1, 0, 20.0),
    ("offer", "o_sofa"): (2, 0, 0, 2, 1, 0, 0, 35.0),
    ("touchpoint", "web_home"): (3, 3, 2, 1, 1, 1, 0, 50.0),
    ("touchpoint", "app_home"): (1, 0, 1, 1, 0, 0, 0, 20.0),
    ("touchpoint", "email_weekly"): (2, 0, 0, 1, 1, 0, 1, 30.0),
    ("touchpoint", "kiosk"): (1, 0, 0, 1, 0, 0, 0, 5.0),
    ("channel", "web"): (3, 3, 2, 1, 1, 1, 0, 50.0),
    ("channel", "app"): (1, 0, 1, 1, 0, 0, 0, 20.0),
    ("channel", "email"): (2, 0, 0, 1, 1, 0, 1, 30.0),
    ("channel", "store"): (1, 0, 0, 1, 0, 0, 0, 5.0),
    ("stage", "awareness"): (3, 3, 2, 1, 1, 1, 0, 50.0),
    ("stage", "consideration"): (1, 0, 1, 1, 0, 0, 0, 20.0),
    ("stage", "post_purchase"): (2, 0, 0, 1, 1, 0, 1, 30.0),
    ("stage", "unknown"): (1, 0, 0, 1, 0, 0, 0, 5.0),
    ("day", "2026-06-01"): (5, 3, 3, 3, 1, 1, 0, 75.0),
    ("day", "2026-06-02"): (2, 0, 0, 1, 1, 0, 1, 30.0),
}
COUNTS = (
    "impressions",
    "reported_impressions",
    "clicks",
    "accepts",
    "conversions",
    "dismissals",
    "complaints",
    "revenue",
)


def record(log: EventLog) -> None:
    """Write :data:`DECISIONS` and :data:`EVENTS` into ``log`` (every event accepted)."""
    log.record_decisions(DECISIONS)
    result = log.record_events(EVENTS)
    assert not result.rejected, result.rejected
