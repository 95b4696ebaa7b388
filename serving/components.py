"""The one composition root: what a service process (and ``recsys score``, the benches and
the tests) decides with.

:func:`build_components` opens the real parts from the settings (catalogue, online store,
event log, model source) and hands them to :func:`assemble_components`, which wires the
decision pipeline: the online store behind :class:`ResilientFeatures`, the model held by a
:class:`ModelHolder` (registry alias, last good copy, popularity/rules fallback, breaker) and
the arm of each request resolved per batch by :class:`ExperimentArms` (running experiments
from the store, else the champion). Tests call :func:`assemble_components` with small
real parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from experiments.definition import ModelRef
from experiments.store import ExperimentStore, open_experiment_store
from recsys.arbitration import EpsilonGreedy
from recsys.catalog import Catalog, load_catalog, now_utc
from recsys.decision import (
    Decision,
    DecisionBatch,
    DecisionPipeline,
    DecisionRequest,
    FeatureBlock,
    FeatureSource,
    ModelInfo,
    ServedModel,
    SingleArm,
)
from recsys.errors import ModelRefused, SpecMismatchError
from recsys.eventlog import EventLog, SQLiteEventLog, open_event_log
from recsys.settings import ServingSettings, Settings
from serving.batching import DecisionBatcher
from serving.experiment_arms import ExperimentArms, PinnedVersion
from serving.lifecycle import DecisionObserver, ModelHolder, ModelLoader
from serving.model_sources import (
    LocalDirSource,
    ModelSource,
    NoChampion,
    RegistrySource,
    compiled_model_dir,
)
from serving.resilience import PopularityScorer, ResilientFeatures, popularity_rates

logger = logging.getLogger(__name__)

#: The customer id of the trial decisions a candidate model must pass (never logged).
TRIAL_CUSTOMER = "__model_check__"


@dataclass
class Components:
    """The running parts of one service process."""

    pipeline: DecisionPipeline
    holder: ModelHolder
    arms: ExperimentArms
    event_log: EventLog
    settings: Settings
    observer: DecisionObserver | None = None
    closers: tuple[Callable[[], None], ...] = ()
    #: The online store as the pipeline reads it (its state is part of /readyz).
    features: ResilientFeatures | None = None
    _batcher: DecisionBatcher | None = field(default=None, init=False, repr=False)

    @property
    def batcher(self) -> DecisionBatcher:
        """The decision thread of this process (started on first use, from the event loop)."""
        if self._batcher is None:
            self._batcher = DecisionBatcher(
                self.decide,
                max_batch=self.serving.decision_batch_max,
                wait_s=self.serving.decision_batch_wait_ms / 1000,
            )
        return self._batcher

    @property
    def serving(self) -> ServingSettings:
        return self.settings.serving

    @property
    def catalog(self) -> Catalog:
        return self.pipeline.catalog

    @property
    def model(self) -> ModelInfo:
        return self.holder.current.model.info

    @property
    def policy_name(self) -> str:
        return self.arms.policy.name

    def decide(
        self, requests: Sequence[DecisionRequest], *, trace: bool = False, record: bool = True
    ) -> list[Decision]:
        """Decide and record ``requests`` now (what the HTTP routes call), observed.

        ``record=False`` is a preview: decided alike but not logged, so it is no contact
        (caps, training data and experiment readouts never see it), and not counted in the
        decision metrics (offers served) either; the HTTP metrics still see its request.
        """
        started = time.perf_counter()
        decisions = self.pipeline.run(requests, trace=trace, record=record).decisions()
        if self.observer is not None and record:
            seconds = time.perf_counter() - started
            for reason in dict.fromkeys(d.fallback_reason for d in decisions):
                mine = [d for d in decisions if d.fallback_reason == reason]
                self.observer.observe_decisions(mine, seconds, reason)
        return decisions

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()  # queued decisions are finished and logged first
        self.arms.stop()
        self.holder.stop()
        if self.features is not None:
            self.features.stop()
        self.event_log.close()
        for close in self.closers:
            close()


def open_service_event_log(url: str, serving: ServingSettings) -> EventLog:
    """The event log at ``url`` as the service writes it: a SQLite log is checkpointed by a
    background thread (``event_log_checkpoint_s``); else the commit that grows the WAL past
    1,000 pages checkpoints (copies, fsyncs) in a request, holding every worker's write lock.
    """
    event_log = open_event_log(url)
    if isinstance(event_log, SQLiteEventLog):
        event_log.checkpoint_in_background(serving.event_log_checkpoint_s)
    return event_log


def assemble_components(
    settings: Settings,
    catalog: Catalog,
    features: FeatureSource,
    cold_start: Callable[[Sequence[str]], FeatureBlock],
    event_log: EventLog,
    load_model: ModelLoader,
    source: ModelSource | None,
    *,
    rates: dict[tuple[str, str] | str, float] | None = None,
    observer: DecisionObserver | None = None,
    clock: Callable[[], datetime] = now_utc,
    closers: tuple[Callable[[], None], ...] = (),
    start: bool = True,
    experiment_store: ExperimentStore | None = None,
) -> Components:
    """Wire the pipeline on these parts and start the model holder (``start``).

    Parameters
    ----------
    cold_start : callable(customer_ids) -> FeatureBlock
        The block served while the online store is down.
    load_model : callable(path, version) -> ServedModel
    source : ModelSource or None
        Where the model comes from (None: the fallback only).
    rates : acceptance rates of the popularity fallback (empty: the rules fallback)
    experiment_store : ExperimentStore, optional
        Where running experiments are read from (polled every
        ``serving.experiments_poll_seconds``); None = no experiments.

    Raises
    ------
    NoChampion
        The followed alias names no version and ``start_without_model`` is off.
    """
    pipeline_ref: list[DecisionPipeline] = []
    resilient = ResilientFeatures(
        features, cold_start, probe_seconds=settings.online_store_probe_seconds
    )

    def trial(model: ServedModel) -> None:
        trial_decisions(pipeline_ref[0], model)

    holder = ModelHolder(
        load_model,
        trial,
        PopularityScorer(rates or {}),
        source,
        settings.lifecycle,
        settings.model_name,
        observer,
    )

    def make_holder(ref: ModelRef) -> ModelHolder:
        """A holder of an arm's model (another alias or a version of the registry)."""
        assert isinstance(source, RegistrySource)
        arm_source = (
            RegistrySource(source.tracking_uri, source.name, ref.alias)
            if ref.alias is not None
            else PinnedVersion(source, str(ref.version))
        )
        # its own name: its last good copy must never stand in for the champion's
        arm_holder = ModelHolder(load_model, trial, PopularityScorer(rates or {}), arm_source,
                                 settings.lifecycle, f"{settings.model_name}{ref.key}")  # fmt: skip
        try:
            served = arm_holder.start()
        except NoChampion:
            raise ModelRefused(f"model {ref.key} names no version of the registry") from None
        if served.is_fallback:
            raise ModelRefused(f"model {ref.key} is not servable: {arm_holder.last_error}")
        arm_holder.start_polling()
        return arm_holder

    arms = ExperimentArms(
        holder,
        EpsilonGreedy(settings.serving.epsilon),
        catalog,
        experiment_store,
        poll_seconds=settings.serving.experiments_poll_seconds,
        make_holder=make_holder if isinstance(source, RegistrySource) else None,
        followed_alias=settings.model_alias,
    )
    pipeline = DecisionPipeline(
        catalog=catalog,
        features=resilient,
        history=event_log,
        sink=event_log,
        arms=arms,
        seed=settings.seed,
        clock=clock,
        max_limit=settings.serving.max_limit,
    )
    pipeline_ref.append(pipeline)
    components = Components(
        pipeline, holder, arms, event_log, settings, observer, closers, features=resilient
    )
    if not start:
        return components
    try:
        served = holder.start()
        arms.start_polling()
    except BaseException:
        components.close()
        raise
    info = served.model.info
    logger.info("serving %s v%s (feature spec %s, %s), %s, policy %s", info.name, info.version,
                info.feature_spec_version, served.source, catalog,
                components.policy_name)  # fmt: skip
    return components


def trial_decisions(pipeline: DecisionPipeline, model: ServedModel) -> None:
    """Refuse a candidate model whose spec does not fit the store, or whose trial decision
    (one per touchpoint with offers, for an unknown customer, not recorded) fails or scores
    outside [0, 1].

    Raises
    ------
    SpecMismatchError, ModelRefused
    """
    pipeline.check_model(model)
    catalog = pipeline.catalog
    requests = [
        DecisionRequest(TRIAL_CUSTOMER, tp_id)
        for tp_id in sorted(catalog.touchpoints)
        if catalog.for_touchpoint(tp_id).offers
    ]
    if not requests:
        return
    arms = SingleArm(model, EpsilonGreedy(0.0))
    try:
        batch: DecisionBatch = pipeline.run(requests, record=False, arms=arms)
    except SpecMismatchError:
        raise
    except Exception as exc:
        raise ModelRefused(f"a trial decision failed: {type(exc).__name__}: {exc}") from exc
    scores = batch.score[~np.isnan(batch.score)]
    if scores.size and (not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1):
        raise ModelRefused("a trial decision scored outside [0, 1]")


def build_components(
    settings: Settings,
    observer: DecisionObserver | None = None,
    wrap_event_log: Callable[[EventLog], EventLog] | None = None,
) -> Components:
    """Open catalogue, online store, event log and model source from ``settings``; wire.

    A model that cannot be served (registry down, files damaged, another feature spec) never
    stops the start: last good local copy -> popularity/rules fallback; a followed alias that
    names no version does, unless ``lifecycle.start_without_model`` is on.

    Raises
    ------
    SpecMismatchError
        The online store holds features of another feature spec (run ``recsys features
        materialize``).
    NoChampion
    """
    from features.decision_matrix import DecisionMatrixBuilder
    from features.matrix import Encoding
    from features.online import StoreFeatureSource, open_online_store
    from recsys.decision import MatrixScorer
    from serving.model import load_model_dir

    serving = settings.serving
    catalog = load_catalog(serving.catalog_source or settings.warehouse_path)
    compiled_dir = compiled_model_dir(settings.lifecycle)

    def load_model(path: Path, version: str) -> ServedModel:
        loaded = load_model_dir(
            path,
            name=settings.model_name,
            version=version,
            compiled_dir=compiled_dir,
            check_timeout=settings.lifecycle.model_check_timeout_seconds,
        )
        if "encoding" not in loaded.spec:
            raise SpecMismatchError(
                f"model {loaded.info.name} v{loaded.info.version}: feature_spec.json must "
                "carry the model's `encoding` (features.matrix.Encoding), got none"
            )
        encoding = Encoding.from_dict(loaded.spec["encoding"])
        return ServedModel(
            loaded.info,
            DecisionMatrixBuilder(catalog, encoding),
            MatrixScorer(loaded.scorer, loaded.info),
        )

    source: ModelSource
    if serving.model_dir is not None:
        source = LocalDirSource(serving.model_dir)
    else:
        source = RegistrySource(
            settings.mlflow_tracking_uri, settings.model_name, settings.model_alias
        )
    store = StoreFeatureSource(
        open_online_store(settings, timeout_s=settings.online_store_timeout_ms / 1000), catalog
    )
    try:
        store.spec_version()  # a store of another feature spec is a deployment error: stop
    except SpecMismatchError as exc:
        logger.error("refusing the online store: %s", exc)
        store.close()
        raise
    except Exception as exc:  # down for now: served as cold starts until it answers
        logger.warning("the online store does not answer (%s): serving cold starts until it "
                       "does", type(exc).__name__)  # fmt: skip
    event_log = open_service_event_log(settings.event_log_url, serving)
    experiment_store: ExperimentStore | None = None
    try:
        experiment_store = open_experiment_store(settings.event_log_url)
    except Exception as exc:  # the service decides without experiments rather than not at all
        logger.error("experiment store unavailable (%s): serving without experiments",
                     type(exc).__name__)  # fmt: skip
    if wrap_event_log is not None:
        event_log = wrap_event_log(event_log)
    return assemble_components(
        settings,
        catalog,
        store,
        store.cold_start,
        event_log,
        load_model,
        source,
        rates=popularity_rates(settings.warehouse_path),
        observer=observer,
        closers=(store.close,),
        experiment_store=experiment_store,
    )
