"""What the service runs on: catalogue, online store, model, event log, decision engine.

:func:`build_components` wires the real ones from settings (used by the app and by
``recsys score``); tests build a :class:`Components` from small real parts directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from recsys.arbitration import EpsilonGreedy
from recsys.catalog import Catalog, load_catalog
from recsys.decision import DecisionEngine, FeatureSource, ModelInfo
from recsys.errors import SpecMismatchError
from recsys.eventlog import EventLog, SQLiteEventLog, open_event_log
from recsys.settings import Settings
from serving.batching import DecisionBatcher
from serving.config import ServingSettings

logger = logging.getLogger(__name__)


@dataclass
class Components:
    """The running parts of one service process."""

    engine: DecisionEngine
    event_log: EventLog
    serving: ServingSettings = field(default_factory=ServingSettings)
    extras: dict[str, Any] = field(default_factory=dict)
    _batcher: DecisionBatcher | None = field(default=None, init=False, repr=False)

    @property
    def batcher(self) -> DecisionBatcher:
        """The decision thread of this process (started on first use, from the event loop)."""
        if self._batcher is None:
            self._batcher = DecisionBatcher(
                lambda: self.engine,
                max_batch=self.serving.decision_batch_max,
                wait_s=self.serving.decision_batch_wait_ms / 1000,
            )
        return self._batcher

    @property
    def catalog(self) -> Catalog:
        return self.engine.catalog

    @property
    def features(self) -> FeatureSource:
        return self.engine.features

    @property
    def model(self) -> ModelInfo:
        return self.engine.model

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()  # queued decisions are finished and logged first
        self.event_log.close()
        closer = getattr(self.engine.features, "close", None)
        if callable(closer):
            closer()


def open_service_event_log(url: str, serving: ServingSettings) -> EventLog:
    """The event log at ``url`` as the service writes it: a SQLite log is checkpointed by a
    background thread (``event_log_checkpoint_s``); else the commit that grows the WAL past
    1,000 pages checkpoints (copies, fsyncs) in a request, holding every worker's write lock.
    """
    event_log = open_event_log(url)
    if isinstance(event_log, SQLiteEventLog):
        event_log.checkpoint_in_background(serving.event_log_checkpoint_s)
    return event_log


def build_components(settings: Settings, serving: ServingSettings) -> Components:
    """Load catalogue, online store, champion model and event log; build the engine.

    Raises
    ------
    SpecMismatchError
        The champion was trained on another feature spec than the online store serves
        (logged clearly; the service does not start on a model it would feed wrong inputs).
    """
    from features.decision_matrix import DecisionMatrixBuilder as EncodedMatrixBuilder
    from features.matrix import Encoding
    from features.online import StoreFeatureSource, open_online_store
    from serving.lifecycle import compiled_model_dir, load_lifecycle_settings
    from serving.model import load_model_dir, load_registered_model

    catalog = load_catalog(serving.catalog_source or settings.warehouse_path)
    compiled_dir = compiled_model_dir(load_lifecycle_settings())
    if serving.model_dir is not None:
        loaded = load_model_dir(
            serving.model_dir, name=settings.model_name, compiled_dir=compiled_dir
        )
    else:
        loaded = load_registered_model(
            settings.mlflow_tracking_uri,
            settings.model_name,
            settings.model_alias,
            compiled_dir=compiled_dir,
        )
    if "encoding" not in loaded.spec:
        raise SpecMismatchError(
            f"model {loaded.info.name} v{loaded.info.version}: feature_spec.json must carry "
            "the model's `encoding` (features.matrix.Encoding), got none"
        )
    encoding = Encoding.from_dict(loaded.spec["encoding"])
    store = StoreFeatureSource(open_online_store(settings), catalog)
    event_log = open_service_event_log(settings.event_log_url, serving)
    try:
        engine = DecisionEngine(
            catalog=catalog,
            features=store,
            build_matrix=EncodedMatrixBuilder(catalog, encoding),
            scorer=loaded.scorer,
            model=loaded.info,
            history=event_log,
            sink=event_log,
            policy=EpsilonGreedy(serving.epsilon),
            seed=settings.seed,
            max_limit=serving.max_limit,
        )
    except SpecMismatchError as exc:
        logger.error(
            "refusing model %s v%s (feature spec %s): %s",
            loaded.info.name,
            loaded.info.version,
            loaded.info.feature_spec_version,
            exc,
        )
        event_log.close()
        store.close()
        raise
    logger.info(
        "serving %s v%s (feature spec %s), %s, policy %s",
        loaded.info.name,
        loaded.info.version,
        loaded.info.feature_spec_version,
        catalog,
        engine.policy.name,
    )
    return Components(engine=engine, event_log=event_log, serving=serving)
