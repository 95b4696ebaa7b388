"""``already_accepted``: the customer already accepted or converted on the offer."""

from __future__ import annotations

import numpy as np

from recsys.eligibility.base import (
    Check,
    CheckOutcome,
    EligibilityCheck,
    EligibilityInput,
    everyone,
    removal_of,
)


class AlreadyAccepted(EligibilityCheck):
    name = Check.ALREADY_ACCEPTED

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, m = inp.shape
        mask = np.ones((n, m), dtype=bool)
        index = inp.offers.index
        for i, history in enumerate(inp.histories):
            mask[i, [index[o] for o in history.accepted if o in index]] = False
        ids = inp.offers.offer_ids
        detail = "customer already accepted it"
        return CheckOutcome(
            mask, everyone(n), explain=lambda i: removal_of(self.name, ids, ~mask[i], detail)
        )
