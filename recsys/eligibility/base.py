"""What every eligibility check shares: the contact history it reads and what it reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

import numpy as np

US_PER_DAY = 86_400 * 1_000_000


class Check(StrEnum):
    DATE_WINDOW = "date_window"
    CONSENT = "consent"
    EXCLUDED = "excluded"
    RULE = "rule"
    ALREADY_ACCEPTED = "already_accepted"
    CAP = "cap"


@dataclass(frozen=True)
class ContactHistory:
    """What a customer was shown and accepted, across every touchpoint and channel.

    Attributes
    ----------
    contacts : mapping of offer_id -> ndarray of int64, shape (n_contacts,)
        Times (microseconds since the epoch, UTC) the offer was served to the customer.
    accepted : frozenset of str
        Offers the customer accepted or converted on.
    """

    contacts: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))
    accepted: frozenset[str] = frozenset()

    def count_since(self, offer_id: str, since_us: int) -> int:
        times = self.contacts.get(offer_id)
        if times is None:
            return 0
        return int(np.count_nonzero(times >= since_us))


EMPTY_HISTORY = ContactHistory()


@dataclass(frozen=True)
class Removal:
    """Offers one check removed; ``detail`` says why (the rule, the cap, ...)."""

    check: Check
    offer_ids: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class CapHit:
    offer_id: str
    cap_per_customer: int
    cap_window_days: int
    contacts: int


