"""Builds the FastAPI app: ``create_app()`` (uvicorn factory) or ``create_app(components=...)``.

Nothing is read at import. Without components the app loads them at startup from the
settings (catalogue, online store, champion model, event log) and closes them at shutdown.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from recsys.errors import RecsysError
from recsys.settings import ServingSettings, Settings, load_settings
from serving.api.routes import (
    admin,
    admin_catalog,
    admin_experiments,
    browser,
    decisions,
    events,
    experiment_results,
    health,
    offers,
    reports,
    touchpoints,
)
from serving.api_docs import install_docs
from serving.components import Components, build_components
from serving.connections import configure_connections
from serving.errors import install_error_handlers
from serving.limits import install_limits, rate_limiter
from serving.observability import MeteredEventLog, ServiceMetrics, install_observability
from serving.security import install_cors, install_security

logger = logging.getLogger(__name__)

DESCRIPTION = """
Next-best-offer decisions for every touchpoint, and the feedback that trains the next model.

* `POST /v1/decisions` — offers for one customer at one touchpoint (`?trace=true` explains).
* `POST /v1/decisions/batch` — the same for many customers (email campaigns).
* `POST /v1/events` — impressions, clicks, accepts, conversions, dismissals, complaints (idempotent).
* `GET /v1/offers`, `GET /v1/touchpoints` — the catalogue.
* `/client/recsys.js` (types: `/client/recsys.d.ts`) — the browser client; `/demo` its example
  page (development, `security.demo_enabled`).

Authorize with an API key (`X-API-Key`); publishable keys also send the customer's token
(`X-Customer-Token`). The request examples use the demo data of `make run`.

Errors are 4xx with `{"detail", "errors": [{"field", "expected", "received", "message"}]}`.
"""


def create_app(
    settings: Settings | None = None,
    components: Components | None = None,
    *,
    hardened: bool = True,
) -> FastAPI:
    """The decision service.

    Parameters
    ----------
    settings : optional
        The settings (:class:`recsys.settings.Settings`); default from the environment,
        read when called.
    components : optional
        Ready-made components (tests, embedding); they are not closed by the app.
    hardened : bool
        Keys and customer tokens, limits, CORS, metrics and JSON logs
        (:func:`install_hardening`), and, without components, the model lifecycle (registry
        alias followed, last good copy, popularity/rules fallback, circuit breaker).
        False only for benchmarks and embedding behind another gateway.
    """
    metrics = ServiceMetrics()
    # Read once, when the app is made (each uvicorn worker makes its own), never at import.
    loaded = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with served_components(app):
                yield
        finally:
            access_log = app.state.access_log
            if access_log is not None:
                access_log.close()  # write the queued access lines

    @asynccontextmanager
    async def served_components(app: FastAPI) -> AsyncIterator[None]:
        if components is not None:
            app.state.components = components
            configure_connections(components.serving)
            yield
            return
        try:
            built = build_components(
                loaded,
                observer=metrics if hardened else None,
                wrap_event_log=(lambda log: MeteredEventLog(log, metrics)) if hardened else None,
                catalog_observer=metrics if hardened else None,
            )
        except Exception as exc:
            # One clear line for the operator (StartupFailureFilter keeps uvicorn's copy of
            # the traceback out of the service's log); uvicorn then exits.
            reason = str(exc) if isinstance(exc, RecsysError) else f"{type(exc).__name__}: {exc}"
            logger.error("the decision service cannot start: %s", reason)
            raise
        app.state.components = built
        configure_connections(loaded.serving)
        tune_runtime(loaded.serving)
        built.holder.start_polling()
        try:
            yield
        finally:
            built.close()

    app = FastAPI(
        title="recsys decision service",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        # /docs and /redoc come from install_docs, with their files served here (offline)
        docs_url=None,
        redoc_url=None,
    )
    app.state.components = components
    app.state.access_log = None  # install_hardening sets the JSON access log
    app.state.authenticator = None  # and the key checks (serving.security)
    app.state.browser_full_response = False
    install_error_handlers(app)
    app.include_router(decisions.router)
    app.include_router(events.router)
    app.include_router(offers.router)
    app.include_router(touchpoints.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(admin_catalog.router)
    app.include_router(admin_experiments.router)
    app.include_router(experiment_results.router)
    app.include_router(reports.router)
    app.include_router(browser.router)
    install_docs(app)
    if hardened:
        install_hardening(app, loaded, metrics=metrics)
    return app


def tune_runtime(service: ServingSettings) -> None:
    """Process settings for serving once everything is loaded (each worker runs this).

    The decision thread and the event loop share one GIL: a shorter switch interval bounds
    how long a request waits for the loop behind a batch. ``gc.freeze`` moves everything
    start-up allocated (model, catalogue, libraries: millions of objects) out of the
    collector's generations, so a full collection walks only what requests allocate.
    """
    sys.setswitchinterval(service.switch_interval_ms / 1000)
    if service.freeze_startup_objects:
        gc.collect()
        gc.freeze()


def install_hardening(
    app: FastAPI, settings: Settings, *, metrics: ServiceMetrics | None = None
) -> ServiceMetrics:
    """Keys and tokens, rate/body/time limits, CORS, metrics and access logs, in order.

    The last layer added runs first: request id and metrics see every response (also
    401/413/429), CORS headers are on refusals too, the key is checked before the body is
    read (then the body is limited in size and time). The settings' ``security``, ``limits`` and ``observability``
    sections configure them.

    Raises
    ------
    ConfigError
        An unsafe setup (production without keys, ``*`` origins with credentials, ...).
    """
    # Limits first, so they run after the key check: an unauthenticated request is refused
    # from its head, before a byte of its body is read.
    install_limits(app, settings.limits)
    install_security(app, settings, rate_check=rate_limiter(settings.limits))
    install_cors(app, settings.security)
    return install_observability(app, settings.observability, metrics)


def run_server(settings: Settings) -> None:
    """Run the service with uvicorn, ``settings.serving.workers`` worker processes.

    Several workers are uvicorn's own ``workers`` option: its supervisor starts, watches and
    restarts them, and they share one listening socket. Each worker process builds the app
    from the environment (``serving.main:create_app`` as a factory), so settings given on
    the command line must be in the environment first (``recsys serve`` does that). For more
    than one host's worth, run replicas behind a load balancer (docs/operations.md).
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    serving = settings.serving
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
    # A failed start is one "cannot start" line (logged by the app), not a traceback.
    log_config.setdefault("filters", {})["startup"] = {"()": "serving.logs.StartupFailureFilter"}
    log_config["handlers"]["default"].setdefault("filters", []).append("startup")
    observability = settings.observability
    log_format = observability.log_format
    if log_format == "auto":
        log_format = "json" if settings.environment == "production" else "text"
    if log_format == "json":
        # One JSON object per line (request id, no secrets), uvicorn's own lines too.
        for formatter in ("app", "default", "access"):
            log_config["formatters"][formatter] = {"()": "serving.logs.JsonLogFormatter"}
    level = observability.log_level.upper()
    for name in ("recsys", "serving", "features"):
        log_config["loggers"][name] = {"handlers": ["app"], "level": level, "propagate": False}
    # mlflow draws a progress bar while it downloads the model: terminal noise in a log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if serving.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics sums over the worker processes (prometheus-client multiprocess mode).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recsys-metrics-")
    uvicorn.run(
        "serving.main:create_app",
        factory=True,
        host=serving.host,
        port=serving.port,
        workers=serving.workers,
        log_level="info",
        log_config=log_config,
        access_log=False,
        # header deadline, header size limit, connection cap (serving.connections)
        http="serving.connections:GuardedHttpProtocol",
        timeout_keep_alive=serving.keep_alive_seconds,
    )
