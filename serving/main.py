"""Builds the FastAPI app: ``create_app()`` (uvicorn factory) or ``create_app(components=...)``.

Nothing is read at import. Without components the app loads them at startup from the
settings (catalogue, online store, champion model, event log) and closes them at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from recsys.errors import RecsysError
from recsys.settings import Settings, load_settings
from serving.api.routes import decisions, events, health, offers, touchpoints
from serving.components import Components, build_components
from serving.config import ServingSettings, load_serving_settings
from serving.errors import install_error_handlers

logger = logging.getLogger(__name__)

DESCRIPTION = """
Next-best-offer decisions for every touchpoint, and the feedback that trains the next model.

* `POST /v1/decisions` — offers for one customer at one touchpoint (`?trace=true` explains).
* `POST /v1/decisions/batch` — the same for many customers (email campaigns).
* `POST /v1/events` — impressions, clicks, accepts, conversions, dismissals (idempotent).
* `GET /v1/offers`, `GET /v1/touchpoints` — the catalogue.

Errors are 4xx with `{"detail", "errors": [{"field", "expected", "received", "message"}]}`.
"""


def create_app(
    settings: Settings | None = None,
    serving: ServingSettings | None = None,
    components: Components | None = None,
) -> FastAPI:
    """The decision service.

    Parameters
    ----------
    settings, serving : optional
        Core and service settings; default from the environment, read when called.
    components : optional
        Ready-made components (tests, embedding); they are not closed by the app.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if components is not None:
            app.state.components = components
            yield
            return
        core = settings or load_settings()
        service = serving or load_serving_settings()
        try:
            built = build_components(core, service)
        except RecsysError as exc:
            # One clear line for the operator; uvicorn then exits ("startup failed").
            logger.error("the decision service cannot start: %s", exc)
            raise
        app.state.components = built
        try:
            yield
        finally:
            built.close()

    app = FastAPI(
        title="recsys decision service",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.components = components
    install_error_handlers(app)
    app.include_router(decisions.router)
    app.include_router(events.router)
    app.include_router(offers.router)
    app.include_router(touchpoints.router)
    app.include_router(health.router)
    return app


def run_server(serving: ServingSettings) -> None:
    """Run the service with uvicorn; each worker process builds the app from the environment."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # uvicorn applies this in every worker process: our loggers (recsys.*, serving.*,
    # features.*) print there too, in the same format as uvicorn's own lines.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["formatters"]["app"] = {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    log_config["handlers"]["app"] = {
        "formatter": "app",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    for name in ("recsys", "serving", "features"):
        log_config["loggers"][name] = {"handlers": ["app"], "level": "INFO", "propagate": False}
    uvicorn.run(
        "serving.main:create_app",
        factory=True,
        host=serving.host,
        port=serving.port,
        workers=serving.workers,
        log_level="info",
        log_config=log_config,
        access_log=False,
    )
