"""POST /v1/events — feedback (impression, click, accept, convert, dismiss, complaint), idempotent.

A browser (publishable key with a customer token) reports what its page showed:
impressions, clicks and dismissals of its own customer's decisions. Accepts, conversions,
complaints and revenue come from the site's server with a secret key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from recsys.errors import InvalidRequestError, PermissionDeniedError
from recsys.eventlog import Event, EventLog, EventType
from serving.deps import EventLogDep, ServingSettingsDep
from serving.errors import error_body, error_item
from serving.schemas import ErrorOut, EventErrorOut, EventIn, EventsOut, EventsRequestBody
from serving.security import BrowserCustomer

#: What a page may report about its own customer's decisions.
BROWSER_EVENT_TYPES = (EventType.IMPRESSION, EventType.CLICK, EventType.DISMISS)

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    response_model=EventsOut,
    responses={
        400: {"model": ErrorOut, "description": "Malformed JSON"},
        401: {"model": ErrorOut, "description": "No or unknown API key, or no customer token"},
        403: {
            "model": ErrorOut,
            "description": "A publishable key reporting another customer's decision, an "
            "accept/convert/complaint, or revenue (nothing stored)",
        },
        422: {
            "model": ErrorOut,
            "description": "Invalid batch, or every event rejected (nothing stored)",
        },
    },
    summary="Report what happened to served offers",
)
def post_events(
    body: EventsRequestBody,
    log: EventLogDep,
    settings: ServingSettingsDep,
    browser_customer_id: BrowserCustomer,
):
    """Store a batch of events; the response comes only after they are committed.

    The same ``event_id`` sent again is stored once and counted as a duplicate. An event
    naming an unknown decision (or an offer that decision did not serve) is rejected with
    its own 422 item in ``errors``; the other events of the batch are stored.

    With a publishable key (and its customer token), only impressions, clicks and
    dismissals without revenue, of decisions made for the token's customer: any other
    event refuses the whole batch (403, the field named).
    """
    n = len(body.events)
    if n > settings.max_events:
        raise InvalidRequestError(
            "events",
            f"at most {settings.max_events} items",
            f"{n} items",
            f"`events` must have at most {settings.max_events} items, got {n}",
        )
    latest = datetime.now(UTC) + timedelta(seconds=settings.event_time_skew_seconds)
    seen: dict[str, int] = {}
    for i, event in enumerate(body.events):
        if event.event_id in seen:
            raise InvalidRequestError(
                f"events[{i}].event_id",
                "event ids unique within one batch",
                event.event_id,
                f"`events[{i}].event_id` repeats events[{seen[event.event_id]}].event_id",
            )
        seen[event.event_id] = i
        if event.ts > latest:
            raise InvalidRequestError(
                f"events[{i}].ts",
                f"a time not in the future (<= {latest.isoformat()})",
                event.ts.isoformat(),
                f"`events[{i}].ts` must not be in the future, got {event.ts.isoformat()}",
            )
    if browser_customer_id is not None:
        check_browser_events(body.events, browser_customer_id, log)
    result = log.record_events(
        [
            Event(
                event_id=e.event_id,
                decision_id=e.decision_id,
                offer_id=e.offer_id,
                type=e.type,
                ts=e.ts,
                revenue=e.revenue,
            )
            for e in body.events
        ]
    )
    out = EventsOut(
        received=n,
        new=len(result.new),
        duplicates=len(result.duplicates),
        rejected=len(result.rejected),
        errors=[
            EventErrorOut(
                index=r.index,
                event_id=r.event_id,
                field=f"events[{r.index}].{r.field}",
                expected=r.expected,
                received=r.received,
                message=r.message,
            )
            for r in result.rejected
        ],
    )
    if result.rejected and not (result.new or result.duplicates):
        # Nothing stored: the error shape every 422 has, one item per rejected event.
        items = [error_item(e.field, e.expected, e.received, e.message) for e in out.errors]
        return JSONResponse(
            error_body(f"every event was rejected ({len(items)})", items), status_code=422
        )
    return JSONResponse(out.model_dump(mode="json"), status_code=200)


def check_browser_events(events: Sequence[EventIn], customer_id: str, log: EventLog) -> None:
    """Refuse (403) a browser's batch unless every event is an impression, click or
    dismissal without revenue of a decision made for ``customer_id`` (checked against the
    decision's customer in the event log; unknown decisions are left to the log's 422)."""
    allowed = ", ".join(str(t) for t in BROWSER_EVENT_TYPES)
    for i, event in enumerate(events):
        if event.type not in BROWSER_EVENT_TYPES:
            raise PermissionDeniedError(
                f"events[{i}].type",
                f"one of {allowed} (a publishable key)",
                str(event.type),
                f"`events[{i}].type` {str(event.type)!r} needs a secret key: accepts, "
                "conversions and complaints come from your server, not the browser",
            )
        if event.revenue is not None:
            raise PermissionDeniedError(
                f"events[{i}].revenue",
                "no revenue (a publishable key)",
                event.revenue,
                f"`events[{i}].revenue` needs a secret key: revenue comes from your server, "
                "not the browser",
            )
    owners = log.decision_customers({e.decision_id for e in events})
    for i, event in enumerate(events):
        owner = owners.get(event.decision_id)
        if owner is not None and owner != customer_id:
            raise PermissionDeniedError(
                f"events[{i}].decision_id",
                "a decision made for the customer of the customer token",
                event.decision_id,
                f"`events[{i}].decision_id` {event.decision_id!r} was made for another "
                "customer than the customer token's",
            )
