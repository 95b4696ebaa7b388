"""A hardened service following a registry alias, for the model fault tests (uvicorn
``--factory``, any number of workers), configured by env.

``RECSYS_EVENT_LOG_URL``, ``RECSYS_TEST_REGISTRY_URI`` (MLflow tracking URI of a registry
holding ``offer-ranker``), ``RECSYS_TEST_MODEL_CACHE`` (the model cache every worker shares),
``RECSYS_TEST_MODEL_POLL`` (seconds between alias checks). Keys as in production. Logs are
JSON lines on stderr.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from recsys.eventlog import open_event_log
from recsys.settings import LifecycleSettings, ObservabilitySettings, Settings
from serving.main import create_app
from serving.model_sources import RegistrySource
from serving.observability import MeteredEventLog, ServiceMetrics, configure_logging
from tests.serving.factories import make_components
from tests.serving.reliability.wiring import harden


def _now() -> datetime:
    return datetime.now(UTC)


def create() -> FastAPI:
    settings = Settings(
        environment="production", observability=ObservabilitySettings(log_format="json")
    )
    configure_logging(settings.observability, "production")
    metrics = ServiceMetrics()
    log = MeteredEventLog(open_event_log(os.environ["RECSYS_EVENT_LOG_URL"]), metrics)
    lifecycle = LifecycleSettings(
        model_cache_dir=Path(os.environ["RECSYS_TEST_MODEL_CACHE"]),
        model_poll_seconds=float(os.environ.get("RECSYS_TEST_MODEL_POLL", "1")),
        compiled_scorer=False,
    )
    components = make_components(
        log,
        settings=Settings(
            lifecycle=lifecycle, serving={"policy": "epsilon_greedy", "epsilon": 0.0}
        ),
        source=RegistrySource(os.environ["RECSYS_TEST_REGISTRY_URI"], "offer-ranker", "champion"),
        observer=metrics,
        clock=_now,
    )
    components.holder.start_polling()
    app = create_app(components=components, hardened=False)
    harden(app, settings, metrics)
    return app
