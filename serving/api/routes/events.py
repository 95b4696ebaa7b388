"""POST /v1/events — feedback (impression, click, accept, convert, dismiss, complaint), idempotent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from recsys.errors import InvalidRequestError
from recsys.eventlog import Event
from serving.deps import EventLogDep, ServingSettingsDep
from serving.errors import error_body, error_item
from serving.schemas import ErrorOut, EventErrorOut, EventsOut, EventsRequestBody

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.post(
    "",
    response_model=EventsOut,
    responses={
        400: {"model": ErrorOut, "description": "Malformed JSON"},
        422: {
            "model": ErrorOut,
            "description": "Invalid batch, or every event rejected (nothing stored)",
        },
    },
    summary="Report what happened to served offers",
)
def post_events(body: EventsRequestBody, log: EventLogDep, settings: ServingSettingsDep):
    """Store a batch of events; the response comes only after they are committed.

    The same ``event_id`` sent again is stored once and counted as a duplicate. An event
    naming an unknown decision (or an offer that decision did not serve) is rejected with
    its own 422 item in ``errors``; the other events of the batch are stored.
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
