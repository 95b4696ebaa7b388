"""How the tests wire the hardened app (what serving.main does in production)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from recsys.arbitration import EpsilonGreedy
from recsys.decision import DecisionEngine
from recsys.eventlog import EventLog
from recsys.settings import Settings
from serving.lifecycle import ModelHolder, install_lifecycle
from serving.main import install_hardening
from serving.model import LoadedModel
from serving.observability import ServiceMetrics
from tests.serving.factories import FixedClock, build_matrix


def engine_factory(
    catalog, features, log: EventLog, epsilon: float = 0.0, clock=None, scorer_wrapper=None
) -> Callable[[LoadedModel], DecisionEngine]:
    """The factories' matrix builder on a loaded model (what build_components does for real)."""

    def factory(loaded: LoadedModel) -> DecisionEngine:
        scorer = loaded.scorer if scorer_wrapper is None else scorer_wrapper(loaded.scorer)
        return DecisionEngine(
            catalog=catalog,
            features=features,
            build_matrix=build_matrix,
            scorer=scorer,
            model=loaded.info,
            history=log,
            sink=log,
            policy=EpsilonGreedy(epsilon),
            seed=7,
            clock=clock or FixedClock(),
        )

    return factory


def harden(
    app: FastAPI, settings: Settings, metrics: ServiceMetrics, holder: ModelHolder | None
) -> None:
    """The production layers (serving.main.install_hardening) and the model holder."""
    install_hardening(app, settings, metrics=metrics)
    if holder is not None:
        install_lifecycle(app, holder)
