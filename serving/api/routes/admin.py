"""/admin — the served model: status, reload from the registry, alias to follow (admin keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recsys.errors import InvalidRequestError
from serving.deps import ComponentsDep
from serving.lifecycle import ModelHolder, SwapResult
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
    result: str = Field(description="swapped | unchanged | refused | unreachable | missing")
    previous: str
    current: str
    detail: str
    model: ModelStatusOut


class FollowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        description="registry alias to follow, e.g. champion or challenger"
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No or unknown API key"},
    403: {"model": ErrorOut, "description": "Not an admin key"},
    409: {
        "model": SwapOut,
        "description": "The candidate was refused, or the alias names no version; "
        "the served model stays",
    },
    422: {"model": ErrorOut, "description": "Invalid body, or no registry to follow an alias in"},
    503: {"model": SwapOut, "description": "The registry is unreachable"},
}


def _swap_response(holder: ModelHolder, outcome: SwapResult) -> JSONResponse:
    body = SwapOut(
        result=outcome.result,
        previous=outcome.previous,
        current=outcome.current,
        detail=outcome.detail,
        model=ModelStatusOut(**holder.status()),
    )
    status = {"refused": 409, "missing": 409, "unreachable": 503}.get(outcome.result, 200)
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


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
    """Reload from the registry; a refused candidate leaves the served model in place."""
    return _swap_response(holder, holder.refresh(force=True))


@router.post(
    "/model/follow",
    response_model=SwapOut,
    responses=_ERRORS,
    summary="Follow another registry alias (e.g. challenger) and load it",
)
def follow_alias(body: FollowBody, holder: HolderDep) -> JSONResponse:
    try:
        outcome = holder.follow(body.alias)
    except LookupError as exc:
        raise InvalidRequestError(
            "alias", "a registry model source", body.alias, str(exc)
        ) from None
    return _swap_response(holder, outcome)
