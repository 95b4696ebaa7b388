"""Request ids, latency metrics and access lines for every request; ``GET /metrics``.

- ``X-Request-ID``: taken from the request when well-formed (and not shaped like a key or
  token: a secret pasted there is never echoed or logged), else made; returned on every
  response, a 500 included, and put on every log line of the request.
- One latency observation per request (route, method, status; the touchpoint on the decision
  routes, which the routes put in the scope once they have validated the body:
  :func:`label_touchpoint`).
- One access line per request with the key id (never the key) and a keyed hash of the
  customer id (never the id).

Logs: :mod:`serving.logs`; metrics: :mod:`serving.metrics`.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.settings import ObservabilitySettings
from serving.errors import internal_error_response
from serving.logs import (
    AccessLog,
    CustomerHasher,
    JsonLogFormatter,
    RedactingFormatter,
    configure_logging,
    new_request_id,
    redact,
    request_id_var,
)
from serving.metrics import LATENCY_BUCKETS, MeteredEventLog, ServiceMetrics

__all__ = [
    "LATENCY_BUCKETS",
    "AccessLog",
    "CustomerHasher",
    "JsonLogFormatter",
    "MeteredEventLog",
    "ObservabilityMiddleware",
    "RedactingFormatter",
    "ServiceMetrics",
    "configure_logging",
    "install_observability",
    "label_touchpoint",
    "new_request_id",
    "redact",
    "request_id_var",
]

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DECISION_ROUTES = frozenset({"/v1/decisions", "/v1/decisions/batch"})
#: Scope key where a decision route puts the request's (catalogue) touchpoint, the label of
#: its latency.
TOUCHPOINT_LABEL = "recsys.touchpoint"


def label_touchpoint(request: Request, touchpoint: str) -> None:
    """Label this request's latency with ``touchpoint`` (a catalogue touchpoint: bounded)."""
    request.scope[TOUCHPOINT_LABEL] = touchpoint


class ObservabilityMiddleware:
    """Request id, latency histogram and one access log line per request (outermost layer)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics | None,
        hasher: CustomerHasher,
        access_log: AccessLog | None = None,
    ):
        self.app = app
        self.metrics = metrics
        self.hasher = hasher
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = (
            incoming
            if incoming and _REQUEST_ID.match(incoming) and redact(incoming) == incoming
            else new_request_id()
        )
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 500}
        decision_route = scope["path"] in DECISION_ROUTES and scope["method"] == "POST"

        started_response = {"sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                started_response["sent"] = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, not the client's: logged here (with this request's id); the client gets
            # the one error shape and the id to quote, never a traceback.
            logger.exception("unhandled error on %s %s", scope["method"], _route_template(scope))
            if started_response["sent"]:
                raise
            await internal_error_response()(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            touchpoint = ""
            if decision_route:
                # Set by the route once the body is valid and the touchpoint known.
                touchpoint = scope.get(TOUCHPOINT_LABEL) or "unknown"
            if self.metrics is not None:
                self.metrics.request_seconds.labels(
                    route, scope["method"], str(status["code"]), touchpoint
                ).observe(seconds)
            if self.access_log is not None:
                self._log(self.access_log, scope, route, status["code"], seconds, touchpoint)
            request_id_var.reset(token)

    def _log(
        self,
        access_log: AccessLog,
        scope: Scope,
        route: str,
        status: int,
        seconds: float,
        touchpoint: str,
    ) -> None:
        principal = (scope.get("state") or {}).get("principal")
        extra: dict[str, Any] = {
            "method": scope["method"],
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "request_id": request_id_var.get(),
        }
        if touchpoint:
            extra["touchpoint"] = touchpoint
        if principal is not None:
            extra["key_id"] = principal.key_id
            if principal.customer_id is not None:
                extra["customer_hash"] = self.hasher(principal.customer_id)
        level = logging.WARNING if status >= 500 else logging.INFO
        args = (scope["method"], route, status, seconds * 1000)
        access_log.add(level, time.time(), args, extra)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    if isinstance(route, Route | WebSocketRoute | Mount) and route.path:
        return route.path
    # Unmatched paths are not label values (a scanner would create one series per URL).
    return "unmatched"


def install_observability(
    app: FastAPI, settings: ObservabilitySettings, metrics: ServiceMetrics | None = None
) -> ServiceMetrics:
    """Add ``/metrics`` and the request-id/latency/access-log layer (the outermost; last)."""
    metrics = metrics or ServiceMetrics()
    hasher = CustomerHasher(
        settings.log_hash_key.get_secret_value().encode() if settings.log_hash_key else None
    )

    if settings.metrics_enabled:

        def metrics_endpoint(request: Request) -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

        app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    access_log = AccessLog(settings.access_log_flush_ms / 1000) if settings.access_log else None
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics if settings.metrics_enabled else None,
        hasher=hasher,
        access_log=access_log,
    )
    app.state.access_log = access_log  # closed (queued lines written) at shutdown
    app.state.metrics = metrics
    app.state.customer_hasher = hasher
    return metrics
