"""``consent``: without the customer's consent to the touchpoint's channel (its
``consent_column``, e.g. ``email_opt_in``) nothing is shown, not even the fallback."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recsys.eligibility.base import (
    Check,
    CheckOutcome,
    EligibilityCheck,
    EligibilityInput,
    everyone,
    removal_of,
)

_TRUE_TEXT = frozenset({"true", "1", "yes", "t", "y"})


def has_consent(flag: Any) -> bool:
    """Whether a consent value means yes; unknown consent (None, NaN) is no consent."""
    if flag is None or (isinstance(flag, float) and math.isnan(flag)):
        return False
    if isinstance(flag, str):
        return flag.strip().lower() in _TRUE_TEXT
    return bool(flag)


class Consent(EligibilityCheck):
    name = Check.CONSENT

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, m = inp.shape
        column = inp.offers.touchpoint.consent_column
        if column is None:
            return CheckOutcome(np.ones((n, m), dtype=bool), everyone(n))
        values = inp.features.column(column).tolist()
        consent = np.fromiter(map(has_consent, values), dtype=bool, count=n)
        detail = f"{column} is not true for this customer"
        ids = inp.offers.offer_ids
        return CheckOutcome(
            mask=np.repeat(consent[:, None], m, axis=1),
            allows_fallback=consent,
            explain=lambda i: removal_of(self.name, ids, np.full(m, not consent[i]), detail),
        )
