"""Live traffic from the demo business's customers through the service's decision path.

:func:`drive_demo_traffic` plays N days: each day the demo customers visit realtime
touchpoints (:meth:`recsys.datagen.customers.DemoCustomers.visits_on`), the service's
pipeline decides every visit as of its time, by whatever arm (experiment) the pipeline
resolves, and records it; the customers respond to what they were shown with the demo's
hidden acceptance model, and their responses are recorded in the event log as the events
API would. Outcomes that would happen after ``end`` have not happened yet and are not
recorded (a late accept arrives later in real life too).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from tqdm import tqdm

from recsys.datagen.customers import DemoCustomers, Visit
from recsys.decision import DecisionRequest
from recsys.eventlog import Event
from serving.components import Components


@dataclass
class TrafficSummary:
    """What a run of demo traffic did."""

    days: int
    visits: int = 0
    decisions: int = 0
    offers_shown: int = 0
    events: Counter[str] = field(default_factory=Counter)
    by_arm: Counter[str] = field(default_factory=Counter)

    def format(self) -> str:
        events = ", ".join(f"{n:,} {t}" for t, n in sorted(self.events.items())) or "none"
        arms = ", ".join(f"{a}: {n:,}" for a, n in sorted(self.by_arm.items()))
        return (
            f"{self.days} days: {self.visits:,} visits, {self.decisions:,} decisions "
            f"({arms}), {self.offers_shown:,} offers shown; events: {events}"
        )


def drive_demo_traffic(
    components: Components,
    customers: DemoCustomers,
    days: int,
    end: datetime,
    *,
    seed: int = 0,
    chunk: int = 200,
    progress: bool = True,
) -> TrafficSummary:
    """Play the ``days`` whole days (UTC) before ``end``'s day through ``components``.

    Parameters
    ----------
    components : the service's components (pipeline, event log)
    customers : the demo's customers (their fatigue carries over between calls)
    days : int >= 1
    end : aware datetime; no outcome after it is recorded (e.g. now)
    seed : draws of visits and responses
    chunk : visits decided together (in time order, as of the first one's time)
    """
    if days < 1:
        raise ValueError(f"`days` must be >= 1, got {days}")
    if chunk < 1:
        raise ValueError(f"`chunk` must be >= 1, got {chunk}")
    rng = np.random.default_rng(seed)
    summary = TrafficSummary(days)
    midnight = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = midnight - timedelta(days=days)
    for d in tqdm(range(days), desc="demo traffic", unit="day", disable=not progress):
        visits = customers.visits_on(first_day + timedelta(days=d), rng)
        summary.visits += len(visits)
        for i in range(0, len(visits), chunk):
            _decide_and_respond(components, customers, visits[i : i + chunk], end, rng, summary)
        customers.end_day()
    return summary


def _decide_and_respond(
    components: Components,
    customers: DemoCustomers,
    visits: list[Visit],
    end: datetime,
    rng: np.random.Generator,
    summary: TrafficSummary,
) -> None:
    requests = [DecisionRequest(v.customer_id, v.touchpoint_id, v.context) for v in visits]
    decisions = components.pipeline.run(requests, now=visits[0].ts).decisions()
    shown = [
        {
            "decision_id": dec.decision_id,
            "customer_id": dec.customer_id,
            "offer_id": offer.offer_id,
            "touchpoint_id": dec.touchpoint_id,
            "position": offer.rank,
            "ts": dec.ts,
            "page_category": dec.context.get("page_category"),
        }
        for dec in decisions
        for offer in dec.offers
    ]
    summary.decisions += len(decisions)
    summary.by_arm.update(d.arm for d in decisions)
    summary.offers_shown += len(shown)
    if not shown:
        return
    responses = customers.respond(pd.DataFrame(shown), rng)
    responses = responses[responses["ts"] < pd.Timestamp(end)]
    events = [
        Event(
            event_id=uuid.uuid4().hex,
            decision_id=str(r.decision_id),
            offer_id=str(r.offer_id),
            type=r.type,
            ts=r.ts.to_pydatetime(),
            revenue=None if np.isnan(r.revenue) else float(r.revenue),
        )
        for r in responses.itertuples(index=False)
    ]
    result = components.event_log.record_events(events)
    if result.rejected:
        first = result.rejected[0]
        raise RuntimeError(
            f"the event log refused {len(result.rejected)} demo events, e.g. {first.message}"
        )
    summary.events.update(responses["type"])
