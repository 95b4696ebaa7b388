"""``excluded``: the caller asked not to show the offer (``exclude_offers``)."""

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


class Excluded(EligibilityCheck):
    name = Check.EXCLUDED

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, m = inp.shape
        mask = np.ones((n, m), dtype=bool)
        index = inp.offers.index
        for i, exclude in enumerate(inp.excludes):
            mask[i, [index[o] for o in exclude if o in index]] = False
        ids = inp.offers.offer_ids
        detail = "in the request's exclude_offers"
        return CheckOutcome(
            mask, everyone(n), explain=lambda i: removal_of(self.name, ids, ~mask[i], detail)
        )
