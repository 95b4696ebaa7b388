"""GET /v1/offers — the catalogue, optionally for one touchpoint."""

from __future__ import annotations

from fastapi import APIRouter, Query

from serving.deps import CatalogDep, require_touchpoint
from serving.schemas import CatalogOfferOut, EligibilityRuleOut, ErrorOut, OffersOut

router = APIRouter(prefix="/v1/offers", tags=["catalogue"])


@router.get(
    "",
    response_model=OffersOut,
    responses={
        404: {"model": ErrorOut, "description": "Unknown touchpoint"},
        422: {"model": ErrorOut, "description": "Invalid query parameter"},
    },
    summary="List the offer catalogue",
)
def list_offers(
    catalog: CatalogDep,
    touchpoint: str | None = Query(
        None, max_length=128, description="Only offers shown at this touchpoint (fallbacks too)."
    ),
) -> OffersOut:
    if touchpoint is not None:
        require_touchpoint(catalog, touchpoint)
    offers = catalog.offers_at(touchpoint)
    return OffersOut(
        touchpoint=touchpoint,
        count=len(offers),
        offers=[
            CatalogOfferOut(
                offer_id=o.offer_id,
                name=o.name,
                offer_type=o.offer_type,
                category=o.category,
                value=o.value,
                weight=o.weight,
                touchpoints=list(o.touchpoints),
                start_at=o.start_at,
                end_at=o.end_at,
                cap_per_customer=o.cap_per_customer,
                cap_window_days=o.cap_window_days,
                eligibility=[
                    EligibilityRuleOut(
                        feature=r.feature,
                        op=r.op,
                        value=list(r.value) if isinstance(r.value, tuple) else r.value,
                    )
                    for r in o.eligibility
                ],
                fallback=o.fallback,
                repeatable=o.repeatable,
            )
            for o in offers
        ],
    )
