"""Eligibility and contact policy: which candidate offers may be shown to a customer now.

Checks, each vectorised over the candidate offers of one touchpoint:

- ``date_window``: ``start_at <= now <= end_at``;
- ``consent``: the touchpoint's ``consent_column`` (e.g. ``email_opt_in``) is true for the
  customer — without consent no offer of the touchpoint is shown, not even the fallback;
- ``excluded``: the caller asked not to show the offer (``exclude_offers``);
- ``rule``: the offer's eligibility rules on customer features;
- ``already_accepted``: the customer already accepted or converted on the offer;
- ``cap``: the offer was served ``cap_per_customer`` times in the last ``cap_window_days``,
  counted across ALL touchpoints and channels from the customer's contact history.

Every check reports the offers it removed, so a decision trace can explain each absence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import numpy as np

from recsys.catalog import Offer, TouchpointOffers
from recsys.eligibility.base import EMPTY_HISTORY, US_PER_DAY, CapHit, Check, ContactHistory, Removal



@dataclass(frozen=True)
class Eligibility:
    """The outcome of the checks for one customer at one touchpoint.

    Attributes
    ----------
    mask : ndarray of bool, shape (n_candidates,)
        True for offers that passed every check.
    consent : bool
        The customer consented to the touchpoint's channel (True without a consent column).
    removals : tuple of Removal
        For each check that removed something: which offers and why. An offer failing
        several checks appears under each of them.
    caps_hit : tuple of CapHit
    """

    mask: np.ndarray
    consent: bool
    removals: tuple[Removal, ...]
    caps_hit: tuple[CapHit, ...]

    @property
    def n_eligible(self) -> int:
        return int(np.count_nonzero(self.mask))

    def removed_by(self, offer_id: str) -> list[Removal]:
        """The removals that name ``offer_id`` (empty when it is eligible)."""
        return [r for r in self.removals if offer_id in r.offer_ids]


def has_consent(customer: Mapping[str, Any], consent_column: str | None) -> bool:
    """Whether ``customer`` consented to a channel; unknown consent is no consent."""
    if consent_column is None:
        return True
    flag = customer.get(consent_column)
    if flag is None or (isinstance(flag, float) and math.isnan(flag)):
        return False
    if isinstance(flag, str):
        return flag.strip().lower() in ("true", "1", "yes", "t", "y")
    return bool(flag)


def in_date_window(start_us: np.ndarray, end_us: np.ndarray, now_us: int) -> np.ndarray:
    """Mask of offers whose window contains ``now_us``; shapes (n,) -> (n,)."""
    return (start_us <= now_us) & (now_us <= end_us)


def check_eligibility(
    offers: TouchpointOffers,
    customer: Mapping[str, Any],
    history: ContactHistory,
    now_us: int,
    exclude: Collection[str] = (),
) -> Eligibility:
    """Run every check on the candidates of one touchpoint for one customer.

    Parameters
    ----------
    offers : TouchpointOffers
        The touchpoint's candidates, shape (n,).
    customer : mapping
        The customer's feature vector (consent flags and the features rules read).
    history : ContactHistory
        Contacts across all channels and accepted offers.
    now_us : int
        Decision time, microseconds since the epoch (UTC).
    exclude : collection of str
        Offer ids the caller does not want.

    Returns
    -------
    Eligibility
    """
    n = len(offers.offers)
    ids = offers.offer_ids
    removals: list[Removal] = []
    mask = np.ones(n, dtype=bool)

    in_window = in_date_window(offers.start_us, offers.end_us, now_us)
    if not in_window.all():
        removals.append(
            Removal(Check.DATE_WINDOW, tuple(ids[~in_window]), "outside start_at..end_at")
        )
        mask &= in_window

    consent = has_consent(customer, offers.touchpoint.consent_column)
    if not consent:
        if n:
            removals.append(
                Removal(
                    Check.CONSENT,
                    tuple(ids),
                    f"{offers.touchpoint.consent_column} is not true for this customer",
                )
            )
        mask[:] = False

    if exclude:
        positions = [offers.index[o] for o in exclude if o in offers.index]
        if positions:
            removals.append(
                Removal(Check.EXCLUDED, tuple(ids[positions]), "in the request's exclude_offers")
            )
            mask[positions] = False

    if offers.rules:
        failed = np.fromiter(
            (not rule.holds(customer) for rule in offers.rules), dtype=bool, count=len(offers.rules)
        )
        if failed.any():
            for i in np.flatnonzero(failed):
                hit = offers.rule_offers[i]
                removals.append(Removal(Check.RULE, tuple(ids[hit]), offers.rules[i].describe()))
            mask &= ~offers.rule_offers[failed].any(axis=0)

    if history.accepted:
        positions = [offers.index[o] for o in history.accepted if o in offers.index]
        if positions:
            positions.sort()
            removals.append(
                Removal(
                    Check.ALREADY_ACCEPTED, tuple(ids[positions]), "customer already accepted it"
                )
            )
            mask[positions] = False

    caps_hit: list[CapHit] = []
    for j, offer, count in _capped_out(offers, history, now_us):
        caps_hit.append(
            CapHit(offer.offer_id, offer.cap_per_customer, offer.cap_window_days, count)
        )
        removals.append(
            Removal(
                Check.CAP,
                (offer.offer_id,),
                f"served {count} times in {offer.cap_window_days} days "
                f"(cap {offer.cap_per_customer})",
            )
        )
        mask[j] = False

    return Eligibility(
        mask=mask, consent=consent, removals=tuple(removals), caps_hit=tuple(caps_hit)
    )


# --------------------------------------------------------------------------- many customers


@dataclass(frozen=True)
class EligibilityBatch:
    """The outcome of the checks for many customers at one touchpoint.

    Row ``i`` of ``mask`` equals ``check_eligibility(...)`` of customer ``i`` alone; the
    removals and cap hits that explain it are only built on demand (a decision trace), with
    :func:`check_eligibility`.

    Attributes
    ----------
    mask : ndarray of bool, shape (n_customers, n_candidates)
    consent : ndarray of bool, shape (n_customers,)
    """

    mask: np.ndarray
    consent: np.ndarray


_NUMBER_TYPES = frozenset({int, float, bool})
#: Up to this many customers, rules and consent are checked customer by customer (numpy's
#: per-call overhead is larger than the work).
SMALL_BATCH = 8
_EXACT_FLOAT = 2.0**53  # beyond it, float64 comparisons may differ from Python's int ones


def check_eligibility_many(
    offers: TouchpointOffers,
    customers: Sequence[Mapping[str, Any]],
    histories: Sequence[ContactHistory],
    now_us: int,
    excludes: Sequence[Collection[str]],
) -> EligibilityBatch:
    """:func:`check_eligibility` for many customers at once, as (customer x offer) masks.

    Parameters
    ----------
    offers : TouchpointOffers
        The touchpoint's candidates, shape (m,).
    customers : sequence of mapping, shape (n,)
        Feature vectors (consent flags and the features rules read); a block of vectors
        with a ``column(name)`` method is read column by column.
    histories : sequence of ContactHistory, shape (n,)
    now_us : int
        Decision time, microseconds since the epoch (UTC).
    excludes : sequence of collections of offer ids, shape (n,)

    Returns
    -------
    EligibilityBatch
        Its mask row ``i`` equals ``check_eligibility(offers, customers[i], histories[i],
        now_us, excludes[i]).mask``. Rules are evaluated once per distinct feature value
        (or as one numpy comparison for numeric features), not once per customer.
    """
    n, m = len(customers), len(offers.offers)
    if len(histories) != n or len(excludes) != n:
        raise ValueError(
            f"`histories` and `excludes` must have one entry per customer ({n}), got "
            f"{len(histories)} and {len(excludes)}"
        )
    mask = np.empty((n, m), dtype=bool)
    mask[:] = in_date_window(offers.start_us, offers.end_us, now_us)

    small = n <= SMALL_BATCH
    column = offers.touchpoint.consent_column
    if column is None:
        consent = np.ones(n, dtype=bool)
    else:
        if small:
            consent = np.array([has_consent(c, column) for c in customers], dtype=bool)
        else:
            values = _values(customers, column)
            consent = _by_distinct_value(values, lambda v: has_consent({column: v}, column))
        mask[~consent] = False

    for i, exclude in enumerate(excludes):
        if exclude:
            positions = [offers.index[o] for o in exclude if o in offers.index]
            mask[i, positions] = False

    if offers.rules and small:
        failed = np.array(
            [[not rule.holds(c) for rule in offers.rules] for c in customers], dtype=bool
        ).reshape(n, len(offers.rules))
        if failed.any():
            blocked = failed.astype(np.int32) @ offers.rule_offers.astype(np.int32)
            mask &= blocked == 0
    elif offers.rules and n:
        failed = np.zeros((n, len(offers.rules)), dtype=bool)
        by_feature: dict[str, list[int]] = {}
        for r, rule in enumerate(offers.rules):
            by_feature.setdefault(rule.feature, []).append(r)
        for feature, rule_ids in by_feature.items():
            values = _values(customers, feature)
            numbers = _as_numbers(values)
            for r in rule_ids:
                rule = offers.rules[r]
                held = _numeric_rule(rule, numbers) if numbers is not None else None
                if held is None:
                    held = _by_distinct_value(
                        values, lambda v, rule=rule: rule.holds({rule.feature: v})
                    )
                failed[:, r] = ~held
        if failed.any():
            blocked = failed.astype(np.int32) @ offers.rule_offers.astype(np.int32)
            mask &= blocked == 0

    for i, history in enumerate(histories):
        if history.accepted or history.contacts:
            mask[i] &= _history_mask(offers, history, now_us)
    return EligibilityBatch(mask=mask, consent=consent)


def _values(customers: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
    """``[c.get(name) for c in customers]``; one call on a columnar block of vectors
    (``recsys.decision.CustomerBlock``)."""
    column = getattr(customers, "column", None)
    if column is not None:
        return column(name)
    return [c.get(name) for c in customers]


def _history_mask(offers: TouchpointOffers, history: ContactHistory, now_us: int) -> np.ndarray:
    """Offers left after "already accepted" and contact caps, shape (m,) (see check_eligibility)."""
    keep = np.ones(len(offers.offers), dtype=bool)
    for offer_id in history.accepted:
        j = offers.index.get(offer_id)
        if j is not None:
            keep[j] = False
    for j, _, _ in _capped_out(offers, history, now_us):
        keep[j] = False
    return keep


def _capped_out(
    offers: TouchpointOffers, history: ContactHistory, now_us: int
) -> Iterator[tuple[int, Offer, int]]:
    """(position, offer, contacts in its window) of every offer the customer reached the
    cap of. Loops over the customer's own contacts (a handful), not over the catalogue."""
    for offer_id in history.contacts:
        j = offers.index.get(offer_id)
        if j is None or not offers.capped[j]:
            continue
        offer = offers.offers[j]
        count = history.count_since(offer_id, now_us - offer.cap_window_days * US_PER_DAY)
        if count >= offer.cap_per_customer:
            yield j, offer, count


def _by_distinct_value(values: list[Any], fn: Callable[[Any], bool]) -> np.ndarray:
    """``[fn(v) for v in values]`` as a bool array, calling ``fn`` once per distinct value.

    Values of one hash class (``True``, ``1``, ``1.0``) compare alike in every rule and
    consent check, so sharing their result is exact; unhashable values are checked one by one.
    """
    codes: dict[Any, int] = {}
    try:
        index = [codes.setdefault(v, len(codes)) for v in values]
    except TypeError:
        return np.fromiter((fn(v) for v in values), dtype=bool, count=len(values))
    table = np.fromiter((fn(v) for v in codes), dtype=bool, count=len(codes))
    return table[np.asarray(index, dtype=np.intp)] if values else np.zeros(0, dtype=bool)


def _as_numbers(values: list[Any]) -> np.ndarray | None:
    """``values`` as float64 when all are int/float/bool that float64 holds exactly, else None."""
    if not values or not set(map(type, values)) <= _NUMBER_TYPES:
        return None
    numbers = np.asarray(values, dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    if finite.size and np.abs(finite).max() > _EXACT_FLOAT:
        return None
    return numbers


def _numeric_rule(rule: Any, numbers: np.ndarray) -> np.ndarray | None:
    """``rule.holds`` of every value as one numpy comparison, or None if it cannot be exact."""
    targets = rule.value if rule.op in ("in", "not_in") else (rule.value,)
    if not all(type(t) in _NUMBER_TYPES and abs(t) <= _EXACT_FLOAT for t in targets):
        return None
    known = ~np.isnan(numbers)  # a missing value never satisfies a rule
    match rule.op:
        case "==":
            held = numbers == rule.value
        case "!=":
            held = numbers != rule.value
        case "<":
            held = numbers < rule.value
        case "<=":
            held = numbers <= rule.value
        case ">":
            held = numbers > rule.value
        case ">=":
            held = numbers >= rule.value
        case "in":
            held = np.isin(numbers, np.asarray(targets, dtype=np.float64))
        case "not_in":
            held = ~np.isin(numbers, np.asarray(targets, dtype=np.float64))
        case _:
            return None
    return held & known
