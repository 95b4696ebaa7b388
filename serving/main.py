"""Builds the FastAPI app: ``create_app()`` (uvicorn factory) or ``create_app(components=...)``.

Nothing is read at import. Without components the app loads them at startup from the
settings (catalogue, online store, champion model, event log) and closes them at shutdown.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from recsys.errors import RecsysError
from recsys.settings import Settings, load_settings
from serving.api.routes import admin, decisions, events, health, offers, touchpoints
from serving.components import Components, build_components
from serving.config import ServingSettings, load_serving_settings
from serving.errors import install_error_handlers
from serving.lifecycle import (
    build_served_components,
    install_fault_handlers,
    load_lifecycle_settings,
)
from serving.limits import LimitSettings, install_limits, load_limit_settings, rate_limiter
from serving.observability import (
    MeteredEventLog,
    ObservabilitySettings,
    ServiceMetrics,
    install_observability,
    load_observability_settings,
)
from serving.security import (
    SecuritySettings,
    install_cors,
    install_security,
    load_security_settings,
)
from serving.workers import pin_to_claimed_core, reuse_port_supported, run_workers

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
    *,
    hardened: bool = True,
) -> FastAPI:
    """The decision service.

    Parameters
    ----------
    settings, serving : optional
        Core and service settings; default from the environment, read when called.
    components : optional
        Ready-made components (tests, embedding); they are not closed by the app.
    hardened : bool
        Keys and customer tokens, limits, CORS, metrics and JSON logs
        (:func:`install_hardening`), and, without components, the model lifecycle (registry
        alias followed, last good copy, popularity/rules fallback, circuit breaker).
        False only for benchmarks and embedding behind another gateway.
    """
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with served_components(app):
                yield
        finally:
            access_log = getattr(app.state, "access_log", None)
            if access_log is not None:
                access_log.close()  # write the queued access lines

    @asynccontextmanager
    async def served_components(app: FastAPI) -> AsyncIterator[None]:
        if components is not None:
            app.state.components = components
            yield
            return
        core = settings or load_settings()
        service = serving or load_serving_settings()
        holder = None
        try:
            if hardened:
                built, holder = build_served_components(
                    core,
                    service,
                    load_lifecycle_settings(),
                    observer=metrics,
                    wrap_event_log=lambda log: MeteredEventLog(log, metrics),
                )
            else:
                built = build_components(core, service)
        except RecsysError as exc:
            # One clear line for the operator; uvicorn then exits ("startup failed").
            logger.error("the decision service cannot start: %s", exc)
            raise
        app.state.components = built
        tune_runtime(service)
        if holder is not None:
            app.state.model_holder = holder
            holder.start_polling()
        try:
            yield
        finally:
            if holder is not None:
                holder.stop()
            built.close()

    app = ServiceApp(
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
    app.include_router(admin.router)
    if hardened:
        install_hardening(app, settings or load_settings(), metrics=metrics)
    return app


class ServiceApp(FastAPI):
    """FastAPI, with ``POST /v1/decisions`` split off before FastAPI's own layers.

    Every request of the hot route passes through the app's middleware (keys, limits,
    CORS, metrics, access log, the server-error layer) into
    :class:`serving.api.routes.decisions.DecisionLane`, not through FastAPI's exception
    telemetry, body-limit, exception, exit-stack and routing layers, which this route does
    not use: at 1,000 decisions/s those layers cost ~0.1 ms of event-loop CPU per request,
    and every 0.1 ms of CPU moves the tail latency by several ms (docs/serving.md). Every
    other request goes the usual way. The middleware is built twice from the same
    ``Middleware`` entries; its layers keep their state in the objects they are given
    (metrics, access log, authenticator, rate limiter), so both stacks share it.
    """

    def build_middleware_stack(self) -> ASGIApp:
        everything = super().build_middleware_stack()
        error_handler = None
        class_handlers = {}
        for key, handler in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = handler
            else:
                class_handlers[key] = handler
        lane: ASGIApp = decisions.DecisionLane(decisions.DECISION_ROUTE, class_handlers)
        for cls, args, kwargs in reversed(self.user_middleware):
            lane = cls(lane, *args, **kwargs)
        lane = ServerErrorMiddleware(lane, handler=error_handler, debug=self.debug)
        return HotRouteSplit(everything, lane, "POST", decisions.DECISION_ROUTE.path)


class HotRouteSplit:
    """ASGI: requests of one method and exact path to ``hot``, all others to ``everything``."""

    def __init__(self, everything: ASGIApp, hot: ASGIApp, method: str, path: str):
        self.everything = everything
        self.hot = hot
        self.method = method
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == self.method
            and _route_path(scope) == self.path
        ):
            await self.hot(scope, receive, send)
        else:
            await self.everything(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the routes see: without the ``root_path`` the app is mounted under."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def tune_runtime(service: ServingSettings) -> None:
    """Process settings for serving once everything is loaded (each worker runs this).

    The decision thread and the event loop share one GIL: a shorter switch interval bounds
    how long a request waits for the loop behind a batch. ``gc.freeze`` moves everything
    start-up allocated (model, catalogue, libraries: millions of objects) out of the
    collector's generations, so a full collection walks only what requests allocate.
    """
    sys.setswitchinterval(service.switch_interval_ms / 1000)
    core = pin_to_claimed_core()
    if core is not None:
        logger.info("worker %d runs on core %d", os.getpid(), core)
    if service.freeze_startup_objects:
        gc.collect()
        gc.freeze()


def install_hardening(
    app: FastAPI,
    core: Settings,
    *,
    security: SecuritySettings | None = None,
    limits: LimitSettings | None = None,
    observability: ObservabilitySettings | None = None,
    metrics: ServiceMetrics | None = None,
) -> ServiceMetrics:
    """Keys and tokens, rate/body/time limits, CORS, metrics and access logs, in order.

    The last layer added runs first: request id and metrics see every response (also
    401/413/429), CORS headers are on refusals too, the body is read (and limited) before
    a browser call's customer is checked. Settings default to the environment.

    Raises
    ------
    ConfigError
        An unsafe setup (production without keys, ``*`` origins with credentials, ...).
    """
    security = security or load_security_settings()
    limits = limits or load_limit_settings()
    install_security(app, security, core, rate_check=rate_limiter(limits))
    install_limits(app, limits)
    install_cors(app, security)
    metrics = install_observability(app, observability or load_observability_settings(), metrics)
    install_fault_handlers(app)
    return metrics


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
    observability = load_observability_settings()
    log_format = observability.log_format
    if log_format == "auto":
        log_format = "json" if load_settings().environment == "production" else "text"
    if log_format == "json":
        # One JSON object per line (request id, no secrets), uvicorn's own lines too.
        for formatter in ("app", "default", "access"):
            log_config["formatters"][formatter] = {"()": "serving.observability.JsonLogFormatter"}
    level = observability.log_level.upper()
    for name in ("recsys", "serving", "features"):
        log_config["loggers"][name] = {"handlers": ["app"], "level": level, "propagate": False}
    # mlflow draws a progress bar while it downloads the model: terminal noise in a log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if serving.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics sums over the worker processes (prometheus-client multiprocess mode).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="recsys-metrics-")
    options = {
        "factory": True,
        "host": serving.host,
        "port": serving.port,
        "workers": serving.workers,
        "log_level": "info",
        "log_config": log_config,
        "access_log": False,
    }
    if serving.workers > 1 and serving.reuse_port and reuse_port_supported():
        # Each worker on its own SO_REUSEPORT socket: connections spread over the workers.
        if serving.balance_connections:
            options["http"] = "serving.workers:BalancedHttpToolsProtocol"
        config = uvicorn.Config("serving.main:create_app", **options)
        run_workers(config, balance=serving.balance_connections, pin=serving.pin_workers)
    else:
        uvicorn.run("serving.main:create_app", **options)
