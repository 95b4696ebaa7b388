"""``date_window``: an offer is shown only between its ``start_at`` and ``end_at``."""

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


def in_date_window(start_us: np.ndarray, end_us: np.ndarray, now_us: int) -> np.ndarray:
    """Mask of offers whose window contains ``now_us``; shapes (m,) -> (m,)."""
    return (start_us <= now_us) & (now_us <= end_us)


class DateWindow(EligibilityCheck):
    name = Check.DATE_WINDOW

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, _ = inp.shape
        offers = inp.offers
        live = in_date_window(offers.start_us, offers.end_us, inp.now_us)
        removals = removal_of(self.name, offers.offer_ids, ~live, "outside start_at..end_at")
        return CheckOutcome(
            mask=np.broadcast_to(live, inp.shape),
            allows_fallback=everyone(n),
            explain=lambda i: removals,
        )
