"""GET /v1/experiments/{name}/results — an experiment's readout (admin keys).

The same readout as ``recsys experiments analyse NAME`` (:func:`experiments.analysis.analyse`
on the event log): the sample-ratio check first, the verdicts, per-arm metrics with fixed and
always-valid intervals, guardrails, per touchpoint and per offer, and the timeline of peeks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from experiments.analysis import analyse
from experiments.moments import open_event_log
from experiments.plan import stored_plan
from recsys.errors import InvalidRequestError
from serving.api.routes.admin_experiments import ArmsDep, store_of
from serving.deps import ComponentsDep
from serving.schemas import ErrorOut

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such experiment"},
    422: {"model": ErrorOut, "description": "Nothing to read yet (an arm without exposures)"},
    503: {"model": ErrorOut, "description": "The event log database is down"},
}


@router.get("/{name}/results", responses=_ERRORS, summary="An experiment's readout")
def experiment_results(
    name: str,
    components: ComponentsDep,
    arms: ArmsDep,
    as_of: datetime | None = Query(None, description="Read the data as it was at this time."),
) -> dict[str, Any]:
    """The readout of experiment NAME, as ``recsys experiments analyse NAME`` prints it."""
    plan = stored_plan(store_of(arms).get(name))
    with open_event_log(components.settings.event_log_url) as source:
        try:
            result = analyse(source, plan, as_of=as_of)
        except ValueError as exc:  # e.g. an arm without exposures yet: nothing to compare
            raise InvalidRequestError(
                "name", "an experiment with exposures in every arm", name, str(exc)
            ) from None
    return result.to_dict()
