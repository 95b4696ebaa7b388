"""/admin — the live catalogue (admin keys): edit one offer, see and reload the catalogue.

``PUT /admin/offers/{offer_id}`` writes the offer into the warehouse (what training and
``recsys score`` read) through the same validated, atomic load as ``recsys data load``
(:func:`recsys.catalog.edits.store_offer`); before the commit the new catalogue must also
pass this worker's checks (rule features of the online store, trial decisions), so the
warehouse never holds a catalogue the service refuses. This worker serves it at once; the
other workers within ``serving.catalog_poll_seconds`` (:mod:`serving.catalogue`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recsys.catalog import load_catalog_from_warehouse
from recsys.catalog.edits import store_offer
from recsys.contract import Problem
from recsys.errors import ContractError, InvalidRequestError, NotFoundError, UnavailableError
from serving.api.routes.offers import OfferOut, offer_fields
from serving.catalogue import LiveCatalogue
from serving.deps import ComponentsDep
from serving.errors import error_body, error_item
from serving.schemas import ErrorOut

router = APIRouter(prefix="/admin", tags=["admin"])

#: How long a write waits for another process to release the warehouse.
WAREHOUSE_WAIT_SECONDS = 10.0


async def get_live(components: ComponentsDep) -> LiveCatalogue:
    if components.catalogue is None:  # assembled without a catalogue source (embedded use)
        raise NotFoundError(
            "this service does not follow a catalogue source: its catalogue cannot change"
        )
    return components.catalogue


LiveDep = Annotated[LiveCatalogue, Depends(get_live)]


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: str = Field(min_length=1, max_length=128)
    op: str = Field(description="== != < <= > >= in not_in")
    value: Any = None


class OfferIn(BaseModel):
    """The whole offer (PUT replaces it); other fields are kept as content attributes."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "name": "12% off shoes",
                "offer_type": "discount",
                "category": "shoes",
                "value": 8.0,
                "touchpoints": ["web_home", "web_product"],
                "cap_per_customer": 2,
                "cap_window_days": 7,
                "eligibility": [],
                "headline": "Spring shoes, 12% off",
            }
        },
    )

    offer_id: str | None = Field(default=None, description="if given, the path's id")
    name: str = Field(min_length=1, max_length=256)
    offer_type: str = Field(
        description="discount, cross_sell, upsell, loyalty_reward, service or content"
    )
    category: str | None = None
    value: float | None = Field(default=None, description=">= 0; default 1")
    touchpoints: list[str] = Field(default_factory=list, description="empty: every touchpoint")
    start_at: datetime | None = None
    end_at: datetime | None = None
    cap_per_customer: int | None = None
    cap_window_days: int | None = None
    eligibility: list[RuleIn] = Field(default_factory=list)
    weight: float | None = Field(default=None, description="> 0; default 1")
    fallback: bool = False
    repeatable: bool = False


class CatalogStatusOut(BaseModel):
    worker: int = Field(description="process id of the worker that answered")
    version: str = Field(description="fingerprint of the catalogue this worker serves")
    offers: int
    touchpoints: int
    source: str
    loaded_at: str
    poll_seconds: float
    last_error: str | None


class StoredOfferOut(BaseModel):
    result: str = Field(description="new | updated | unchanged (the warehouse row)")
    offer: OfferOut
    catalog: CatalogStatusOut


def _refused(problems: list[Problem], record: dict[str, Any]) -> JSONResponse:
    """422 with one item per problem, each naming its field."""
    items = [
        error_item(
            p.column or "",
            "a value the data contract accepts",
            record.get(p.column) if p.column else None,
            p.reason,
        )
        for p in problems
    ]
    detail = "; ".join(f"{p.column}: {p.reason}" if p.column else p.reason for p in problems)
    return JSONResponse(error_body(f"offer refused: {detail}", items), status_code=422)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "This service follows no catalogue source"},
    409: {"model": ErrorOut, "description": "The catalogue is read from files, not the warehouse"},
    422: {"model": ErrorOut, "description": "The offer breaks the data contract (field named)"},
    503: {"model": ErrorOut, "description": "The warehouse is held by another writer; retry"},
}


@router.put(
    "/offers/{offer_id}",
    response_model=StoredOfferOut,
    responses=_RESPONSES,
    summary="Create or replace one offer; every worker serves it within seconds",
)
def put_offer(
    body: OfferIn,
    components: ComponentsDep,
    live: LiveDep,
    offer_id: str = Path(max_length=128, pattern=r"^\S+$", description="The offer's id."),
) -> StoredOfferOut | JSONResponse:
    if body.offer_id is not None and body.offer_id != offer_id:
        raise InvalidRequestError(
            "offer_id", f"the path's offer id {offer_id!r} (or none)", body.offer_id
        )
    if live.source.is_dir():
        message = (
            f"the catalogue is read from the files in {live.source}: edit them (or serve "
            "from the warehouse) to change offers"
        )
        return JSONResponse(
            error_body(message, [error_item("", "a warehouse catalogue", None, message)]), 409
        )
    record = {**body.model_dump(mode="json"), "offer_id": offer_id}

    def served_check(con: duckdb.DuckDBPyConnection) -> list[Problem]:
        """Before the commit: the catalogue with this offer must be one this service serves."""
        try:
            components.try_catalog(load_catalog_from_warehouse(con))
        except Exception as exc:
            return [Problem("offers", None, None, f"the service refuses the catalogue: {exc}")]
        return []

    from features.rule_features import rule_feature_check

    try:
        load = store_offer(
            live.source, record, [rule_feature_check, served_check], WAREHOUSE_WAIT_SECONDS
        )
    except ContractError as exc:
        problems = exc.problems or [Problem("offers", None, None, str(exc))]
        return _refused(problems, record)
    except duckdb.IOException as exc:
        raise UnavailableError(
            f"the warehouse is held by another process ({exc}); retry", expected="a free warehouse"
        ) from None
    live.refresh(force=True)  # this worker at once; the others at their next poll
    catalog = live.current
    result = "new" if load.rows_new else "updated" if load.rows_updated else "unchanged"
    offer = catalog.offers.get(offer_id)
    if offer is None:  # refused after the commit (cannot happen unless the code changed)
        raise UnavailableError(f"offer {offer_id!r} stored but not served: {live.last_error}")
    return StoredOfferOut(
        result=result,
        offer=OfferOut(
            **offer_fields(offer),
            attributes=dict(offer.attributes),
            catalog_version=catalog.version,
        ),
        catalog=CatalogStatusOut(**live.status()),
    )


@router.get(
    "/catalog", response_model=CatalogStatusOut, responses=_RESPONSES, summary="Served catalogue"
)
def catalog_status(live: LiveDep) -> CatalogStatusOut:
    """The catalogue this worker serves (each worker answers for itself)."""
    return CatalogStatusOut(**live.status())


@router.post(
    "/catalog/reload",
    response_model=CatalogStatusOut,
    responses=_RESPONSES,
    summary="Read the catalogue's source now (this worker; the others poll it)",
)
def reload_catalog(live: LiveDep) -> CatalogStatusOut:
    live.refresh(force=True)
    return CatalogStatusOut(**live.status())
