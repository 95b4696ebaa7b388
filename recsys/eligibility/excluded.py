"""``excluded``: the caller asked not to show the offer (``exclude_offers``)."""

from __future__ import annotations

from recsys.eligibility.base import (
    Check,
    CheckOutcome,
    EligibilityCheck,
    EligibilityInput,
    everyone,
    removal_of,
    without,
)


class Excluded(EligibilityCheck):
    name = Check.EXCLUDED

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, _ = inp.shape
        mask = without(inp.offers, inp.excludes)
        ids = inp.offers.offer_ids
        detail = "in the request's exclude_offers"
        return CheckOutcome(
            mask, everyone(n), explain=lambda i: removal_of(self.name, ids, ~mask[i], detail)
        )
