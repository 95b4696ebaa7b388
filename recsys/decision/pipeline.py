"""The decision pipeline: the one path every decision takes (HTTP, batch HTTP, ``recsys
score``, offline evaluation of the served policy).

    requests -> arm -> candidates -> eligibility -> customer features -> decision matrix
             -> scores -> priority (P x value x weight) -> policy (slate + propensities)
             -> record

Batch only: a single request is a batch of one, and each request gets the decision it would
get alone at the same time. Everything the pipeline talks to is a port
(:mod:`recsys.decision.ports`), so it imports no web framework, no MLflow and no feature
pipeline; the composition root wires the real ones in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np

from recsys.arbitration import Draws, priorities
from recsys.catalog import Catalog, TouchpointOffers, now_utc, to_utc
from recsys.decision.ports import (
    Arm,
    ArmResolver,
    ContactHistorySource,
    DecisionSink,
    FeatureBlock,
    FeatureSource,
    Scores,
    ScoringRows,
    ServedModel,
)
from recsys.decision.rows import served_rows
from recsys.decision.trace import explain
from recsys.decision.types import (
    Decision,
    DecisionBatch,
    DecisionRequest,
    DecisionTrace,
    ModelInfo,
    concat,
    new_decision_ids,
)
from recsys.eligibility import (
    CHECKS,
    EMPTY_HISTORY,
    Eligibility,
    EligibilityCheck,
    EligibilityInput,
    check_eligibility,
)
from recsys.errors import DataError, SpecMismatchError

logger = logging.getLogger(__name__)


DEFAULT_MAX_LIMIT = 50
#: How often a decision that lost a race for a contact cap is decided again.
MAX_CAP_RETRIES = 2


@dataclass
class _Group:
    """The requests of one touchpoint and arm, decided together over its m candidates.

    Pairs are the (request, eligible offer) cells of the eligibility mask in row-major order:
    the model rows, request by request, offers in catalogue order.
    """

    offers: TouchpointOffers
    arm: Arm
    rows: list[int]  # positions in the request list
    features: FeatureBlock  # one row per request
    limits: np.ndarray  # (n,)
    eligibility: Eligibility
    pair_request: np.ndarray  # (p,)
    pair_offer: np.ndarray  # (p,)


class DecisionPipeline:
    """Decides which offers each request is shown; the only decision code there is.

    Parameters
    ----------
    catalog : Catalog
    features : FeatureSource
    history : ContactHistorySource
        Contacts across channels (usually the event log, which also is the sink).
    sink : DecisionSink or None
        Records decisions; None = nothing is recorded (dry runs, offline evaluation).
    arms : ArmResolver
        The arm (model and policy) of each request; ``SingleArm(model, policy)`` outside
        experiments.
    seed : int
        Base seed of exploration draws.
    clock : callable returning an aware datetime
    max_limit : int
        Largest ``limit`` a request may ask for.
    checks : tuple of EligibilityCheck
        The eligibility checks, in trace order (default: all registered).

    Raises
    ------
    ValueError
        If ``max_limit < 1``.
    """

    def __init__(
        self,
        catalog: Catalog,
        features: FeatureSource,
        history: ContactHistorySource,
        sink: DecisionSink | None,
        arms: ArmResolver,
        seed: int = 7,
        clock: Callable[[], datetime] = now_utc,
        max_limit: int = DEFAULT_MAX_LIMIT,
        checks: tuple[EligibilityCheck, ...] = CHECKS,
    ):
        if max_limit < 1:
            raise ValueError(f"`max_limit` must be >= 1, got {max_limit}")
        self.catalog = catalog
        self.features = features
        self.history = history
        self.sink = sink
        self.arms = arms
        self.seed = seed
        self.clock = clock
        self.max_limit = max_limit
        self.checks = checks
        self.caps: dict[str, tuple[int, int]] = {
            o.offer_id: (o.cap_per_customer, o.cap_window_days)
            for o in catalog.offers.values()
            if o.cap_per_customer is not None and o.cap_window_days is not None
        }
        self.cap_lookback_days = max((w for _, w in self.caps.values()), default=0)
        self._arm_caps: dict[
            tuple[int, ...], tuple[list[Catalog], dict[str, tuple[int, int]], int]
        ] = {}

    # ------------------------------------------------------------------ public

    def check_model(self, model: ServedModel) -> None:
        """Refuse a model trained on another feature spec than the store serves.

        Raises
        ------
        SpecMismatchError
        """
        _check_spec(model.info, self.features.spec_version())

    def run(
        self,
        requests: Sequence[DecisionRequest],
        now: datetime | None = None,
        *,
        trace: bool = False,
        record: bool = True,
        arms: ArmResolver | None = None,
    ) -> DecisionBatch:
        """Decide every request at one time, scoring them in one call per model.

        Parameters
        ----------
        requests : sequence of DecisionRequest
        now : aware datetime, optional
            Decision time; default the pipeline's clock.
        trace : bool
            Attach a :class:`DecisionTrace` to every decision.
        record : bool
            Record the decisions in the sink (contacts count toward caps from then on).
        arms : ArmResolver, optional
            Decide by these arms instead of the pipeline's (e.g. a candidate model's trial).

        Raises
        ------
        NotFoundError
            An unknown touchpoint.
        ValueError
            A ``limit`` outside 1..max_limit.
        """
        ts = to_utc(now if now is not None else self.clock())
        return self._run(tuple(requests), ts, trace, record, arms or self.arms, attempt=0)

    # ------------------------------------------------------------------ stages

    def _run(
        self,
        requests: tuple[DecisionRequest, ...],
        now: datetime,
        trace: bool,
        record: bool,
        arms: ArmResolver,
        attempt: int,
    ) -> DecisionBatch:
        self._validate(requests)
        now_us = int(now.timestamp() * 1_000_000)
        served_arms = list(arms.resolve(requests, now))
        # Shadow arms decide copies of their requests in the same groups and scoring calls;
        # their decisions are only logged (once: not again when a cap race is retried).
        shadows = list(arms.shadows(requests, now)) if record and attempt == 0 else []
        everything = requests + tuple(requests[i] for i, _ in shadows)
        all_arms = served_arms + [arm for _, arm in shadows]
        groups = self._groups(everything, all_arms, now, now_us)
        scores = self._score(groups, everything, now)
        parts = [
            self._decide_group(g, everything, s, now, now_us, trace)
            for g, s in zip(groups, scores, strict=True)
        ]
        position = {row: k for k, row in enumerate(r for g in groups for r in g.rows)}
        decided = concat(parts) if parts else DecisionBatch.empty(everything, now)
        batch = (
            decided.take([position[i] for i in range(len(requests))])
            if parts
            else DecisionBatch.empty(requests, now)
        )
        if record and self.sink is not None:
            shadow_decisions = [
                replace(d, shadow=True)
                for d in decided.take(
                    [position[i] for i in range(len(requests), len(everything))]
                ).decisions()
            ]
            caps, _ = self._caps_of(served_arms)
            batch = self._record(batch, trace, now, arms, attempt, caps, shadow_decisions)
        return batch

    def _caps_of(self, arms: Sequence[Arm]) -> tuple[dict[str, tuple[int, int]], int]:
        """The contact caps re-checked when decisions of ``arms`` are recorded, and how many
        days of contact history their eligibility needs.

        Caps: the catalogue's, or for an offer whose cap an arm's levers change, the loosest
        of them (each arm's own cap was applied by eligibility when it decided). Days: the
        longest cap window of any of their catalogues."""
        catalogs = {id(a.catalog): a.catalog for a in arms if a.catalog is not None}
        if not catalogs:
            return self.caps, self.cap_lookback_days
        key = tuple(sorted(catalogs))
        cached = self._arm_caps.get(key)
        if cached is not None:
            return cached[1], cached[2]
        if len(self._arm_caps) >= 64:  # arms' catalogues change with experiments: forget old
            self._arm_caps.clear()
        caps = dict(self.caps)
        days = self.cap_lookback_days
        for catalog in catalogs.values():
            for offer in catalog.offers.values():
                cap = (offer.cap_per_customer, offer.cap_window_days)
                days = max(days, cap[1] or 0)
                if cap[0] is None or cap[1] is None:
                    caps.pop(offer.offer_id, None)  # uncapped in one arm: not re-checked
                    continue
                have = caps.get(offer.offer_id)
                if have is not None and (cap[0] >= have[0] and cap[1] <= have[1]):
                    caps[offer.offer_id] = (cap[0], cap[1])
        # the catalogues are kept with their caps: their ids stay theirs while cached
        self._arm_caps[key] = (list(catalogs.values()), caps, days)
        return caps, days

    def _validate(self, requests: Sequence[DecisionRequest]) -> None:
        for request in requests:
            self.catalog.touchpoint(request.touchpoint_id)  # NotFoundError names it
            if request.limit is not None and not (1 <= request.limit <= self.max_limit):
                raise ValueError(f"`limit` must be in 1..{self.max_limit}, got {request.limit}")

    def _groups(
        self,
        requests: Sequence[DecisionRequest],
        arms: Sequence[Arm],
        now: datetime,
        now_us: int,
    ) -> list[_Group]:
        """Candidates and eligibility of every request, by touchpoint and arm."""
        if len(arms) != len(requests):
            raise DataError(
                f"the arm resolver must return one arm per request ({len(requests)}), "
                f"got {len(arms)}"
            )
        by_group: dict[tuple[str, Arm], list[int]] = {}
        for i, (request, arm) in enumerate(zip(requests, arms, strict=True)):
            by_group.setdefault((request.touchpoint_id, arm), []).append(i)
        customer_ids = list(dict.fromkeys(r.customer_id for r in requests))
        block = self.features.read(customer_ids)
        if block.ids != tuple(customer_ids):
            raise DataError(
                f"the feature source must return the customers asked for, in order "
                f"({len(customer_ids)} ids), got {len(block.ids)} ids"
            )
        if block.degraded is None:  # a stand-in block (store down) fits every model
            for model in {arm.model for arm in arms}:
                _check_spec(model.info, block.spec_version)
        at = {c: i for i, c in enumerate(customer_ids)}
        # Read even without caps: "already accepted" needs the history too. An arm's levers
        # may cap an offer over a longer window than the catalogue does.
        since = now - timedelta(days=max(self._caps_of(arms)[1], 1))
        histories = self.history.contact_history(customer_ids, since)
        groups = []
        for (tp_id, arm), rows in by_group.items():
            offers = (arm.catalog or self.catalog).for_touchpoint(tp_id)
            mine = [requests[i] for i in rows]
            features = block.take([at[r.customer_id] for r in mine])
            eligibility = check_eligibility(
                EligibilityInput(
                    offers=offers,
                    features=features,
                    histories=[histories.get(r.customer_id, EMPTY_HISTORY) for r in mine],
                    excludes=[r.exclude_offers for r in mine],
                    now_us=now_us,
                ),
                self.checks,
            )
            pair_request, pair_offer = np.nonzero(eligibility.mask)
            slots = offers.touchpoint.slots
            limits = [r.limit if r.limit is not None else min(slots, self.max_limit) for r in mine]
            groups.append(
                _Group(
                    offers=offers,
                    arm=arm,
                    rows=rows,
                    features=features,
                    limits=np.array(limits, dtype=np.int64),
                    eligibility=eligibility,
                    pair_request=pair_request,
                    pair_offer=pair_offer,
                )
            )
        return groups

    def _score(
        self, groups: list[_Group], requests: Sequence[DecisionRequest], now: datetime
    ) -> list[Scores]:
        """P(accept) of every pair of every group: one scorer call per model."""
        by_model: dict[ServedModel, list[int]] = {}
        for k, g in enumerate(groups):
            by_model.setdefault(g.arm.model, []).append(k)
        out: list[Scores | None] = [None] * len(groups)
        for model, members in by_model.items():
            rows = [self._rows(model, groups[k], requests, now) for k in members]
            matrix = rows[0].matrix if len(rows) == 1 else np.vstack([r.matrix for r in rows])
            scores = model.scorer.score(
                ScoringRows(
                    matrix,
                    np.concatenate([r.touchpoint_ids for r in rows]),
                    np.concatenate([r.offer_ids for r in rows]),
                )
            )
            p_accept = np.asarray(scores.p_accept, dtype=np.float64).reshape(-1)
            if p_accept.shape[0] != matrix.shape[0]:
                raise DataError(
                    f"scorer must return one score per row ({matrix.shape[0]}), "
                    f"got {p_accept.shape[0]}"
                )
            start = 0
            for k, r in zip(members, rows, strict=True):
                end = start + r.matrix.shape[0]
                out[k] = replace(scores, p_accept=p_accept[start:end])
                start = end
        return out  # type: ignore[return-value]

    def _rows(
        self, model: ServedModel, g: _Group, requests: Sequence[DecisionRequest], now: datetime
    ) -> ScoringRows:
        """Model rows of every (request, eligible offer) pair of a group, pair order."""
        contexts = [requests[i].context for i in g.rows]
        matrix = model.matrix.build(
            g.features, g.offers, contexts, now, g.pair_request, g.pair_offer
        )
        n_pairs = g.pair_request.shape[0]
        if matrix.shape[0] != n_pairs:
            raise DataError(
                f"decision matrix must have one row per pair ({n_pairs}), got {matrix.shape[0]}"
            )
        return ScoringRows(
            matrix,
            np.full(n_pairs, g.offers.touchpoint.touchpoint_id, dtype=object),
            g.offers.offer_ids[g.pair_offer],
        )

    def _decide_group(
        self,
        g: _Group,
        requests: Sequence[DecisionRequest],
        scores: Scores,
        now: datetime,
        now_us: int,
        trace: bool,
    ) -> DecisionBatch:
        """Priorities, slates (with exploration) and fallbacks of a group, as a batch."""
        offers, policy = g.offers, g.arm.policy
        p_accept = scores.p_accept
        n, m = g.eligibility.mask.shape
        value = offers.value[g.pair_offer]
        weight = offers.weight[g.pair_offer]
        pair_priority = priorities(p_accept, value, weight)
        priority = np.zeros((n, m))
        priority[g.pair_request, g.pair_offer] = pair_priority
        p_matrix = np.zeros((n, m))
        p_matrix[g.pair_request, g.pair_offer] = p_accept
        mine = [requests[i] for i in g.rows]
        draws = Draws(
            self.seed, [r.customer_id for r in mine], [r.touchpoint_id for r in mine], now_us
        )
        slates = policy.select(priority, g.eligibility.mask, g.limits, draws)
        rows = served_rows(offers, slates, g.limits, g.eligibility.allows_fallback, priority,
                           p_matrix, now_us)  # fmt: skip
        traces: tuple[DecisionTrace | None, ...] = (None,) * n
        if trace:
            start = rows.row_start
            traces = tuple(
                explain(offers, g.eligibility, i, priority, p_matrix,
                        rows.offer_id[start[i] : start[i + 1]], slates.explored[i],
                        slates.propensity[i], bool(rows.fallback[i]),
                        bool(g.features.cold_start[i]), policy, scores.model)
                for i in range(n)
            )  # fmt: skip
        # a stand-in for the model or the features marks every decision of the group
        reason = scores.fallback_reason or g.features.degraded
        return DecisionBatch(
            requests=tuple(mine),
            ts=now,
            model=[scores.model] * n,
            decision_id=new_decision_ids(n),
            channel=[offers.touchpoint.channel] * n,
            policy=[policy.name] * n,
            arm=[g.arm.name] * n,
            experiment_id=[g.arm.experiment_id] * n,
            fallback_reason=[reason] * n,
            fallback=rows.fallback | (reason is not None),
            cold_start=g.features.cold_start.copy(),
            n_candidates=np.full(n, m, dtype=np.int64),
            n_eligible=np.count_nonzero(g.eligibility.mask, axis=1).astype(np.int64),
            row_start=rows.row_start,
            offer_id=rows.offer_id,
            offer_name=rows.offer_name,
            score=rows.score,
            priority=rows.priority,
            value=rows.value,
            weight=rows.weight,
            propensity=rows.propensity,
            explored=rows.explored,
            traces=traces,
        )

    def _record(
        self,
        batch: DecisionBatch,
        trace: bool,
        now: datetime,
        arms: ArmResolver,
        attempt: int,
        caps: dict[str, tuple[int, int]],
        shadow_decisions: list[Decision],
    ) -> DecisionBatch:
        """Record decisions; decide again those that lost a race for a contact cap.

        The history was read at the start of the decision; the sink re-counts contacts of
        capped offers inside its write transaction and refuses decisions that would break a
        cap because another decision got there first. After ``MAX_CAP_RETRIES`` the refused
        requests are decided without any capped offer, so no cap can be broken.
        """
        assert self.sink is not None
        decisions = batch.decisions()
        last_resort = attempt > MAX_CAP_RETRIES
        refused = self.sink.record_decisions_within_caps(
            [*decisions, *shadow_decisions], {} if last_resort else caps
        )
        if not refused:
            return batch
        logger.info("%d decision(s) lost a race for a contact cap; deciding again", len(refused))
        redo_at = [i for i, d in enumerate(decisions) if d.decision_id in refused]
        redo = tuple(batch.requests[i] for i in redo_at)
        if attempt >= MAX_CAP_RETRIES:
            redo = tuple(replace(r, exclude_offers=(*r.exclude_offers, *caps)) for r in redo)
        again = self._run(redo, now, trace, True, arms, attempt + 1)
        return batch.replaced(redo_at, again)


def _check_spec(model: ModelInfo, store_spec: str) -> None:
    if model.feature_spec_version is not None and model.feature_spec_version != store_spec:
        raise SpecMismatchError(
            f"model {model.name} v{model.version} was trained on feature spec "
            f"{model.feature_spec_version!r} but the online store serves {store_spec!r}; "
            "rebuild features or retrain"
        )


__all__ = ["DEFAULT_MAX_LIMIT", "MAX_CAP_RETRIES", "DecisionPipeline"]
