"""A hardened service for the process-level tests (uvicorn ``--factory``), configured by env.

``RECSYS_EVENT_LOG_URL`` (sqlite:/// or postgresql://), ``RECSYS_TEST_MODEL_DIR`` (a model
folder), keys and token secret as in production (``RECSYS_SECURITY__API_KEYS`` ...). Logs are
JSON lines on stderr. The catalogue and features are the factories' small real ones; with
``RECSYS_TEST_REDIS_URL`` every feature read is a real round trip to that Redis first
(:class:`~tests.serving.factories.RedisBackedFeatures`, the service's timeout).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI

from recsys.eventlog import BACKENDS, open_event_log
from recsys.settings import LifecycleSettings, ObservabilitySettings, Settings
from serving.main import create_app
from serving.model_sources import LocalDirSource
from serving.observability import MeteredEventLog, ServiceMetrics, configure_logging
from tests.serving.factories import RedisBackedFeatures, make_components
from tests.serving.reliability.wiring import harden


def _now() -> datetime:
    return datetime.now(UTC)


def open_log(url: str):
    if url.startswith("postgresql") and "postgresql" not in BACKENDS:
        from recsys.eventlog_postgres import PostgresEventLog

        return PostgresEventLog.from_url(url)
    return open_event_log(url)


def create() -> FastAPI:
    settings = Settings(
        environment="production", observability=ObservabilitySettings(log_format="json")
    )
    configure_logging(settings.observability, "production")
    metrics = ServiceMetrics()
    log = MeteredEventLog(open_log(os.environ["RECSYS_EVENT_LOG_URL"]), metrics)
    lifecycle = LifecycleSettings(
        model_cache_dir=Path(os.environ["RECSYS_TEST_MODEL_DIR"]).parent / "cache",
        model_poll_seconds=0,
        compiled_scorer=False,
    )
    redis_url = os.environ.get("RECSYS_TEST_REDIS_URL")
    features = (
        RedisBackedFeatures(redis_url, timeout_s=settings.online_store_timeout_ms / 1000)
        if redis_url
        else None
    )
    components = make_components(
        log,
        features=features,
        settings=Settings(
            lifecycle=lifecycle,
            serving=settings.serving.model_copy(
                update={"policy": "epsilon_greedy", "epsilon": 0.0}
            ),
        ),
        source=LocalDirSource(Path(os.environ["RECSYS_TEST_MODEL_DIR"])),
        observer=metrics,
        clock=_now,
    )
    app = create_app(components=components, hardened=False)
    harden(app, settings, metrics)
    return app
