"""What every eligibility check shares: the contact history it reads and what it reports."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from recsys.catalog import TouchpointOffers
    from recsys.decision.ports import FeatureBlock

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


@dataclass(frozen=True)
class EligibilityInput:
    """What the checks of one touchpoint read, for n requests and its m candidates.

    Attributes
    ----------
    offers : TouchpointOffers
        The touchpoint's candidates, shape (m,).
    features : FeatureBlock
        One row per request (consent flags and the features rules read).
    histories : sequence of ContactHistory, shape (n,)
    excludes : sequence of tuples of offer ids, shape (n,)
    now_us : int
        Decision time, microseconds since the epoch (UTC).
    """

    offers: TouchpointOffers
    features: FeatureBlock
    histories: Sequence[ContactHistory]
    excludes: Sequence[tuple[str, ...]]
    now_us: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.features), len(self.offers.offers)


def _no_removals(i: int) -> tuple[Removal, ...]:
    return ()


def _no_caps(i: int) -> tuple[CapHit, ...]:
    return ()


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found for every request.

    Attributes
    ----------
    mask : ndarray of bool, shape (n, m)
        True where the offer passed the check.
    allows_fallback : ndarray of bool, shape (n,)
        False where the check also forbids the touchpoint's fallback offers (no consent).
    explain : callable i -> tuple of Removal
        Why the offers failing for request ``i`` were removed (read from what the check
        computed, never by checking again).
    caps_hit : callable i -> tuple of CapHit
    """

    mask: np.ndarray
    allows_fallback: np.ndarray
    explain: Callable[[int], tuple[Removal, ...]] = _no_removals
    caps_hit: Callable[[int], tuple[CapHit, ...]] = _no_caps


class EligibilityCheck(ABC):
    """One eligibility check: a name, a batch mask and the explanation the trace gives.

    A new check is a module beside its siblings plus one line in ``recsys.eligibility.CHECKS``.
    """

    name: ClassVar[Check]

    @abstractmethod
    def run(self, inp: EligibilityInput) -> CheckOutcome:
        """The check over every (request, candidate) cell of ``inp``."""


def everyone(n: int) -> np.ndarray:
    """An all-true (n,) mask: the check never forbids the fallback."""
    return np.ones(n, dtype=bool)


def without(offers: TouchpointOffers, named: Sequence[Collection[str]]) -> np.ndarray:
    """(n, m) mask, False where request ``i``'s collection ``named[i]`` names the candidate
    (ids that are not candidates are ignored)."""
    mask = np.ones((len(named), len(offers.offers)), dtype=bool)
    index = offers.index
    for i, ids in enumerate(named):
        if ids:
            mask[i, [index[o] for o in ids if o in index]] = False
    return mask


class NamedOffersCheck(EligibilityCheck):
    """A check that removes, per request, the candidates a collection names (the request's
    exclusions, the customer's accepted offers); ``detail`` says why in the trace."""

    detail: ClassVar[str]

    @abstractmethod
    def named(self, inp: EligibilityInput) -> Sequence[Collection[str]]:
        """Per request, the offer ids to remove."""

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        mask = without(inp.offers, self.named(inp))
        ids, detail = inp.offers.offer_ids, self.detail
        return CheckOutcome(
            mask,
            everyone(len(mask)),
            explain=lambda i: removal_of(self.name, ids, ~mask[i], detail),
        )


def removal_of(
    check: Check, ids: np.ndarray, failed: np.ndarray, detail: str
) -> tuple[Removal, ...]:
    """One removal naming the offers of ``ids`` where ``failed`` (shape (m,)), or none."""
    if not failed.any():
        return ()
    return (Removal(check, tuple(ids[failed].tolist()), detail),)
