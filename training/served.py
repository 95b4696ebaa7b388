"""The served policy on logged rounds: each test round decided again by the decision pipeline.

The baselines of :mod:`training.policy_eval` rank a round's candidates by a model's score
alone. The service does more: it takes the touchpoint's candidates from the catalogue, keeps
the eligible ones (date window, consent, exclusions, rules, already accepted, contact caps),
scores them with the registered model on rows built as serving builds them, ranks by
priority = P(accept) x value x weight and lets its policy (softmax by default) choose. Here every
logged round goes through that same :class:`recsys.decision.DecisionPipeline`, as of the
round's time:

- features: the round's own point-in-time vector (:class:`PointInTimeFeatures`), not today's;
- contact history: what was shown and accepted before the round (:class:`PointInTimeHistory`);
- nothing is recorded (no sink).

From each round's trace (the eligible offers with their priority), the policy's
:meth:`~recsys.arbitration.base.Policy.first_position_probabilities` gives the probability of
every eligible offer being served first: the ``served`` :class:`TargetPolicy` whose value the
off-policy estimators report. A round with nothing eligible serves the touchpoint's fallback
(probability 1, no model score) or nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from recsys.arbitration import Policy
from recsys.catalog import Catalog
from recsys.decision import (
    ContactHistorySource,
    DecisionPipeline,
    DecisionRequest,
    DecisionTrace,
    FeatureBlock,
    FeatureSource,
    MatrixBuilder,
    MatrixScorer,
    ModelInfo,
    ServedModel,
    SingleArm,
)
from recsys.eligibility import ContactHistory
from recsys.errors import DataError
from recsys.scoring import Scorer
from training.encoding import Encoder
from training.policy_eval import TargetPolicy

logger = logging.getLogger(__name__)

#: The name of the served policy in evaluations and metrics (``served.snips_value``).
SERVED = "served"
#: Request context columns of a logged round (``ctx_<key>``), as the training set has them.
CONTEXT_PREFIX = "ctx_"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _FixedClock:
    """The clock of a replayed decision: always the round's time."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def epoch_micros(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch of timestamps (naive = UTC), exactly, shape (n,) int64."""
    stamps = pd.to_datetime(ts)
    if stamps.dt.tz is None:
        stamps = stamps.dt.tz_localize("UTC")
    delta = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    return delta.to_numpy(np.int64)


def epoch_us(ts: Any) -> int:
    """Microseconds since the epoch of a timestamp (naive = UTC), exactly."""
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value // 1_000)


class PointInTimeFeatures:
    """Customer features as they were at each logged round's time.

    Parameters
    ----------
    block : FeatureBlock
        One row per (customer, time) point, with the catalogue's names as aliases, and one
        cold-start row.
    points : mapping of (customer_id, microseconds since the epoch) -> row of ``block``
    cold : int
        The cold-start row of ``block`` (customers without a vector at that time).
    """

    def __init__(self, block: FeatureBlock, points: Mapping[tuple[str, int], int], cold: int):
        if not 0 <= cold < len(block):
            raise ValueError(f"`cold` must be a row of the block (0..{len(block) - 1}), got {cold}")
        self.block = block
        self.points = points
        self.cold = cold

    def at(self, now: datetime) -> FeatureSource:
        """The feature source of decisions at ``now``."""
        return _FeaturesAt(self, epoch_us(now))


@dataclass(frozen=True)
class _FeaturesAt:
    """:class:`FeatureSource` of one time: each customer's vector of that time."""

    features: PointInTimeFeatures
    now_us: int

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        f = self.features
        rows = [f.points.get((c, self.now_us), f.cold) for c in customer_ids]
        return dataclasses.replace(f.block.take(rows), ids=tuple(customer_ids))

    def spec_version(self) -> str:
        return self.features.block.spec_version


class PointInTimeHistory:
    """Offers shown to and accepted by customers, as known at each logged round's time:
    only what happened strictly before it counts.

    Parameters
    ----------
    contacts : DataFrame
        ``customer_id, offer_id, ts``: one row per offer shown (any touchpoint or channel).
    accepted : DataFrame
        ``customer_id, offer_id, ts``: one row per acceptance (or conversion).
    """

    def __init__(self, contacts: pd.DataFrame, accepted: pd.DataFrame):
        self._contacts = _by_customer(contacts, "contacts")
        self._accepted = _by_customer(accepted, "accepted")

    @classmethod
    def empty(cls) -> PointInTimeHistory:
        """No history: no cap is ever reached, nothing was accepted before."""
        frame = pd.DataFrame({"customer_id": [], "offer_id": [], "ts": []})
        return cls(frame, frame)

    def at(self, now: datetime) -> ContactHistorySource:
        """The contact history of decisions at ``now``."""
        return _HistoryAt(self, epoch_us(now))

    def of(self, customer_id: str, since_us: int, now_us: int) -> ContactHistory | None:
        """The customer's contacts in ``[since_us, now_us)`` and acceptances before
        ``now_us``; None when there are neither."""
        contacts: dict[str, np.ndarray] = {}
        found = self._contacts.get(customer_id)
        if found is not None:
            offers, times = found
            keep = (times >= since_us) & (times < now_us)
            for offer in np.unique(offers[keep]).tolist():
                contacts[offer] = times[keep & (offers == offer)]
        accepted: frozenset[str] = frozenset()
        found = self._accepted.get(customer_id)
        if found is not None:
            offers, times = found
            accepted = frozenset(offers[times < now_us].tolist())
        if not contacts and not accepted:
            return None
        return ContactHistory(MappingProxyType(contacts), accepted)


def _by_customer(frame: pd.DataFrame, name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """customer -> (offer ids, times in epoch microseconds), each shape (k,)."""
    missing = {"customer_id", "offer_id", "ts"} - set(frame.columns)
    if missing:
        raise ValueError(f"`{name}` must have columns customer_id, offer_id, ts; lacks {missing}")
    frame = frame[frame["customer_id"].notna()]
    if frame.empty:
        return {}
    micros = epoch_micros(frame["ts"])
    offers = frame["offer_id"].astype(str).to_numpy(dtype=object)
    groups = pd.Series(frame["customer_id"].astype(str).to_numpy()).groupby(
        frame["customer_id"].astype(str).to_numpy()
    )
    return {str(c): (offers[idx], micros[idx]) for c, idx in groups.indices.items()}


@dataclass(frozen=True)
class _HistoryAt:
    """:class:`ContactHistorySource` of one time."""

    history: PointInTimeHistory
    now_us: int

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        since_us = epoch_us(since)
        out = {}
        for customer in dict.fromkeys(customer_ids):
            found = self.history.of(customer, since_us, self.now_us)
            if found is not None:
                out[customer] = found
        return out


@dataclass(frozen=True)
class Replay:
    """What deciding logged rounds again takes, beside the model and the policy.

    Attributes
    ----------
    catalog : Catalog
        The offers and touchpoints (values, weights, rules, caps, fallbacks).
    features : PointInTimeFeatures
        The rounds' customer features as of their times.
    history : PointInTimeHistory
    matrix : MatrixBuilder
        (customer, eligible offer) pairs -> model rows, in the model's encoding.
    """

    catalog: Catalog
    features: PointInTimeFeatures
    history: PointInTimeHistory
    matrix: MatrixBuilder


#: Builds the replay of the given logged rounds (one row per round: ``decision_id, ts,
#: customer_id, touchpoint_id`` and ``ctx_*`` columns) for the model of the given encoder.
ReplayBuilder = Callable[[pd.DataFrame, Encoder], Replay]


@dataclass(frozen=True)
class ServedRounds:
    """The served policy on logged rounds.

    Attributes
    ----------
    target : TargetPolicy
        Per round, every eligible offer (or the fallback served) with its probability of
        being served first and the model's P(accept) (0 where it has none).
    traces : mapping of decision_id -> DecisionTrace
        The pipeline's trace of each round's decision.
    policy : str
        The policy's name (e.g. ``softmax(temperature=0.02, floor=0.01)``).
    fallback : mapping of decision_id -> offer_id
        The fallback offer served first in rounds with nothing eligible.
    probabilistic : bool
        Whether the model's scores are probabilities (``target.q`` is 0 if not).
    """

    target: TargetPolicy
    traces: Mapping[str, DecisionTrace]
    policy: str
    fallback: Mapping[str, str]
    probabilistic: bool

    def under(self, policy: Policy) -> TargetPolicy:
        """The same rounds served by another policy: what each round finds eligible and
        their priorities do not depend on the policy (a replay records nothing and serves
        one position), only the probabilities of serving each offer first do."""
        return _first_position(self.traces, self.fallback, policy, self.probabilistic)


def served_rounds(
    logged: pd.DataFrame,
    replay: Replay,
    scorer: Scorer,
    model: ModelInfo,
    policy: Policy,
    *,
    probabilistic: bool = True,
    seed: int = 7,
) -> ServedRounds:
    """Decide every logged round again through the decision pipeline, as of its time.

    Parameters
    ----------
    logged : DataFrame, one row per round
        ``decision_id, ts, customer_id, touchpoint_id`` (customer None = anonymous) and
        the request context as ``ctx_<key>`` columns.
    replay : Replay
    scorer : recsys.scoring.Scorer
        The trained model as serving scores it (matrix -> P(accept)).
    model : ModelInfo
    policy : Policy
        The served policy (e.g. the service's ``Softmax(temperature=0.02, floor=0.01)``).
    probabilistic : bool
        Whether the model's scores are probabilities; if not, DR's reward model is 0.
    seed : int
        Seed of the pipeline's exploration draws (the probabilities do not depend on it).

    Raises
    ------
    DataError
        A round's touchpoint is not in the catalogue.
    """
    served_model = ServedModel(model, replay.matrix, MatrixScorer(scorer, model))
    arms = SingleArm(served_model, policy)
    known = set(replay.catalog.touchpoints)
    unknown = sorted(set(logged["touchpoint_id"]) - known)
    if unknown:
        raise DataError(
            f"logged rounds at touchpoints the catalogue lacks: {unknown[:5]}; the served "
            "policy cannot decide them"
        )
    requests = _requests(logged)
    decision_ids = logged["decision_id"].tolist()
    traces: dict[str, DecisionTrace] = {}
    fallback_first: dict[str, str] = {}
    micros = epoch_micros(logged["ts"])
    order = np.argsort(micros, kind="stable")
    for at in np.split(order, np.flatnonzero(np.diff(micros[order])) + 1):
        if not at.size:
            continue
        now = _EPOCH + timedelta(microseconds=int(micros[at[0]]))
        pipeline = DecisionPipeline(
            replay.catalog,
            replay.features.at(now),
            replay.history.at(now),
            None,
            arms,
            seed=seed,
            clock=_FixedClock(now),
        )
        batch = pipeline.run([requests[k] for k in at], now, trace=True, record=False)
        for i, k in enumerate(at.tolist()):
            trace = batch.traces[i]
            assert trace is not None  # asked for
            traces[decision_ids[k]] = trace
            start, end = batch.row_start[i], batch.row_start[i + 1]
            if trace.eligible == 0 and end > start:
                fallback_first[decision_ids[k]] = str(batch.offer_id[start])
    target = _first_position(traces, fallback_first, policy, probabilistic)
    logger.info(
        "served policy %s replayed on %d rounds (%d times), %.1f eligible offers per round",
        policy.name, len(traces), logged["ts"].nunique(),
        float(np.mean([t.eligible for t in traces.values()])) if traces else 0.0,
    )  # fmt: skip
    return ServedRounds(
        target, MappingProxyType(traces), policy.name, MappingProxyType(fallback_first),
        probabilistic,
    )  # fmt: skip


def _requests(logged: pd.DataFrame) -> list[DecisionRequest]:
    """The request of each logged round: its customer ("" when anonymous: the cold start),
    touchpoint and context, asking for the first position only."""
    ctx_cols = [c for c in logged.columns if c.startswith(CONTEXT_PREFIX)]
    keys = [c[len(CONTEXT_PREFIX) :] for c in ctx_cols]
    columns = logged[["customer_id", "touchpoint_id", *ctx_cols]]
    out = []
    for customer, touchpoint, *values in columns.itertuples(index=False, name=None):
        context = {k: v for k, v in zip(keys, values, strict=True) if not pd.isna(v)}
        out.append(
            DecisionRequest(
                customer_id="" if pd.isna(customer) else str(customer),
                touchpoint_id=str(touchpoint),
                context=MappingProxyType(context),
                limit=1,
            )
        )
    return out


def _first_position(
    traces: Mapping[str, DecisionTrace],
    fallback_first: Mapping[str, str],
    policy: Policy,
    probabilistic: bool,
) -> TargetPolicy:
    """Every round's eligible offers (in the trace's greedy order) with the policy's
    probability of serving each first, plus the fallback offer of rounds without any."""
    ids = list(traces)
    width = max((len(t.scores) for t in traces.values()), default=0)
    priority = np.full((len(ids), width), np.nan)
    p_accept = np.zeros((len(ids), width))
    eligible = np.zeros((len(ids), width), dtype=bool)
    offer = np.full((len(ids), width), None, dtype=object)
    for i, decision_id in enumerate(ids):
        parts = traces[decision_id].scores
        k = len(parts)
        priority[i, :k] = [s.priority for s in parts]
        p_accept[i, :k] = [s.p_accept for s in parts]
        offer[i, :k] = [s.offer_id for s in parts]
        eligible[i, :k] = True
    prob = policy.first_position_probabilities(priority, eligible)
    rows, cols = np.nonzero(eligible)
    decision = np.array(ids, dtype=object)[rows]
    q = p_accept[rows, cols] if probabilistic else np.zeros(rows.shape[0])
    fallback = list(fallback_first.items())
    return TargetPolicy(
        np.concatenate([decision, np.array([d for d, _ in fallback], dtype=object)]),
        np.concatenate([offer[rows, cols], np.array([o for _, o in fallback], dtype=object)]),
        np.concatenate([prob[rows, cols], np.ones(len(fallback))]),
        np.concatenate([q, np.zeros(len(fallback))]),
    )


__all__ = [
    "CONTEXT_PREFIX",
    "SERVED",
    "PointInTimeFeatures",
    "PointInTimeHistory",
    "Replay",
    "ReplayBuilder",
    "ServedRounds",
    "epoch_us",
    "served_rounds",
]
