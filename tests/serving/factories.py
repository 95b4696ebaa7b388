"""The service on small real parts: the decision pipeline's factories (tests.recsys) wired
by the service's own composition root (``serving.components.assemble_components``), with a
tiny LightGBM model loaded from a real model folder by the real loader."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.store import ExperimentStore
from recsys.catalog import Catalog
from recsys.decision import FeatureBlock, MatrixScorer, ServedModel
from recsys.eventlog import EventLog
from recsys.settings import Settings
from serving.catalogue import CatalogueObserver, Signal
from serving.components import Components, assemble_components
from serving.lifecycle import DecisionObserver, ModelLoader
from serving.model import load_model_dir
from serving.model_sources import LocalDirSource, ModelSource
from tests.recsys.factories import (
    COLD_START,
    COLUMNS,
    CUSTOMERS,
    NOW,
    OFFERS,
    SPEC_VERSION,
    TOUCHPOINTS,
    DictFeatureSource,
    FixedClock,
    TestMatrix,
    block_of,
    make_catalog,
    make_pipeline,
    tiny_model,
    tiny_scorer,
    train_tiny_model,
    write_model_dir,
)

__all__ = [
    "COLD_START",
    "COLUMNS",
    "CUSTOMERS",
    "NOW",
    "OFFERS",
    "SPEC_VERSION",
    "TOUCHPOINTS",
    "DictFeatureSource",
    "FixedClock",
    "TestMatrix",
    "cold_start_block",
    "load_test_model",
    "make_catalog",
    "make_components",
    "make_pipeline",
    "model_loader",
    "test_settings",
    "tiny_model",
    "tiny_scorer",
    "train_tiny_model",
    "write_model_dir",
]


def cold_start_block(customer_ids: Sequence[str]) -> FeatureBlock:
    """Every customer unknown (what the service serves while the store is down)."""
    return block_of(customer_ids, [COLD_START] * len(customer_ids),
                    [True] * len(customer_ids), SPEC_VERSION)  # fmt: skip


def load_test_model(path: Path, version: str) -> ServedModel:
    """A model folder loaded by serving's loader, with the factories' matrix builder."""
    return model_loader()(path, version)


def model_loader(scorer_wrapper: Callable[[Any], Any] | None = None) -> ModelLoader:
    """:func:`load_test_model`, the loaded scorer wrapped (e.g. to make it fail)."""

    def load(path: Path, version: str) -> ServedModel:
        loaded = load_model_dir(path, name="offer-ranker", version=version)
        scorer = loaded.scorer if scorer_wrapper is None else scorer_wrapper(loaded.scorer)
        return ServedModel(loaded.info, TestMatrix(), MatrixScorer(scorer, loaded.info))

    return load


_MODEL_DIR: Path | None = None


def tiny_model_dir() -> Path:
    """One folder with the tiny model for the whole test session."""
    global _MODEL_DIR
    if _MODEL_DIR is None:
        _MODEL_DIR = write_model_dir(Path(tempfile.mkdtemp(prefix="recsys-tiny-model-")))
    return _MODEL_DIR


def test_settings(epsilon: float | None = 0.0, **serving: Any) -> Settings:
    """Settings of a test service: no polling, no compiled scorer, caches in a temp dir;
    epsilon-greedy with ``epsilon`` (0: greedy, deterministic), None: the settings' policy
    (``serving.policy``, softmax by default)."""
    policy = {} if epsilon is None else {"policy": "epsilon_greedy", "epsilon": epsilon}
    return Settings(
        serving={**policy, **serving},
        lifecycle={
            "model_poll_seconds": 0,
            "compiled_scorer": False,
            "model_cache_dir": tempfile.mkdtemp(prefix="recsys-model-cache-"),
        },
    )


def make_components(
    log: EventLog,
    *,
    epsilon: float | None = 0.0,
    clock: Callable[[], datetime] | None = None,
    catalog: Catalog | None = None,
    features: DictFeatureSource | None = None,
    source: ModelSource | str | None = "tiny",
    settings: Settings | None = None,
    observer: DecisionObserver | None = None,
    rates: dict[tuple[str, str] | str, float] | None = None,
    load_model: ModelLoader | None = None,
    event_log: EventLog | None = None,
    start: bool = True,
    experiment_store: ExperimentStore | None = None,
    catalog_source: tuple[Path, Signal] | None = None,
    catalog_observer: CatalogueObserver | None = None,
    **serving: Any,
) -> Components:
    """The service's components on small real parts (``source=None``: no model at all)."""
    if source == "tiny":
        source = LocalDirSource(tiny_model_dir())
    assert not isinstance(source, str)
    return assemble_components(
        settings or test_settings(epsilon, **serving),
        catalog or make_catalog(),
        features or DictFeatureSource(),
        cold_start_block,
        event_log or log,
        load_model or load_test_model,
        source,
        rates=rates,
        observer=observer,
        clock=clock or FixedClock(),
        start=start,
        experiment_store=experiment_store,
        catalog_source=catalog_source,
        catalog_observer=catalog_observer,
    )


class RedisBackedFeatures(DictFeatureSource):
    """The factories' vectors, read only after a real round trip to a Redis server.

    Every read and spec check goes through a :class:`~features.online.RedisOnlineStore` with
    the service's timeout and no retries, so a stopped, paused or absent server fails (or
    stalls) exactly as the production store does; the vectors themselves are the
    factories' (the tiny model's spec).
    """

    def __init__(self, url: str, timeout_s: float = 0.25):
        from features.online import RedisOnlineStore

        super().__init__()
        self.store = RedisOnlineStore(url, prefix="faults:features", timeout_s=timeout_s)
        self.reads = 0  # round trips asked of the server

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        self.reads += 1
        self.store.read_block(customer_ids)
        return super().read(customer_ids)

    def spec_version(self) -> str:
        self.reads += 1
        self.store.spec_version()
        return super().spec_version()
