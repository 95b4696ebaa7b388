"""GET /v1/offers — the catalogue, optionally for one touchpoint; GET /v1/offers/{id} — one
offer as every decision of this worker sees it now (the live catalogue)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query
from pydantic import Field

from recsys.catalog import Offer
from recsys.errors import UnknownNameError
from serving.deps import CatalogDep, require_touchpoint
from serving.schemas import CatalogOfferOut, EligibilityRuleOut, ErrorOut, OffersOut

router = APIRouter(prefix="/v1/offers", tags=["catalogue"])


class OfferOut(CatalogOfferOut):
    """One offer, its content fields and the catalogue version it was read from."""

    attributes: dict[str, Any] = Field(
        description="the offer's other columns (content fields: headline, image_url, ...)"
    )
    catalog_version: str = Field(description="fingerprint of the catalogue served now")


def offer_fields(o: Offer) -> dict[str, Any]:
    """The catalogue fields of ``o`` as the API shows them."""
    return {
        "offer_id": o.offer_id,
        "name": o.name,
        "offer_type": o.offer_type,
        "category": o.category,
        "value": o.value,
        "weight": o.weight,
        "touchpoints": list(o.touchpoints),
        "start_at": o.start_at,
        "end_at": o.end_at,
        "cap_per_customer": o.cap_per_customer,
        "cap_window_days": o.cap_window_days,
        "eligibility": [
            EligibilityRuleOut(
                feature=r.feature,
                op=r.op,
                value=list(r.value) if isinstance(r.value, tuple) else r.value,
            )
            for r in o.eligibility
        ],
        "fallback": o.fallback,
        "repeatable": o.repeatable,
    }


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
        offers=[CatalogOfferOut(**offer_fields(o)) for o in offers],
    )


@router.get(
    "/{offer_id}",
    response_model=OfferOut,
    responses={404: {"model": ErrorOut, "description": "Unknown offer"}},
    summary="One offer of the catalogue served now",
)
def get_offer(
    catalog: CatalogDep, offer_id: str = Path(max_length=128, description="The offer's id.")
) -> OfferOut:
    offer = catalog.offers.get(offer_id)
    if offer is None:
        raise UnknownNameError(
            "offer_id",
            "the id of an offer of the catalogue (GET /v1/offers lists them)",
            offer_id,
            f"unknown offer {offer_id!r}: the catalogue ({catalog.version}) has no such offer",
        )
    return OfferOut(
        **offer_fields(offer), attributes=dict(offer.attributes), catalog_version=catalog.version
    )
