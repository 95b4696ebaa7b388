"""/admin/experiments — create, list, show, start, stop and archive experiments (admin keys).

Changes go to the experiment store in the event log's database; every worker of every
replica picks them up within ``serving.experiments_poll_seconds`` (this worker at once).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from experiments.definition import Experiment, Status
from experiments.store import ExperimentStore, StoredExperiment
from recsys.errors import UnavailableError
from serving.deps import ComponentsDep
from serving.experiment_arms import ExperimentArms
from serving.schemas import ErrorOut

router = APIRouter(prefix="/admin/experiments", tags=["admin"])


async def get_arms(components: ComponentsDep) -> ExperimentArms:
    return components.arms


ArmsDep = Annotated[ExperimentArms, Depends(get_arms)]


def store_of(arms: ExperimentArms) -> ExperimentStore:
    if arms.store is None:
        raise UnavailableError(
            "the experiment store is not open (see the service log)", expected="a store"
        )
    return arms.store


def _who(request: Request) -> str:
    """Who made a change, for the experiment's history: the admin key's id."""
    principal = (request.scope.get("state") or {}).get("principal")
    return f"key:{principal.key_id}" if principal is not None else "api (no keys)"


class ExperimentOut(BaseModel):
    id: str
    status: str = Field(description="draft | running | stopped | archived")
    buckets: list[int] | None = Field(description="layer buckets [start, end) while running")
    definition: dict[str, Any]
    history: list[dict[str, Any]] = Field(description="every change: at, action, by, ...")
    applied: bool = Field(
        description="whether the worker that answered decides by it now (a running experiment "
        "is not applied until the worker's next poll, or when an arm's model cannot load: "
        "see `serving_error`)"
    )
    serving_error: str | None = Field(
        default=None, description="why the answering worker last failed to apply experiments"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such experiment"},
    422: {"model": ErrorOut, "description": "Invalid definition, or a change its status forbids"},
    503: {"model": ErrorOut, "description": "The experiment store (event log database) is down"},
}


def _out(arms: ExperimentArms, stored: StoredExperiment) -> dict[str, Any]:
    applied = stored.name in arms.status()["running"]
    error = arms.last_error if stored.status == Status.RUNNING and not applied else None
    return {**stored.to_dict(), "applied": applied, "serving_error": error}


@router.get("", response_model=list[ExperimentOut], responses=_ERRORS, summary="Experiments")
def list_experiments(arms: ArmsDep) -> list[dict[str, Any]]:
    return [_out(arms, s) for s in store_of(arms).experiments()]


@router.post(
    "", response_model=ExperimentOut, status_code=201, responses=_ERRORS, summary="Create a draft"
)
def create_experiment(
    body: Experiment,
    request: Request,
    arms: ArmsDep,
    replace: bool = Query(False, description="Overwrite a draft of the same name."),
) -> dict[str, Any]:
    """Store a draft experiment (the YAML definition as JSON); it serves nothing until started."""
    body.check_catalog(set(arms.catalog.offers), set(arms.catalog.touchpoints))
    return _out(arms, store_of(arms).create(body, _who(request), replace=replace))


@router.get("/{name}", response_model=ExperimentOut, responses=_ERRORS, summary="One experiment")
def show_experiment(name: str, arms: ArmsDep) -> dict[str, Any]:
    return _out(arms, store_of(arms).get(name))


@router.post(
    "/{name}/{action}",
    response_model=ExperimentOut,
    responses=_ERRORS,
    summary="Start, stop or archive an experiment",
)
def change_experiment(
    name: str, action: Literal["start", "stop", "archive"], request: Request, arms: ArmsDep
) -> dict[str, Any]:
    """Starting gives the experiment a free range of its layer; stopping frees it."""
    stored = store_of(arms).transition(name, action, _who(request))
    arms.refresh()  # this worker at once; the others at their next poll
    return _out(arms, stored)
