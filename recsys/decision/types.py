"""The values of a decision: the request, the decision with its served offers and trace, and
:class:`DecisionBatch`, the columns of many decisions that the pipeline returns."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from recsys.eligibility import CapHit, Removal


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    feature_spec_version: str | None = None


@dataclass(frozen=True)
class DecisionRequest:
    """One question: which offers for this customer, at this touchpoint, now?"""

    customer_id: str
    touchpoint_id: str
    context: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    limit: int | None = None  # None = the touchpoint's slots
    exclude_offers: tuple[str, ...] = ()
    unit_id: str | None = None  # experiment assignment unit (None = the customer id)

    @property
    def unit(self) -> str:
        """Who is assigned to experiment arms: ``unit_id`` (e.g. an anonymous visitor's
        cookie) or else the customer."""
        return self.unit_id if self.unit_id is not None else self.customer_id


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
    arm: str = "champion"
    experiment_id: str | None = None
    fallback_reason: str | None = None  # why a fallback stood in for the model or features
    unit_id: str | None = None  # the request's experiment unit, when it named one
    shadow: bool = False  # decided by a shadow arm: logged, never served, never a contact


def new_decision_ids(n: int) -> list[str]:
    """``n`` time-ordered UUIDs (version 7, RFC 9562) as 32 hex digits.

    The first 48 bits are the Unix time in milliseconds, the rest random: ids sort by
    creation time, so the event log's primary-key B-tree grows at its end instead of
    splitting pages all over.
    """
    if n <= 0:
        return []
    millis = time.time_ns() // 1_000_000
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, :6] = np.frombuffer(millis.to_bytes(6, "big"), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x70  # version 7
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 9562 variant
    text = raw.tobytes().hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


@dataclass(frozen=True)
class DecisionBatch:
    """The decisions of n requests as columns: one entry per decision (request order) and one
    row per served offer (decisions in order, ranks ascending).

    :meth:`decisions` gives them as :class:`Decision` objects (with reasons), what an HTTP
    response or the event log needs; batch output (Parquet) reads the columns directly.

    Attributes
    ----------
    requests : tuple of DecisionRequest, shape (n,)
    ts : datetime, the decision time
    model : list of ModelInfo, length n
        The model that scored each decision (a fallback names itself).
    decision_id, channel, policy, arm : lists of str, length n
    experiment_id, fallback_reason : lists of str or None, length n
    fallback, cold_start : ndarray of bool, shape (n,)
    n_candidates, n_eligible : ndarray of int64, shape (n,)
    row_start : ndarray of int64, shape (n + 1,)
        Decision ``i``'s offers are rows ``row_start[i]:row_start[i + 1]``.
    offer_id, offer_name : ndarray of object (str), shape (r,)
    score : ndarray of float64, shape (r,), NaN for fallback offers
    priority, value, weight, propensity : ndarray of float64, shape (r,)
    explored : ndarray of bool, shape (r,)
    traces : tuple of DecisionTrace (or None when not asked for), shape (n,)
    """

    requests: tuple[DecisionRequest, ...]
    ts: datetime
    model: list[ModelInfo]
    decision_id: list[str]
    channel: list[str]
    policy: list[str]
    arm: list[str]
    experiment_id: list[str | None]
    fallback_reason: list[str | None]
    fallback: np.ndarray
    cold_start: np.ndarray
    n_candidates: np.ndarray
    n_eligible: np.ndarray
    row_start: np.ndarray
    offer_id: np.ndarray
    offer_name: np.ndarray
    score: np.ndarray
    priority: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    traces: tuple[DecisionTrace | None, ...]

    def __len__(self) -> int:
        return len(self.requests)

    @classmethod
    def empty(cls, requests: tuple[DecisionRequest, ...], ts: datetime) -> DecisionBatch:
        """No decisions (``requests`` is empty)."""
        return cls(
            requests=requests,
            ts=ts,
            model=[],
            decision_id=[],
            channel=[],
            policy=[],
            arm=[],
            experiment_id=[],
            fallback_reason=[],
            fallback=np.zeros(0, dtype=bool),
            cold_start=np.zeros(0, dtype=bool),
            n_candidates=np.zeros(0, dtype=np.int64),
            n_eligible=np.zeros(0, dtype=np.int64),
            row_start=np.zeros(1, dtype=np.int64),
            offer_id=np.zeros(0, dtype=object),
            offer_name=np.zeros(0, dtype=object),
            score=np.zeros(0),
            priority=np.zeros(0),
            value=np.zeros(0),
            weight=np.zeros(0),
            propensity=np.zeros(0),
            explored=np.zeros(0, dtype=bool),
            traces=(),
        )

    @property
    def n_rows(self) -> int:
        return int(self.offer_id.shape[0])

    @property
    def customer_id(self) -> list[str]:
        return [r.customer_id for r in self.requests]

    @property
    def touchpoint_id(self) -> list[str]:
        return [r.touchpoint_id for r in self.requests]

    @property
    def row_decision(self) -> np.ndarray:
        """Decision (position in the batch) of each served-offer row, shape (r,)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.row_start))

    @property
    def rank(self) -> np.ndarray:
        """1-based position of each served-offer row in its slate, shape (r,)."""
        return (np.arange(self.n_rows) - self.row_start[:-1][self.row_decision] + 1).astype(
            np.int32
        )

    def decisions(self) -> list[Decision]:
        """Every decision as a :class:`Decision`, with the reasons of each served offer
        (built once: the batch is immutable)."""
        return list(self._decisions)

    @cached_property
    def _decisions(self) -> tuple[Decision, ...]:
        offer_id, name = self.offer_id.tolist(), self.offer_name.tolist()
        score, priority = self.score.tolist(), self.priority.tolist()
        value, weight = self.value.tolist(), self.weight.tolist()
        propensity, explored = self.propensity.tolist(), self.explored.tolist()
        bounds = self.row_start.tolist()
        fallback, cold_start = self.fallback.tolist(), self.cold_start.tolist()
        n_candidates, n_eligible = self.n_candidates.tolist(), self.n_eligible.tolist()
        out = []
        for i, request in enumerate(self.requests):
            offers = []
            for rank, k in enumerate(range(bounds[i], bounds[i + 1]), start=1):
                if np.isnan(score[k]):
                    reasons: tuple[str, ...] = ("fallback: no other offer is eligible",)
                else:
                    reasons = (
                        f"P(accept) {score[k]:.4f} x value {value[k]:g} x weight {weight[k]:g} "
                        f"= priority {priority[k]:.4f}",
                        f"{n_eligible[i]} of {n_candidates[i]} candidates eligible",
                    )
                    if explored[k]:
                        reasons += (f"explored ({self.policy[i]})",)
                    if cold_start[i]:
                        reasons += ("cold start: customer unknown to the feature store",)
                offers.append(
                    ServedOffer(
                        offer_id=offer_id[k],
                        name=name[k],
                        rank=rank,
                        score=None if np.isnan(score[k]) else score[k],
                        priority=priority[k],
                        propensity=propensity[k],
                        explored=explored[k],
                        reasons=reasons,
                    )
                )
            out.append(
                Decision(
                    decision_id=self.decision_id[i],
                    ts=self.ts,
                    customer_id=request.customer_id,
                    touchpoint_id=request.touchpoint_id,
                    channel=self.channel[i],
                    offers=tuple(offers),
                    fallback=fallback[i],
                    cold_start=cold_start[i],
                    model=self.model[i],
                    policy=self.policy[i],
                    context=request.context,
                    trace=self.traces[i],
                    arm=self.arm[i],
                    experiment_id=self.experiment_id[i],
                    fallback_reason=self.fallback_reason[i],
                    unit_id=request.unit_id,
                )
            )
        return tuple(out)

    def take(self, positions: Sequence[int]) -> DecisionBatch:
        """The decisions at ``positions``, in that order."""
        idx = list(positions)
        if idx == list(range(len(self))):
            return self  # every decision in order (frozen: sharing is safe)
        counts = np.diff(self.row_start)[idx] if idx else np.zeros(0, dtype=np.int64)
        rows = (
            np.concatenate(
                [np.arange(self.row_start[i], self.row_start[i + 1]) for i in idx]
            ).astype(np.intp)
            if counts.sum()
            else np.zeros(0, dtype=np.intp)
        )
        row_start = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=row_start[1:])
        return DecisionBatch(
            requests=tuple(self.requests[i] for i in idx),
            ts=self.ts,
            model=[self.model[i] for i in idx],
            decision_id=[self.decision_id[i] for i in idx],
            channel=[self.channel[i] for i in idx],
            policy=[self.policy[i] for i in idx],
            arm=[self.arm[i] for i in idx],
            experiment_id=[self.experiment_id[i] for i in idx],
            fallback_reason=[self.fallback_reason[i] for i in idx],
            fallback=self.fallback[idx],
            cold_start=self.cold_start[idx],
            n_candidates=self.n_candidates[idx],
            n_eligible=self.n_eligible[idx],
            row_start=row_start,
            offer_id=self.offer_id[rows],
            offer_name=self.offer_name[rows],
            score=self.score[rows],
            priority=self.priority[rows],
            value=self.value[rows],
            weight=self.weight[rows],
            propensity=self.propensity[rows],
            explored=self.explored[rows],
            traces=tuple(self.traces[i] for i in idx),
        )

    def replaced(self, positions: Sequence[int], other: DecisionBatch) -> DecisionBatch:
        """This batch with the decisions at ``positions`` replaced by ``other``'s, in order."""
        at = {p: len(self) + k for k, p in enumerate(positions)}
        both = concat([self, other])
        return both.take([at.get(i, i) for i in range(len(self))])


def concat(batches: Sequence[DecisionBatch]) -> DecisionBatch:
    """The decisions of ``batches`` one after the other (one time: the first's)."""
    first = batches[0]
    if len(batches) == 1:
        return first
    counts = np.concatenate([np.diff(b.row_start) for b in batches])
    row_start = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=row_start[1:])

    def joined(column: Callable[[DecisionBatch], np.ndarray]) -> np.ndarray:
        return np.concatenate([column(b) for b in batches])

    return DecisionBatch(
        requests=tuple(r for b in batches for r in b.requests),
        ts=first.ts,
        model=[x for b in batches for x in b.model],
        decision_id=[x for b in batches for x in b.decision_id],
        channel=[x for b in batches for x in b.channel],
        policy=[x for b in batches for x in b.policy],
        arm=[x for b in batches for x in b.arm],
        experiment_id=[x for b in batches for x in b.experiment_id],
        fallback_reason=[x for b in batches for x in b.fallback_reason],
        fallback=joined(lambda b: b.fallback),
        cold_start=joined(lambda b: b.cold_start),
        n_candidates=joined(lambda b: b.n_candidates),
        n_eligible=joined(lambda b: b.n_eligible),
        row_start=row_start,
        offer_id=joined(lambda b: b.offer_id),
        offer_name=joined(lambda b: b.offer_name),
        score=joined(lambda b: b.score),
        priority=joined(lambda b: b.priority),
        value=joined(lambda b: b.value),
        weight=joined(lambda b: b.weight),
        propensity=joined(lambda b: b.propensity),
        explored=joined(lambda b: b.explored),
        traces=tuple(t for b in batches for t in b.traces),
    )
