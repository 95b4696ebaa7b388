"""The one composition root: what a service process (and ``recsys score``, the benches and
the tests) decides with.

:func:`build_components` opens the real parts from the settings (catalogue, online store,
event log, model source) and hands them to :func:`assemble_components`, which wires the
decision pipeline: the online store behind :class:`ResilientFeatures`, the model held by a
:class:`ModelHolder` (registry alias, last good copy, popularity/rules fallback, breaker) and
the arm of each request resolved per batch by :class:`ExperimentArms` (running experiments
from the store, else the champion). The pipeline is rebuilt whole on each new catalogue
and swapped in by one assignment (:meth:`Components.use_catalog`, driven by
:class:`serving.catalogue.LiveCatalogue`). Tests call :func:`assemble_components` with small
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
from serving.catalogue import (
    CatalogRefused,
    CatalogueObserver,
    LiveCatalogue,
    Signal,
    new_unknown_rules,
    source_signal,
)
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
    #: Builds the whole pipeline on a catalogue (everything derived from it included).
    pipeline_on: Callable[[Catalog], DecisionPipeline] | None = None
    #: Raises CatalogRefused for a catalogue that must not be served (new, old).
    check_catalog: Callable[[Catalog, Catalog], None] | None = None
    #: Follows the catalogue's source (None: the catalogue never changes).
    catalogue: LiveCatalogue | None = None
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

    def use_catalog(self, catalog: Catalog) -> None:
        """Check ``catalog`` and swap in a pipeline built whole on it (one assignment: a
        batch decides on the old catalogue or the new, never a mix).

        Raises
        ------
        CatalogRefused
            See :meth:`try_catalog`; the served pipeline stays.
        """
        pipeline = self.try_catalog(catalog)
        self.arms.rebase(catalog)  # the old pipeline's batches keep the arms of theirs
        self.pipeline = pipeline

    def try_catalog(self, catalog: Catalog) -> DecisionPipeline:
        """The pipeline built whole on ``catalog``, checked (not served).

        Raises
        ------
        CatalogRefused
            Its rules name features the store lacks, or a trial decision with the served
            model fails.
        """
        if self.pipeline_on is None:
            raise CatalogRefused("this service was built without a way to change catalogues")
        if self.check_catalog is not None:
            self.check_catalog(catalog, self.catalog)
        pipeline = self.pipeline_on(catalog)
        try:  # also prepares the model's rows of every touchpoint before the first request
            trial_decisions(pipeline, self.holder.current.model)
        except Exception as exc:
            raise CatalogRefused(f"{type(exc).__name__}: {exc}") from exc
        return pipeline

    def decide(
        self, requests: Sequence[DecisionRequest], *, trace: bool = False, record: bool = True
    ) -> list[Decision]:
        """Decide and record ``requests`` now (what the HTTP routes call), observed.

        ``record=False`` is a preview: decided alike but not logged, so it is no contact
        (caps, training data and experiment readouts never see it), and not counted in the
        decision metrics (offers served) either; the HTTP metrics still see its request.
        """
        started = time.perf_counter()
        decisions = self.pipeline.run(requests, trace=trace, record=record).decisions()  # one read
        if self.observer is not None and record:
            seconds = time.perf_counter() - started
            for reason in dict.fromkeys(d.fallback_reason for d in decisions):
                mine = [d for d in decisions if d.fallback_reason == reason]
                self.observer.observe_decisions(mine, seconds, reason)
        return decisions

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()  # queued decisions are finished and logged first
        if self.catalogue is not None:
            self.catalogue.stop()
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
    name_features: Callable[[FeatureSource, Catalog], FeatureSource] | None = None,
    check_catalog: Callable[[Catalog, Catalog], None] | None = None,
    catalog_source: tuple[Path, Signal] | None = None,
    catalog_observer: CatalogueObserver | None = None,
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
    name_features : callable(FeatureSource, Catalog) -> FeatureSource, optional
        The feature source as a pipeline on that catalogue reads it (its rules' names).
    check_catalog : callable(new, old), optional
        Raises CatalogRefused for a new catalogue that must not be served.
    catalog_source : (path, signal), optional
        Where ``catalog`` was read from and the source's signal before it was read: the
        catalogue is followed from there (polled every ``serving.catalog_poll_seconds``).

    Raises
    ------
    NoChampion
        The followed alias names no version and ``start_without_model`` is off.
    """
    built: list[Components] = []
    resilient = ResilientFeatures(
        features, cold_start, probe_seconds=settings.online_store_probe_seconds
    )

    def trial(model: ServedModel) -> None:
        trial_decisions(built[0].pipeline, model)  # on the catalogue served now

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
        settings.serving.slate_policy(),
        catalog,
        experiment_store,
        poll_seconds=settings.serving.experiments_poll_seconds,
        make_holder=make_holder if isinstance(source, RegistrySource) else None,
        followed_alias=settings.model_alias,
        policy_parameters=settings.serving.policy_parameters(),
    )

    def pipeline_on(on: Catalog) -> DecisionPipeline:
        return DecisionPipeline(
            catalog=on,
            features=resilient if name_features is None else name_features(resilient, on),
            history=event_log,
            sink=event_log,
            arms=arms.for_catalog(on),
            seed=settings.seed,
            clock=clock,
            max_limit=settings.serving.max_limit,
        )

    components = Components(
        pipeline_on(catalog), holder, arms, event_log, settings, observer, closers,
        features=resilient, pipeline_on=pipeline_on, check_catalog=check_catalog,
    )  # fmt: skip
    built.append(components)
    if catalog_source is not None:
        components.catalogue = LiveCatalogue(
            catalog_source[0],
            catalog,
            catalog_source[1],
            components.use_catalog,
            settings.serving.catalog_poll_seconds,
            catalog_observer,
        )
    if not start:
        return components
    try:
        served = holder.start()
        arms.start_polling()
        if components.catalogue is not None:
            components.catalogue.start_polling()
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
    catalog_observer: CatalogueObserver | None = None,
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
    from features.online.source import DEFAULT_ALIASES, NamedFeatures
    from features.rule_features import unknown_rule_features
    from recsys.decision import MatrixScorer
    from serving.model import load_model_dir

    serving = settings.serving
    catalog_path = Path(serving.catalog_source or settings.warehouse_path)
    seen = source_signal(catalog_path)  # before the read: a write after it is seen
    catalog = load_catalog(catalog_path)
    served: list[Components] = []
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
            DecisionMatrixBuilder(served[0].catalog if served else catalog, encoding),
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

    def check_catalog(new: Catalog, old: Catalog) -> None:
        """Refuse a catalogue whose rules name features the online store's customers lack
        (rules already unknown in the served catalogue were logged at start)."""
        try:
            layout = store.store.layout()
        except Exception as exc:  # the store is down: its names cannot be checked now
            logger.warning("rule features of catalogue %s not checked: the online store does "
                           "not answer (%s)", new.version, type(exc).__name__)  # fmt: skip
            return
        if layout is None:
            return
        names = (*layout.numeric, *layout.text)
        unknown = new_unknown_rules(
            new, old, lambda c: unknown_rule_features(c, names, DEFAULT_ALIASES)
        )
        if unknown:
            raise CatalogRefused("; ".join(unknown))

    components = assemble_components(
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
        name_features=NamedFeatures,
        check_catalog=check_catalog,
        catalog_source=(catalog_path, seen),
        catalog_observer=catalog_observer,
    )
    served.append(components)
    return components
