"""An arm's levers applied to the catalogue: the catalogue the arm decides over.

The decision pipeline reads weights, contact caps and candidates from the catalogue, so an
arm's levers change nothing else: priority (P(accept) x value x weight) sees the new weight,
the ``cap`` eligibility check the new cap, and an excluded offer is simply no candidate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from experiments.definition import Levers
from recsys.catalog import Catalog, Offer


def apply_levers(catalog: Catalog, levers: Levers) -> Catalog:
    """``catalog`` with ``levers``: weights multiplied, caps replaced, offers excluded.

    Offers the catalogue does not have are ignored here (the store refuses them when an
    experiment is created against a catalogue; a later catalogue may have dropped them).
    """
    excluded = set(levers.excluded_offers)
    offers: list[Offer] = []
    for offer in catalog.offers.values():
        if offer.offer_id in excluded:
            continue
        changes: dict[str, Any] = {}
        weight = levers.offer_weights.get(offer.offer_id)
        if weight is not None:
            changes["weight"] = offer.weight * weight
        cap = levers.caps.get(offer.offer_id)
        if cap is not None:
            changes["cap_per_customer"] = cap.per_customer
            changes["cap_window_days"] = cap.window_days
        offers.append(replace(offer, **changes) if changes else offer)
    return Catalog(offers, list(catalog.touchpoints.values()))
