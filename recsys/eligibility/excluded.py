"""``excluded``: the caller asked not to show the offer (``exclude_offers``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from recsys.eligibility.base import Check, EligibilityInput, NamedOffersCheck


class Excluded(NamedOffersCheck):
    name = Check.EXCLUDED
    detail = "in the request's exclude_offers"

    def named(self, inp: EligibilityInput) -> Sequence[Collection[str]]:
        return inp.excludes
