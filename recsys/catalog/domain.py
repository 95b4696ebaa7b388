"""The catalogue's domain types: frozen ``Offer`` / ``Touchpoint``, rules, and ``Catalog``.

A :class:`Catalog` is built once and then only read. It precomputes, per touchpoint, the
candidate offers and the arrays the decision path needs, so a decision never loops over the
catalogue in Python to find its candidates. Timestamps are timezone-aware UTC; naive input
means UTC (contract).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import numpy as np

from recsys.contract import CHANNELS, ELIGIBILITY_OPS, OFFER_TYPES, TOUCHPOINT_MODES
from recsys.errors import ConfigError, NotFoundError


def to_utc(ts: datetime) -> datetime:
    """Return ``ts`` as an aware UTC datetime; a naive ``ts`` is read as UTC (contract)."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


@dataclass(frozen=True)
class EligibilityRule:
    """One rule on a customer feature: ``customer[feature] <op> value`` must hold.

    A customer without the feature (or with a missing value) does not satisfy the rule:
    an offer restricted to ``loyalty_tier == gold`` is not shown when the tier is unknown.
    """

    feature: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.feature, str) or not self.feature:
            raise ConfigError(
                f"eligibility `feature` must be a non-empty string, got {self.feature!r}"
            )
        if self.op not in ELIGIBILITY_OPS:
            raise ConfigError(
                f"eligibility `op` must be one of {', '.join(ELIGIBILITY_OPS)}, got {self.op!r}"
            )
        if self.op in ("in", "not_in"):
            if not isinstance(self.value, list | tuple | frozenset | set):
                raise ConfigError(
                    f"eligibility `value` for op {self.op!r} must be a list, got {self.value!r}"
                )
            object.__setattr__(self, "value", tuple(self.value))

    def holds(self, customer: Mapping[str, Any]) -> bool:
        """Whether ``customer`` (a feature mapping) satisfies the rule."""
        actual = customer.get(self.feature)
        if actual is None or (isinstance(actual, float) and math.isnan(actual)):
            return False
        try:
            match self.op:
                case "==":
                    return actual == self.value
                case "!=":
                    return actual != self.value
                case "<":
                    return actual < self.value
                case "<=":
                    return actual <= self.value
                case ">":
                    return actual > self.value
                case ">=":
                    return actual >= self.value
                case "in":
                    return actual in self.value
                case "not_in":
                    return actual not in self.value
        except TypeError:
            # A rule comparing a number with a string is a catalogue mistake; it excludes.
            return False
        return False  # unreachable: op validated in __post_init__

    def describe(self) -> str:
        return f"{self.feature} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Offer:
    """One offer of the catalogue (contract table ``offers``)."""

    offer_id: str
    name: str
    offer_type: str
    category: str | None = None
    value: float = 1.0
    touchpoints: tuple[str, ...] = ()  # empty = every touchpoint
    start_at: datetime | None = None
    end_at: datetime | None = None
    cap_per_customer: int | None = None
    cap_window_days: int | None = None
    eligibility: tuple[EligibilityRule, ...] = ()
    weight: float = 1.0
    fallback: bool = False
    #: Offered again after the customer accepted it (content, service); by default an
    #: accepted offer is not offered to that customer again.
    repeatable: bool = False
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.offer_id:
            raise ConfigError("offer `offer_id` must be a non-empty string, got ''")
        if self.offer_type not in OFFER_TYPES:
            raise ConfigError(
                f"offer {self.offer_id}: `offer_type` must be one of {', '.join(OFFER_TYPES)}, "
                f"got {self.offer_type!r}"
            )
        if not (self.value >= 0):
            raise ConfigError(f"offer {self.offer_id}: `value` must be >= 0, got {self.value}")
        if not (self.weight > 0):
            raise ConfigError(f"offer {self.offer_id}: `weight` must be > 0, got {self.weight}")
        if (self.cap_per_customer is None) != (self.cap_window_days is None):
            raise ConfigError(
                f"offer {self.offer_id}: `cap_per_customer` and `cap_window_days` must be set "
                f"together, got {self.cap_per_customer} and {self.cap_window_days}"
            )
        if self.cap_per_customer is not None and self.cap_per_customer < 1:
            raise ConfigError(
                f"offer {self.offer_id}: `cap_per_customer` must be >= 1, got {self.cap_per_customer}"
            )
        if self.cap_window_days is not None and self.cap_window_days < 1:
            raise ConfigError(
                f"offer {self.offer_id}: `cap_window_days` must be >= 1, got {self.cap_window_days}"
            )
        for name in ("start_at", "end_at"):
            ts = getattr(self, name)
            if ts is not None:
                object.__setattr__(self, name, to_utc(ts))
        if self.start_at and self.end_at and self.end_at < self.start_at:
            raise ConfigError(
                f"offer {self.offer_id}: `end_at` must be >= `start_at`, got {self.end_at} < "
                f"{self.start_at}"
            )
        object.__setattr__(self, "touchpoints", tuple(self.touchpoints))
        object.__setattr__(self, "eligibility", tuple(self.eligibility))
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def capped(self) -> bool:
        return self.cap_per_customer is not None

    def shown_at(self, touchpoint_id: str) -> bool:
        return not self.touchpoints or touchpoint_id in self.touchpoints


@dataclass(frozen=True)
class Touchpoint:
    """Where offers are shown (contract table ``touchpoints``)."""

    touchpoint_id: str
    channel: str
    stage: str | None = None
    slots: int = 1
    mode: str = "realtime"
    consent_column: str | None = None

    def __post_init__(self) -> None:
        if not self.touchpoint_id:
            raise ConfigError("touchpoint `touchpoint_id` must be a non-empty string, got ''")
        if self.channel not in CHANNELS:
            raise ConfigError(
                f"touchpoint {self.touchpoint_id}: `channel` must be one of {', '.join(CHANNELS)}, "
                f"got {self.channel!r}"
            )
        if self.slots < 1:
            raise ConfigError(
                f"touchpoint {self.touchpoint_id}: `slots` must be >= 1, got {self.slots}"
            )
        if self.mode not in TOUCHPOINT_MODES:
            raise ConfigError(
                f"touchpoint {self.touchpoint_id}: `mode` must be one of "
                f"{', '.join(TOUCHPOINT_MODES)}, got {self.mode!r}"
            )


class OfferSlice(tuple):
    """Some of a touchpoint's candidate offers, with their positions among the candidates.

    A plain tuple of :class:`Offer` to every reader; ``positions`` (ndarray of int, shape
    (n,)) lets a matrix builder slice per-touchpoint column arrays instead of looking every
    offer up again.
    """

    positions: np.ndarray

    def __new__(cls, offers: Iterable[Offer], positions: np.ndarray) -> OfferSlice:
        obj = super().__new__(cls, offers)
        obj.positions = positions
        return obj


@dataclass(frozen=True)
class TouchpointOffers:
    """The candidate offers of one touchpoint, with column arrays for vectorised checks.

    Attributes
    ----------
    offers : tuple of Offer, shape (n,)
    offer_ids : ndarray of str, shape (n,)
    start_us, end_us : ndarray of int64, shape (n,)
        Date window as microseconds since the epoch (missing = open end).
    value, weight : ndarray of float64, shape (n,)
    index : mapping of offer_id -> position in ``offers``
    capped : ndarray of bool, shape (n,)
        Offers with a contact cap.
    repeatable : ndarray of bool, shape (n,)
        Offers offered again after the customer accepted them.
    rules : tuple of EligibilityRule, shape (r,)
        The distinct customer rules of these offers.
    rule_offers : ndarray of bool, shape (r, n)
        ``rule_offers[i, j]``: offer ``j`` requires rule ``i``.
    fallback : tuple of Offer
        The fallback offers of this touchpoint (served when nothing else is eligible).
    """

    touchpoint: Touchpoint
    offers: tuple[Offer, ...]
    offer_ids: np.ndarray
    start_us: np.ndarray
    end_us: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    index: Mapping[str, int]
    capped: np.ndarray
    repeatable: np.ndarray
    rules: tuple[EligibilityRule, ...]
    rule_offers: np.ndarray
    fallback: tuple[Offer, ...]

    offer_array: np.ndarray  # the offers as an object array, for slicing

    def take(self, positions: np.ndarray) -> OfferSlice:
        """The candidates at ``positions`` (shape (k,)), without a Python loop over offers."""
        return OfferSlice(self.offer_array[positions].tolist(), positions)

    @classmethod
    def build(cls, touchpoint: Touchpoint, all_offers: Iterable[Offer]) -> TouchpointOffers:
        shown = [o for o in all_offers if o.shown_at(touchpoint.touchpoint_id)]
        candidates = tuple(o for o in shown if not o.fallback)
        fallback = tuple(o for o in shown if o.fallback)
        offer_array = np.empty(len(candidates), dtype=object)
        offer_array[:] = candidates
        rules = tuple(dict.fromkeys(r for o in candidates for r in o.eligibility))
        rule_index = {r: i for i, r in enumerate(rules)}
        rule_offers = np.zeros((len(rules), len(candidates)), dtype=bool)
        for j, offer in enumerate(candidates):
            for rule in offer.eligibility:
                rule_offers[rule_index[rule], j] = True
        return cls(
            touchpoint=touchpoint,
            offers=candidates,
            offer_ids=np.array([o.offer_id for o in candidates], dtype=object),
            start_us=np.array(
                [
                    _epoch_us(o.start_at) if o.start_at else np.iinfo(np.int64).min
                    for o in candidates
                ],
                dtype=np.int64,
            ),
            end_us=np.array(
                [_epoch_us(o.end_at) if o.end_at else np.iinfo(np.int64).max for o in candidates],
                dtype=np.int64,
            ),
            value=np.array([o.value for o in candidates], dtype=np.float64),
            weight=np.array([o.weight for o in candidates], dtype=np.float64),
            index=MappingProxyType({o.offer_id: j for j, o in enumerate(candidates)}),
            capped=np.array([o.capped for o in candidates], dtype=bool),
            repeatable=np.array([o.repeatable for o in candidates], dtype=bool),
            rules=rules,
            rule_offers=rule_offers,
            fallback=fallback,
            offer_array=offer_array,
        )


def _epoch_us(ts: datetime) -> int:
    return int(to_utc(ts).timestamp() * 1_000_000)


class Catalog:
    """All offers and touchpoints, indexed for the decision path. Read-only after build."""

    def __init__(self, offers: Sequence[Offer], touchpoints: Sequence[Touchpoint]):
        self.offers: dict[str, Offer] = {}
        for offer in offers:
            if offer.offer_id in self.offers:
                raise ConfigError(f"offer_id must be unique, got {offer.offer_id!r} twice")
            self.offers[offer.offer_id] = offer
        self.touchpoints: dict[str, Touchpoint] = {}
        for tp in touchpoints:
            if tp.touchpoint_id in self.touchpoints:
                raise ConfigError(f"touchpoint_id must be unique, got {tp.touchpoint_id!r} twice")
            self.touchpoints[tp.touchpoint_id] = tp
        for offer in self.offers.values():
            unknown = [t for t in offer.touchpoints if t not in self.touchpoints]
            if unknown:
                raise ConfigError(
                    f"offer {offer.offer_id}: `touchpoints` must name known touchpoints, "
                    f"got unknown {', '.join(unknown)}"
                )
        self._version: str | None = None
        self._by_touchpoint = {
            tp_id: TouchpointOffers.build(tp, self.offers.values())
            for tp_id, tp in self.touchpoints.items()
        }

    def __repr__(self) -> str:
        return f"Catalog({len(self.offers)} offers, {len(self.touchpoints)} touchpoints)"

    @property
    def version(self) -> str:
        """A fingerprint of the offers and touchpoints (12 hex digits): equal catalogues have
        the same, any change of a field gives another (what a service compares to decide
        whether a catalogue it read is new)."""
        if self._version is None:
            text = repr(
                (
                    sorted((o.offer_id, repr(o)) for o in self.offers.values()),
                    sorted((t.touchpoint_id, repr(t)) for t in self.touchpoints.values()),
                )
            )
            self._version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        return self._version

    def touchpoint(self, touchpoint_id: str) -> Touchpoint:
        """The touchpoint ``touchpoint_id``; raises :class:`NotFoundError` naming it."""
        try:
            return self.touchpoints[touchpoint_id]
        except KeyError:
            raise NotFoundError(
                f"`touchpoint` must be one of the catalogue's touchpoints "
                f"({', '.join(sorted(self.touchpoints)[:20])}), got {touchpoint_id!r}"
            ) from None

    def offer(self, offer_id: str) -> Offer:
        try:
            return self.offers[offer_id]
        except KeyError:
            raise NotFoundError(f"`offer_id` must be a catalogue offer, got {offer_id!r}") from None

    def for_touchpoint(self, touchpoint_id: str) -> TouchpointOffers:
        """Candidates, fallbacks and rule arrays of ``touchpoint_id`` (precomputed)."""
        self.touchpoint(touchpoint_id)
        return self._by_touchpoint[touchpoint_id]

    def offers_at(self, touchpoint_id: str | None = None) -> list[Offer]:
        """Every offer shown at ``touchpoint_id`` (fallbacks included), or all offers."""
        if touchpoint_id is None:
            return list(self.offers.values())
        self.touchpoint(touchpoint_id)
        return [o for o in self.offers.values() if o.shown_at(touchpoint_id)]


def now_utc() -> datetime:
    """The current time, aware UTC (the default clock of the decision path)."""
    return datetime.now(UTC)
