"""``already_accepted``: the customer already accepted or converted on the offer."""

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


class AlreadyAccepted(EligibilityCheck):
    name = Check.ALREADY_ACCEPTED

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, _ = inp.shape
        mask = without(inp.offers, [h.accepted for h in inp.histories])
        ids = inp.offers.offer_ids
        detail = "customer already accepted it"
        return CheckOutcome(
            mask, everyone(n), explain=lambda i: removal_of(self.name, ids, ~mask[i], detail)
        )
