"""The one decision path, shared by the HTTP service and batch scoring.

candidates of the touchpoint -> eligibility (date window, consent, exclusions, rules,
already accepted, contact caps across channels) -> P(accept) from the model over the
decision matrix -> priority = P x value x weight -> slate of ``limit`` -> exploration with
propensities -> decision (and its trace) -> the decision log.

The engine takes everything it talks to as small protocols (feature source, matrix
builder, scorer, contact history, decision sink), so it imports no web framework, no MLflow
and no feature pipeline; ``serving`` wires the real ones in.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from recsys.arbitration import EpsilonGreedy, priorities
from recsys.catalog import Catalog, Offer, Touchpoint, now_utc, to_utc
from recsys.eligibility import (
    EMPTY_HISTORY,
    CapHit,
    ContactHistory,
    Eligibility,
    Removal,
    check_eligibility,
    has_consent,
    in_date_window,
)
from recsys.errors import DataError, SpecMismatchError

logger = logging.getLogger(__name__)

DEFAULT_MAX_LIMIT = 50
#: How often a decision that lost a race for a contact cap is decided again.
MAX_CAP_RETRIES = 2
#: Keys a feature vector may carry to say it is the cold-start vector of an unknown customer.
COLD_START_KEYS = ("is_cold_start", "cold_start", "_cold_start")
KNOWN_KEYS = ("is_known", "known_customer", "_known")


# --------------------------------------------------------------------------- protocols


class Scorer(Protocol):
    """A model: P(accept) for each row of a decision matrix."""

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """matrix shape (n, n_features) -> P(accept), shape (n,)."""
        ...


class FeatureSource(Protocol):
    """The online feature store (latest vector per customer)."""

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One vector per id; an unknown customer gets the cold-start vector."""
        ...

    def spec_version(self) -> str: ...


class MatrixBuilder(Protocol):
    """Customer vector x candidate offers -> model input rows (one per offer)."""

    def __call__(
        self,
        customer_vector: Mapping[str, Any],
        offers: Sequence[Offer],
        touchpoint: Touchpoint,
        context: Mapping[str, Any],
        now: datetime,
    ) -> np.ndarray: ...


class ContactHistorySource(Protocol):
    """Contacts (served offers) across all channels and accepted offers, per customer."""

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]: ...


class DecisionSink(Protocol):
    """Where decisions are recorded (the event log); must commit before returning.

    A sink may also offer ``record_decisions_within_caps(decisions, caps) -> refused ids``
    (see :class:`recsys.eventlog.EventLog`): the engine then re-decides refused decisions.
    """

    def record_decisions(self, decisions: Sequence[Decision]) -> None: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    feature_spec_version: str | None = None


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class DecisionRequest:
    """One question: which offers for this customer, at this touchpoint, now?"""

    customer_id: str
    touchpoint_id: str
    context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    limit: int | None = None  # None = the touchpoint's slots
    exclude_offers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServedOffer:
    offer_id: str
    name: str
    rank: int  # 1-based position in the slate
    score: float | None  # P(accept) from the model; None for fallback offers
    priority: float
    propensity: float
    explored: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ScorePart:
    offer_id: str
    p_accept: float
    value: float
    weight: float
    priority: float


@dataclass(frozen=True)
class SlatePosition:
    rank: int
    offer_id: str
    explored: bool
    propensity: float
    greedy_offer_id: str


@dataclass(frozen=True)
class DecisionTrace:
    """Why the decision came out as it did."""

    candidates: int
    eligible: int
    consent: bool
    removals: tuple[Removal, ...]
    caps_hit: tuple[CapHit, ...]
    scores: tuple[ScorePart, ...]  # every eligible offer, best priority first
    slate: tuple[SlatePosition, ...]
    policy: str
    epsilon: float
    cold_start: bool
    feature_spec_version: str | None
    notes: tuple[str, ...] = ()

    def why_not(self, offer_id: str) -> list[Removal]:
        """The checks that removed ``offer_id`` (empty if it was eligible)."""
        return [r for r in self.removals if offer_id in r.offer_ids]


@dataclass(frozen=True)
class Decision:
    decision_id: str
    ts: datetime
    customer_id: str
    touchpoint_id: str
    channel: str
    offers: tuple[ServedOffer, ...]
    fallback: bool
    cold_start: bool
    model: ModelInfo
    policy: str
    context: Mapping[str, Any]
    trace: DecisionTrace | None = None


# --------------------------------------------------------------------------- engine


def is_cold_start(vector: Mapping[str, Any]) -> bool:
    """Whether a feature vector is the store's cold-start vector (unknown customer)."""
    for key in COLD_START_KEYS:
        if key in vector:
            return bool(vector[key])
    for key in KNOWN_KEYS:
        if key in vector:
            return not bool(vector[key])
    return False


def exploration_seed(seed: int, customer_id: str, touchpoint_id: str, now_us: int) -> int:
    """A stable per-decision seed: the same customer, touchpoint and time explore alike."""
    digest = hashlib.blake2b(
        f"{seed}|{customer_id}|{touchpoint_id}|{now_us}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little")


def new_decision_id() -> str:
    return uuid.uuid4().hex


@dataclass
class _Pending:
    """Work of one request between eligibility and arbitration."""

    request: DecisionRequest
    touchpoint: Touchpoint
    limit: int
    vector: Mapping[str, Any]
    eligibility: Eligibility
    eligible: tuple[Offer, ...]
    eligible_idx: np.ndarray
    cold_start: bool
    row_start: int = 0
    row_end: int = 0


class DecisionEngine:
    """Decides which offers to show; the only decision code HTTP and batch use.

    Parameters
    ----------
    catalog : Catalog
    features : FeatureSource
    build_matrix : MatrixBuilder
    scorer : Scorer
    model : ModelInfo
        Name, version and feature-spec version of the scorer's model.
    history : ContactHistorySource
        Contacts across channels (usually the event log, which also is the sink).
    sink : DecisionSink or None
        Records every decision; None = not recorded (dry runs).
    policy : EpsilonGreedy
    seed : int
        Base seed of exploration.
    clock : callable returning an aware datetime
    max_limit : int
        Largest ``limit`` a request may ask for.
    cap_lookback_days : int
        How far back contact history is read (>= the longest cap window).

    Raises
    ------
    SpecMismatchError
        If the model was trained on another feature-spec version than the store serves.
    """

    def __init__(
        self,
        catalog: Catalog,
        features: FeatureSource,
        build_matrix: MatrixBuilder,
        scorer: Scorer,
        model: ModelInfo,
        history: ContactHistorySource,
        sink: DecisionSink | None,
        policy: EpsilonGreedy | None = None,
        seed: int = 7,
        clock: Callable[[], datetime] = now_utc,
        max_limit: int = DEFAULT_MAX_LIMIT,
    ):
        store_spec = features.spec_version()
        if model.feature_spec_version is not None and model.feature_spec_version != store_spec:
            raise SpecMismatchError(
                f"model {model.name} v{model.version} was trained on feature spec "
                f"{model.feature_spec_version!r} but the online store serves {store_spec!r}; "
                "rebuild features or retrain"
            )
        if max_limit < 1:
            raise ValueError(f"`max_limit` must be >= 1, got {max_limit}")
        self.catalog = catalog
        self.features = features
        self.build_matrix = build_matrix
        self.scorer = scorer
        self.model = model
        self.history = history
        self.sink = sink
        self.policy = policy or EpsilonGreedy(0.0)
        self.seed = seed
        self.clock = clock
        self.max_limit = max_limit
        self._caps: dict[str, tuple[int, int]] = {
            o.offer_id: (o.cap_per_customer, o.cap_window_days)
            for o in catalog.offers.values()
            if o.cap_per_customer is not None and o.cap_window_days is not None
        }
        self.cap_lookback_days = max((w for _, w in self._caps.values()), default=0)

    # ------------------------------------------------------------------ public

    def decide(self, request: DecisionRequest, *, trace: bool = False) -> Decision:
        """Decide for one request (see :meth:`decide_many`)."""
        return self.decide_many([request], trace=trace)[0]

    def decide_many(
        self,
        requests: Sequence[DecisionRequest],
        *,
        trace: bool = False,
        now: datetime | None = None,
        record: bool = True,
        _attempt: int = 0,
    ) -> list[Decision]:
        """Decide for many requests at one time, scoring them in one model call.

        Parameters
        ----------
        requests : sequence of DecisionRequest
        trace : bool
            Attach a :class:`DecisionTrace` to every decision.
        now : aware datetime, optional
            Decision time; default the engine's clock.
        record : bool
            Record the decisions in the sink (contacts count toward caps from then on).

        Raises
        ------
        NotFoundError
            An unknown touchpoint.
        ValueError
            A ``limit`` outside 1..max_limit.
        """
        if not requests:
            return []
        now = to_utc(now) if now is not None else to_utc(self.clock())
        now_us = int(now.timestamp() * 1_000_000)
        for req in requests:
            self.catalog.touchpoint(req.touchpoint_id)
            if req.limit is not None and not (1 <= req.limit <= self.max_limit):
                raise ValueError(f"`limit` must be in 1..{self.max_limit}, got {req.limit}")

        customer_ids = list(dict.fromkeys(r.customer_id for r in requests))
        vectors = self.features.get_many(customer_ids)
        # Read even without caps: "already accepted" needs the history too.
        since = now - timedelta(days=max(self.cap_lookback_days, 1))
        histories = self.history.contact_history(customer_ids, since)

        pending: list[_Pending] = []
        blocks: list[np.ndarray] = []
        rows = 0
        for req in requests:
            item = self._eligible(req, vectors, histories, now_us)
            if item.eligible:
                matrix = self.build_matrix(
                    item.vector, item.eligible, item.touchpoint, req.context, now
                )
                if matrix.shape[0] != len(item.eligible):
                    raise DataError(
                        f"decision matrix must have one row per offer ({len(item.eligible)}), "
                        f"got {matrix.shape[0]}"
                    )
                item.row_start, item.row_end = rows, rows + matrix.shape[0]
                rows += matrix.shape[0]
                blocks.append(matrix)
            pending.append(item)

        scores = np.empty(0)
        if blocks:
            matrix = blocks[0] if len(blocks) == 1 else np.vstack(blocks)
            scores = np.asarray(self.scorer.score(matrix), dtype=np.float64).reshape(-1)
            if scores.shape[0] != matrix.shape[0]:
                raise DataError(
                    f"scorer must return one score per row ({matrix.shape[0]}), "
                    f"got {scores.shape[0]}"
                )

        decisions = [
            self._arbitrate(item, scores[item.row_start : item.row_end], now, now_us, trace)
            for item in pending
        ]
        if record and self.sink is not None:
            decisions = self._record(requests, decisions, trace, now, _attempt)
        return decisions

    def _record(
        self,
        requests: Sequence[DecisionRequest],
        decisions: list[Decision],
        trace: bool,
        now: datetime,
        attempt: int,
    ) -> list[Decision]:
        """Record decisions; re-decide those that lost a race for a contact cap.

        The history was read at the start of the decision; the sink re-counts contacts of
        capped offers inside its write transaction (when it can) and refuses decisions
        that would break a cap because another decision got there first.
        """
        assert self.sink is not None
        checked = getattr(self.sink, "record_decisions_within_caps", None)
        if checked is None or not self._caps:
            self.sink.record_decisions(decisions)
            return decisions
        refused = checked(decisions, self._caps)
        if not refused:
            return decisions
        logger.info("%d decision(s) lost a race for a contact cap; deciding again", len(refused))
        redo_at = [i for i, d in enumerate(decisions) if d.decision_id in refused]
        redo = [requests[i] for i in redo_at]
        if attempt < MAX_CAP_RETRIES:
            again = self.decide_many(redo, trace=trace, now=now, _attempt=attempt + 1)
        else:
            # Last resort: leave every capped offer out, so no cap can be broken.
            redo = [replace(r, exclude_offers=(*r.exclude_offers, *self._caps)) for r in redo]
            again = self.decide_many(redo, trace=trace, now=now, record=False)
            self.sink.record_decisions(again)
        out = list(decisions)
        for i, decision in zip(redo_at, again, strict=True):
            out[i] = decision
        return out

    # ------------------------------------------------------------------ steps

    def _eligible(
        self,
        req: DecisionRequest,
        vectors: Mapping[str, Mapping[str, Any]],
        histories: Mapping[str, ContactHistory],
        now_us: int,
    ) -> _Pending:
        tp_offers = self.catalog.for_touchpoint(req.touchpoint_id)
        vector = vectors.get(req.customer_id) or {}
        history = histories.get(req.customer_id, EMPTY_HISTORY)
        elig = check_eligibility(tp_offers, vector, history, now_us, req.exclude_offers)
        idx = np.flatnonzero(elig.mask)
        if idx.shape[0] == len(tp_offers.offers):
            eligible = tp_offers.offers  # same tuple object: builders may cache on it
        else:
            eligible = tp_offers.take(idx)
        limit = req.limit if req.limit is not None else tp_offers.touchpoint.slots
        return _Pending(
            request=req,
            touchpoint=tp_offers.touchpoint,
            limit=min(limit, self.max_limit),
            vector=vector,
            eligibility=elig,
            eligible=eligible,
            eligible_idx=idx,
            cold_start=is_cold_start(vector) or not vector,
        )

    def _arbitrate(
        self, item: _Pending, p_accept: np.ndarray, now: datetime, now_us: int, trace: bool
    ) -> Decision:
        req = item.request
        tp_offers = self.catalog.for_touchpoint(req.touchpoint_id)
        notes: list[str] = []
        served: list[ServedOffer] = []
        slate_trace: list[SlatePosition] = []
        score_parts: tuple[ScorePart, ...] = ()
        fallback = False

        if item.eligible:
            value = tp_offers.value[item.eligible_idx]
            weight = tp_offers.weight[item.eligible_idx]
            priority = priorities(p_accept, value, weight)
            rng = None
            if self.policy.explores:
                rng = np.random.default_rng(
                    exploration_seed(self.seed, req.customer_id, req.touchpoint_id, now_us)
                )
            slate = self.policy.select(priority, item.limit, rng)
            greedy = np.argsort(-priority, kind="stable") if trace else None
            n_eligible = len(item.eligible)
            for rank, (pos, prop, explored) in enumerate(
                zip(slate.positions, slate.propensity, slate.explored, strict=True), start=1
            ):
                offer = item.eligible[pos]
                p = float(p_accept[pos])
                reasons = [
                    f"P(accept) {p:.4f} x value {value[pos]:g} x weight {weight[pos]:g} "
                    f"= priority {priority[pos]:.4f}",
                    f"{n_eligible} of {len(tp_offers.offers)} candidates eligible",
                ]
                if explored:
                    reasons.append(f"explored ({self.policy.name})")
                if item.cold_start:
                    reasons.append("cold start: customer unknown to the feature store")
                served.append(
                    ServedOffer(
                        offer_id=offer.offer_id,
                        name=offer.name,
                        rank=rank,
                        score=p,
                        priority=float(priority[pos]),
                        propensity=float(prop),
                        explored=bool(explored),
                        reasons=tuple(reasons),
                    )
                )
            if trace:
                score_parts = tuple(
                    ScorePart(
                        item.eligible[i].offer_id,
                        float(p_accept[i]),
                        float(value[i]),
                        float(weight[i]),
                        float(priority[i]),
                    )
                    for i in greedy
                )
                remaining = list(greedy)
                for s_offer, pos in zip(served, slate.positions, strict=True):
                    greedy_id = item.eligible[remaining[0]].offer_id
                    slate_trace.append(
                        SlatePosition(
                            s_offer.rank,
                            s_offer.offer_id,
                            s_offer.explored,
                            s_offer.propensity,
                            greedy_id,
                        )
                    )
                    remaining.remove(pos)
        elif item.eligibility.consent:
            served = self._fallback(tp_offers.fallback, item.limit, now_us)
            fallback = bool(served)
            notes.append(
                "no eligible offer: served the touchpoint's fallback"
                if served
                else "no eligible offer and the touchpoint has no fallback offer"
            )
            slate_trace = [
                SlatePosition(s.rank, s.offer_id, False, 1.0, s.offer_id) for s in served
            ]
        else:
            notes.append("no consent for this channel: nothing is shown")

        decision_trace = None
        if trace:
            decision_trace = DecisionTrace(
                candidates=len(tp_offers.offers),
                eligible=len(item.eligible),
                consent=item.eligibility.consent,
                removals=item.eligibility.removals,
                caps_hit=item.eligibility.caps_hit,
                scores=score_parts,
                slate=tuple(slate_trace),
                policy=self.policy.name,
                epsilon=self.policy.epsilon,
                cold_start=item.cold_start,
                feature_spec_version=self.model.feature_spec_version,
                notes=tuple(notes),
            )
        return Decision(
            decision_id=new_decision_id(),
            ts=now,
            customer_id=req.customer_id,
            touchpoint_id=req.touchpoint_id,
            channel=item.touchpoint.channel,
            offers=tuple(served),
            fallback=fallback,
            cold_start=item.cold_start,
            model=self.model,
            policy=self.policy.name,
            context=req.context,
            trace=decision_trace,
        )

    def _fallback(self, offers: tuple[Offer, ...], limit: int, now_us: int) -> list[ServedOffer]:
        if not offers:
            return []
        start = np.array([_us(o.start_at, np.iinfo(np.int64).min) for o in offers])
        end = np.array([_us(o.end_at, np.iinfo(np.int64).max) for o in offers])
        live = [o for o, ok in zip(offers, in_date_window(start, end, now_us), strict=True) if ok]
        live.sort(key=lambda o: -(o.value * o.weight))
        return [
            ServedOffer(
                offer_id=o.offer_id,
                name=o.name,
                rank=rank,
                score=None,
                priority=o.value * o.weight,
                propensity=1.0,
                explored=False,
                reasons=("fallback: no other offer is eligible",),
            )
            for rank, o in enumerate(live[:limit], start=1)
        ]


def _us(ts: datetime | None, default: int) -> int:
    return default if ts is None else int(ts.timestamp() * 1_000_000)


__all__ = [
    "ContactHistorySource",
    "Decision",
    "DecisionEngine",
    "DecisionRequest",
    "DecisionSink",
    "DecisionTrace",
    "FeatureSource",
    "MatrixBuilder",
    "ModelInfo",
    "Scorer",
    "ServedOffer",
    "has_consent",
]
