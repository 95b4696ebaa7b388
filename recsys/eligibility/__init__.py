"""Eligibility and contact policy: which candidate offers may be shown to each request now.

Checks are small registered modules, each a batch mask over (requests x candidates) with the
explanation it gives the trace: ``date_window``, ``consent`` (no consent: nothing, not even
the fallback), ``excluded`` (the request's ``exclude_offers``), ``rule`` (the offer's rules
on customer features), ``already_accepted`` and ``cap`` (contacts across every channel).

A new check is one module beside these, shaped like them, plus one line in :data:`CHECKS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.eligibility.already_accepted import AlreadyAccepted
from recsys.eligibility.base import (
    EMPTY_HISTORY,
    US_PER_DAY,
    CapHit,
    Check,
    CheckOutcome,
    ContactHistory,
    EligibilityCheck,
    EligibilityInput,
    Removal,
)
from recsys.eligibility.caps import Caps
from recsys.eligibility.consent import Consent, has_consent
from recsys.eligibility.date_window import DateWindow, in_date_window
from recsys.eligibility.excluded import Excluded
from recsys.eligibility.rules import Rules, rule_holds, rule_holds_many

#: The checks every decision runs, in the order the trace lists them.
CHECKS: tuple[EligibilityCheck, ...] = (
    DateWindow(),
    Consent(),
    Excluded(),
    Rules(),
    AlreadyAccepted(),
    Caps(),
)


@dataclass(frozen=True)
class Eligibility:
    """The outcome of every check for n requests at one touchpoint.

    Attributes
    ----------
    mask : ndarray of bool, shape (n, m)
        True for offers that passed every check.
    allows_fallback : ndarray of bool, shape (n,)
        False where a check forbids even the fallback (no consent).
    outcomes : tuple of CheckOutcome
        Each check's own result, for the trace.
    """

    mask: np.ndarray
    allows_fallback: np.ndarray
    outcomes: tuple[CheckOutcome, ...]

    def removals(self, i: int) -> tuple[Removal, ...]:
        """Why offers are absent for request ``i``; an offer failing several checks appears
        under each of them."""
        return tuple(r for outcome in self.outcomes for r in outcome.explain(i))

    def caps_hit(self, i: int) -> tuple[CapHit, ...]:
        return tuple(c for outcome in self.outcomes for c in outcome.caps_hit(i))


def check_eligibility(
    inp: EligibilityInput, checks: tuple[EligibilityCheck, ...] = CHECKS
) -> Eligibility:
    """Run ``checks`` over every (request, candidate) cell of ``inp``."""
    n, m = inp.shape
    mask = np.ones((n, m), dtype=bool)
    allows_fallback = np.ones(n, dtype=bool)
    outcomes = []
    for check in checks:
        outcome = check.run(inp)
        mask &= outcome.mask
        allows_fallback &= outcome.allows_fallback
        outcomes.append(outcome)
    return Eligibility(mask, allows_fallback, tuple(outcomes))


__all__ = [
    "CHECKS",
    "EMPTY_HISTORY",
    "US_PER_DAY",
    "CapHit",
    "Check",
    "CheckOutcome",
    "ContactHistory",
    "Eligibility",
    "EligibilityCheck",
    "EligibilityInput",
    "Removal",
    "check_eligibility",
    "has_consent",
    "in_date_window",
    "rule_holds",
    "rule_holds_many",
]
