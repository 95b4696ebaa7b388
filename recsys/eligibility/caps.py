"""``cap``: an offer served ``cap_per_customer`` times in the last ``cap_window_days`` is
not shown again; contacts count across ALL touchpoints and channels."""

from __future__ import annotations

import numpy as np

from recsys.eligibility.base import (
    US_PER_DAY,
    CapHit,
    Check,
    CheckOutcome,
    EligibilityCheck,
    EligibilityInput,
    Removal,
    everyone,
)


class Caps(EligibilityCheck):
    name = Check.CAP

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, m = inp.shape
        offers = inp.offers
        mask = np.ones((n, m), dtype=bool)
        hits: dict[int, list[CapHit]] = {}
        # Loops over each customer's own contacts (a handful), not over the catalogue.
        for i, history in enumerate(inp.histories):
            for offer_id in history.contacts:
                j = offers.index.get(offer_id)
                if j is None or not offers.capped[j]:
                    continue
                offer = offers.offers[j]
                assert offer.cap_per_customer is not None and offer.cap_window_days is not None
                since = inp.now_us - offer.cap_window_days * US_PER_DAY
                count = history.count_since(offer_id, since)
                if count >= offer.cap_per_customer:
                    mask[i, j] = False
                    hits.setdefault(i, []).append(
                        CapHit(offer_id, offer.cap_per_customer, offer.cap_window_days, count)
                    )

        def caps_hit(i: int) -> tuple[CapHit, ...]:
            return tuple(hits.get(i, ()))

        def explain(i: int) -> tuple[Removal, ...]:
            return tuple(
                Removal(
                    self.name,
                    (hit.offer_id,),
                    f"served {hit.contacts} times in {hit.cap_window_days} days "
                    f"(cap {hit.cap_per_customer})",
                )
                for hit in caps_hit(i)
            )

        return CheckOutcome(mask, everyone(n), explain=explain, caps_hit=caps_hit)
