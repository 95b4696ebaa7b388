"""/admin — the served model: status, reload from the registry, alias to follow (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recsys.errors import InvalidRequestError
from serving.deps import ComponentsDep
from serving.lifecycle import ModelHolder, SwapJob, SwapResult
from serving.schemas import ErrorOut

router = APIRouter(prefix="/admin", tags=["admin"])


async def get_holder(components: ComponentsDep) -> ModelHolder:
    return components.holder


HolderDep = Annotated[ModelHolder, Depends(get_holder)]


class ModelStatusOut(BaseModel):
    name: str
    version: str
    source: str = Field(description="registry | cache | local | none (fallback only)")
    fallback: bool = Field(description="true while no model is loaded")
    alias: str | None
    loaded_at: str
    breaker_open: bool
    last_error: str | None


class SwapOut(BaseModel):
    result: str = Field(
        description="swapped | unchanged | refused | unreachable | missing, or pending (202: "
        "still running; its outcome at status_url)"
    )
    previous: str
    current: str
    detail: str
    model: ModelStatusOut
    status_url: str | None = Field(
        default=None, description="GET it for the outcome of this swap (202 only)"
    )


class SwapJobOut(BaseModel):
    id: str
    action: str = Field(description="reload | follow")
    alias: str | None
    state: str = Field(description="running | done")
    started_at: str
    finished_at: str | None
    status_code: int | None = Field(
        description="the status POST would have answered with the outcome (200, 409, 503)"
    )
    outcome: SwapOut | None


class FollowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        description="registry alias to follow, e.g. champion or challenger"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    202: {
        "model": SwapOut,
        "description": "The swap still runs after lifecycle.reload_wait_seconds: poll "
        "status_url (GET /admin/model/swaps/{id}) for its outcome",
    },
    409: {
        "model": SwapOut,
        "description": "The candidate was refused, or the alias names no version; "
        "the served model and the followed alias stay",
    },
    422: {"model": ErrorOut, "description": "Invalid body, or no registry to follow an alias in"},
    503: {"model": SwapOut, "description": "The registry is unreachable"},
}
_STATUS = {"refused": 409, "missing": 409, "unreachable": 503}


def _swap_out(holder: ModelHolder, outcome: SwapResult) -> SwapOut:
    return SwapOut(
        result=outcome.result,
        previous=outcome.previous,
        current=outcome.current,
        detail=outcome.detail,
        model=ModelStatusOut(**holder.status()),
    )


def _answer(holder: ModelHolder, job: SwapJob) -> JSONResponse:
    """The outcome if the swap is done within ``reload_wait_seconds``, else 202 + where to
    poll (a compile can outlast the request timeout; the swap goes on either way)."""
    outcome = job.wait(holder.settings.reload_wait_seconds)
    if outcome is not None:
        body = _swap_out(holder, outcome)
        return JSONResponse(body.model_dump(mode="json"), _STATUS.get(outcome.result, 200))
    url = f"/admin/model/swaps/{job.id}"
    version = holder.current.model.info.version
    pending = SwapOut(
        result="pending",
        previous=version,
        current=version,
        detail=f"the {job.action} still runs; GET {url} for its outcome",
        model=ModelStatusOut(**holder.status()),
        status_url=url,
    )
    return JSONResponse(pending.model_dump(mode="json"), 202, headers={"Location": url})


@router.get("/model", response_model=ModelStatusOut, responses=_ERRORS, summary="Served model")
def model_status(holder: HolderDep) -> ModelStatusOut:
    return ModelStatusOut(**holder.status())


@router.post(
    "/model/reload",
    response_model=SwapOut,
    responses=_ERRORS,
    summary="Load the version the followed alias names now",
)
def reload_model(holder: HolderDep) -> JSONResponse:
    """Reload from the registry (even a version refused before); a refused candidate leaves
    the served model in place. Answers when the swap is done, or 202 with a status URL."""
    return _answer(holder, holder.start_swap())


@router.post(
    "/model/follow",
    response_model=SwapOut,
    responses=_ERRORS,
    summary="Follow another registry alias (e.g. challenger) and load it",
)
def follow_alias(body: FollowBody, holder: HolderDep) -> JSONResponse:
    """Follow ``alias`` if its version is swapped in; a refused or unknown alias changes
    nothing. Answers when the swap is done, or 202 with a status URL."""
    try:
        job = holder.start_swap(alias=body.alias)
    except LookupError as exc:
        raise InvalidRequestError(
            "alias", "a registry model source", body.alias, str(exc)
        ) from None
    return _answer(holder, job)


@router.get(
    "/model/swaps/{job_id}",
    response_model=SwapJobOut,
    responses={404: {"model": ErrorOut}},
    summary="The state and outcome of a reload or follow that answered 202",
)
def swap_status(job_id: str, holder: HolderDep) -> SwapJobOut:
    job = holder.swap_job(job_id)
    outcome = job.outcome
    return SwapJobOut(
        id=job.id,
        action=job.action,
        alias=job.alias,
        state="running" if outcome is None else "done",
        started_at=job.started_at.isoformat(),
        finished_at=None if job.finished_at is None else job.finished_at.isoformat(),
        status_code=None if outcome is None else _STATUS.get(outcome.result, 200),
        outcome=None if outcome is None else _swap_out(holder, outcome),
    )
