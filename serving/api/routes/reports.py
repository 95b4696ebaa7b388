"""GET /v1/reports/offers — how offers perform (admin keys).

The same numbers as ``recsys report offers`` (:func:`experiments.offer_performance.
offer_performance` on the event log): impressions, responses, their rates per impression with
Wilson intervals, and revenue, in total and per offer, touchpoint, channel, journey stage (the
running catalogue's stage of the touchpoint) and day.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from experiments.moments import open_event_log
from experiments.offer_performance import MAX_ATTRIBUTION_DAYS, offer_performance, parse_time
from serving.deps import CatalogDep, ComponentsDep
from serving.schemas import ErrorOut

#: What the query's times look like (ISO 8601 date or date-time, optional zone); the values
#: themselves are checked by :func:`parse_time`.
ISO_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"

router = APIRouter(prefix="/v1/reports", tags=["reports"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "A bad time or `until` not after `since`"},
    503: {"model": ErrorOut, "description": "The event log database is down"},
}


@router.get("/offers", responses=_ERRORS, summary="How offers perform")
def offers_report(
    components: ComponentsDep,
    catalog: CatalogDep,
    since: str | None = Query(
        None,
        pattern=ISO_TIME,
        description="First decision time read (ISO 8601, naive = UTC; default: the first).",
        examples=["2026-11-01"],
    ),
    until: str | None = Query(
        None,
        pattern=ISO_TIME,
        description="End of the window, also of the responses read (ISO 8601; default: now).",
        examples=["2026-12-01T00:00:00Z"],
    ),
    attribution_days: float = Query(
        7.0,
        gt=0,
        le=MAX_ATTRIBUTION_DAYS,
        description="How long after its decision a response counts.",
    ),
) -> dict[str, Any]:
    """Totals and per offer, touchpoint, channel, journey stage and day, as ``recsys report
    offers`` writes them."""
    with open_event_log(components.settings.event_log_url) as source:
        report = offer_performance(
            source,
            catalog,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            attribution_days=attribution_days,
        )
    return report.to_dict()
