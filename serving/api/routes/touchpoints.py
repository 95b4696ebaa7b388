"""GET /v1/touchpoints — where offers can be asked for (ids to use in decisions)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from serving.deps import CatalogDep

router = APIRouter(prefix="/v1/touchpoints", tags=["catalogue"])


class TouchpointOut(BaseModel):
    touchpoint_id: str
    channel: str
    stage: str | None
    slots: int
    mode: str
    consent_column: str | None
    offers: int  # candidate offers (fallbacks not counted)
    fallback_offers: list[str]


class TouchpointsOut(BaseModel):
    count: int
    touchpoints: list[TouchpointOut]


@router.get("", response_model=TouchpointsOut, summary="List the touchpoints")
def list_touchpoints(catalog: CatalogDep) -> TouchpointsOut:
    items = []
    for tp_id in sorted(catalog.touchpoints):
        tp = catalog.touchpoints[tp_id]
        candidates = catalog.for_touchpoint(tp_id)
        items.append(
            TouchpointOut(
                touchpoint_id=tp.touchpoint_id,
                channel=tp.channel,
                stage=tp.stage,
                slots=tp.slots,
                mode=tp.mode,
                consent_column=tp.consent_column,
                offers=len(candidates.offers),
                fallback_offers=[o.offer_id for o in candidates.fallback],
            )
        )
    return TouchpointsOut(count=len(items), touchpoints=items)
