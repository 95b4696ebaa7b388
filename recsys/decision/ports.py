"""The ports of the decision pipeline: what it reads and writes, as types.

Each port has exactly the methods the pipeline calls. Wrappers (fallback, metering, circuit
breakers) implement the whole port they wrap, so the pipeline never probes what an object
can do.

- :class:`FeatureSource` -> :class:`FeatureBlock`: the customers' features as columns;
- :class:`ServedModel`: a model as served: its :class:`MatrixBuilder` ((customer, eligible
  offer) pairs -> model rows) and its :class:`Scorer` (rows -> P(accept)), swapped together;
- :class:`ContactHistorySource`: contacts across channels and accepted offers;
- :class:`DecisionSink`: records decisions, refusing those that lost a race for a cap;
- :class:`ArmResolver`: which arm (model and policy) each request is decided by;
- a clock: a callable returning an aware ``datetime``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from recsys.catalog import Catalog, TouchpointOffers
from recsys.decision.types import ModelInfo
from recsys.eligibility.base import ContactHistory

if TYPE_CHECKING:
    from recsys.arbitration.base import Policy
    from recsys.decision.types import Decision, DecisionRequest
    from recsys.scoring import Scorer  # loads every model library: for the type checker only

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class KeyStats:
    """Per-key statistics of one table (e.g. responses per offer) for many customers,
    flattened in customer order.

    Attributes
    ----------
    counts : ndarray of intp, shape (n,)
        Keys of each customer (0 for the cold start).
    keys : ndarray of object (str), shape (sum(counts),)
    values : ndarray of float64, shape (sum(counts), width)
        The statistics of each key, in the table's order.
    """

    counts: np.ndarray
    keys: np.ndarray
    values: np.ndarray

    def take(self, positions: np.ndarray) -> KeyStats:
        """The statistics of the customers at ``positions``, shape (k,)."""
        starts = np.cumsum(self.counts) - self.counts
        counts = self.counts[positions]
        first = np.cumsum(counts) - counts  # where each taken customer's entries start
        entries = np.arange(int(counts.sum())) + np.repeat(starts[positions] - first, counts)
        return KeyStats(counts, self.keys[entries], self.values[entries])


def _empty_text() -> Mapping[str, np.ndarray]:
    return MappingProxyType({})


@dataclass(frozen=True)
class FeatureBlock:
    """The features of many customers as columns, as the online store serves them.

    Unknown customers have the cold-start values in every column and ``cold_start`` set.

    Attributes
    ----------
    ids : tuple of str, shape (n,)
    numeric_names : tuple of str, shape (k,)
    numeric : ndarray of float64, shape (n, k)
        NaN = missing.
    text : mapping of name -> ndarray of object, shape (n,)
        Categorical features (str, None = missing).
    stats : mapping of table name -> KeyStats
        The per-key statistics behind the customer x offer crosses.
    as_of : ndarray of datetime64[us], shape (n,)
        When each vector was computed; NaT for the cold start.
    cold_start : ndarray of bool, shape (n,)
    spec_version : str
        The feature spec the values were computed with.
    aliases : mapping of name -> feature name
        Names the catalogue uses (rule features, consent columns) and the feature that
        holds them, e.g. ``loyalty_tier -> attr_loyalty_tier``.
    degraded : str or None
        Why the block stands in for the real features (e.g. ``features_down``: every
        customer served as a cold start); decisions from it are marked ``fallback``.
    """

    ids: tuple[str, ...]
    numeric_names: tuple[str, ...]
    numeric: np.ndarray
    text: Mapping[str, np.ndarray]
    stats: Mapping[str, KeyStats]
    as_of: np.ndarray
    cold_start: np.ndarray
    spec_version: str
    aliases: Mapping[str, str] = field(default_factory=_empty_text)  # type: ignore[arg-type]
    degraded: str | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.numeric.shape != (n, len(self.numeric_names)):
            raise ValueError(
                f"`numeric` must have shape ({n}, {len(self.numeric_names)}), "
                f"got {self.numeric.shape}"
            )
        for name, column in self.text.items():
            if column.shape != (n,):
                raise ValueError(f"text column {name!r} must have shape ({n},), got {column.shape}")
        if self.cold_start.shape != (n,) or self.as_of.shape != (n,):
            raise ValueError(
                f"`cold_start` and `as_of` must have shape ({n},), got "
                f"{self.cold_start.shape} and {self.as_of.shape}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _numeric_index(self) -> dict[str, int]:
        return {name: j for j, name in enumerate(self.numeric_names)}

    def has(self, name: str) -> bool:
        """Whether the block holds ``name`` (directly or through an alias)."""
        key = self.aliases.get(name, name)
        return key in self.text or key in self._numeric_index or name in self.text

    def column(self, name: str) -> np.ndarray:
        """Every customer's value of ``name``, shape (n,): float64 for a numeric feature
        (NaN = missing), object otherwise; all None when the block has no such feature."""
        for key in (name, self.aliases.get(name)):
            if key is None:
                continue
            if key in self.text:
                return self.text[key]
            j = self._numeric_index.get(key)
            if j is not None:
                return self.numeric[:, j]
        return np.full(len(self.ids), None, dtype=object)

    def take(self, positions: Sequence[int] | np.ndarray) -> FeatureBlock:
        """The customers at ``positions`` (repeats allowed), as a block."""
        idx = np.asarray(positions, dtype=np.intp)
        if idx.shape[0] == len(self.ids) and (idx == np.arange(len(self.ids))).all():
            return self  # every customer in order (frozen: sharing is safe)
        return FeatureBlock(
            ids=tuple(self.ids[i] for i in idx.tolist()),
            numeric_names=self.numeric_names,
            numeric=self.numeric[idx],
            text=MappingProxyType({k: v[idx] for k, v in self.text.items()}),
            stats=MappingProxyType({k: v.take(idx) for k, v in self.stats.items()}),
            as_of=self.as_of[idx],
            cold_start=self.cold_start[idx],
            spec_version=self.spec_version,
            aliases=self.aliases,
            degraded=self.degraded,
        )


class FeatureSource(Protocol):
    """The online feature store: the latest features of customers, by id."""

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        """The block of ``customer_ids`` (distinct), in that order; unknown customers get
        the cold start."""
        ...

    def spec_version(self) -> str:
        """The feature-spec version the store serves."""
        ...


class MatrixBuilder(Protocol):
    """(customer, eligible offer) pairs of one touchpoint -> model input rows."""

    def build(
        self,
        features: FeatureBlock,
        offers: TouchpointOffers,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        """Rows of the pairs: ``features`` row ``pair_customer[r]`` (with request context
        ``contexts[pair_customer[r]]``) x candidate ``pair_offer[r]`` of ``offers``.

        Shapes (p,) -> (p, n_features).
        """
        ...


@dataclass(frozen=True)
class ScoringRows:
    """Model rows and what each one is.

    Attributes
    ----------
    matrix : ndarray, shape (p, n_features)
    touchpoint_ids, offer_ids : ndarray of object (str), shape (p,)
    """

    matrix: np.ndarray
    touchpoint_ids: np.ndarray
    offer_ids: np.ndarray


@dataclass(frozen=True)
class Scores:
    """P(accept) of each row and who gave it: the model, or a fallback standing in for it
    (``fallback_reason`` says why: ``no_model``, ``model_error``, ``breaker_open``)."""

    p_accept: np.ndarray
    model: ModelInfo
    fallback_reason: str | None = None


class PairScorer(Protocol):
    """A model as the pipeline calls it: P(accept) of the rows of (request, offer) pairs.

    :class:`recsys.decision.MatrixScorer` makes one of a model flavour's scorer
    (:class:`recsys.scoring.Scorer`, matrix -> P(accept)); fallbacks implement it directly.
    """

    def score(self, rows: ScoringRows) -> Scores:
        """P(accept), shape (p,), of ``rows``."""
        ...


class MatrixScorer:
    """A model flavour's scorer (matrix -> P(accept)) as the pipeline's ``PairScorer``."""

    def __init__(self, scorer: Scorer, model: ModelInfo):
        self.scorer = scorer
        self.model = model

    def score(self, rows: ScoringRows) -> Scores:
        return Scores(self.scorer.score(rows.matrix), self.model)


@dataclass(frozen=True)
class ServedModel:
    """A model version as the pipeline serves it: how its rows are built and scored.

    The two are swapped together (a new model may have a new encoding)."""

    info: ModelInfo
    matrix: MatrixBuilder
    scorer: PairScorer


class ContactHistorySource(Protocol):
    """Contacts (served offers) across all channels and accepted offers, per customer."""

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]: ...


class DecisionSink(Protocol):
    """Where decisions are recorded (the event log); commits before returning."""

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        """Store the decisions that keep every contact cap (``offer_id -> (cap, window
        days)``, counted at write time); return the ids of the others."""
        ...


@dataclass(frozen=True, eq=False)
class Arm:
    """The recipe a request is decided by: a model, a policy and the catalogue it sees.

    ``experiment_id`` is None outside any experiment (the default arm). ``catalog`` is the
    catalogue with the arm's levers applied (offer weights, contact caps, excluded offers),
    None = the pipeline's. A ``shadow`` arm's decisions are logged but never served.
    Arms compare by identity: resolvers hand out the same object for the same recipe.
    """

    name: str
    model: ServedModel
    policy: Policy
    experiment_id: str | None = None
    catalog: Catalog | None = None
    shadow: bool = False


class ArmResolver(Protocol):
    """Which arm decides each request, and which shadow arms also decide it."""

    def resolve(self, requests: Sequence[DecisionRequest], now: datetime) -> Sequence[Arm]:
        """One arm per request, in request order, for decisions at ``now`` (an experiment's
        dates are checked against the decision time, not the wall clock)."""
        ...

    def shadows(
        self, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        """(position of a request, shadow arm) for every shadow decision to log besides
        the served ones (empty outside experiments with shadow arms)."""
        ...


@dataclass(frozen=True)
class SingleArm:
    """The default resolver: every request in one arm (one model with ``policy``)."""

    model: ServedModel
    policy: Policy
    name: str = "champion"

    def resolve(self, requests: Sequence[DecisionRequest], now: datetime) -> Sequence[Arm]:
        arm = Arm(self.name, self.model, self.policy)
        return [arm] * len(requests)

    def shadows(
        self, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        return ()
