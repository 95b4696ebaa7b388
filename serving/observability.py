"""Metrics, structured logs and request ids.

- ``GET /metrics`` (Prometheus text format, prometheus-client): request latency histograms
  by route, method, status and touchpoint; decisions, offers served and explored (explored
  share = explored / served), fallbacks by reason, the model version being served, model
  swaps, circuit-breaker state, event ingestion (new, duplicate, rejected) and event-log
  errors. One registry per app, so several apps (tests) do not mix their numbers.
- JSON log lines (``ts``, ``level``, ``logger``, ``msg``, ``request_id`` and extra fields),
  one access line per request with the key id (never the key) and a keyed hash of the
  customer id (never the id). Anything shaped like an API key or a JWT is masked in every
  log line, whoever logged it.
- ``X-Request-ID``: taken from the request when well-formed, else made; returned on every
  response and put on every log line of the request.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.eventlog import Event, EventLog, EventWriteResult

if TYPE_CHECKING:
    from recsys.decision import Decision
    from recsys.eligibility import ContactHistory

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("serving.access")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "recsys_request_id", default=None
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Shapes of secrets that must never reach a log line, whoever logs them.
_SECRET_PATTERNS = (
    re.compile(r"rk_(?:pub|sec|adm)_[A-Za-z0-9_-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
)
LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)
DECISION_ROUTES = frozenset({"/v1/decisions", "/v1/decisions/batch"})
#: Scope key where a decision route puts the request's (catalogue) touchpoint, the label of
#: its latency; where none is put, the observability layer reads it from the body.
TOUCHPOINT_LABEL = "recsys.touchpoint"


class ObservabilitySettings(BaseSettings):
    """Logs and metrics (``RECSYS_SERVING_*``)."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", env_file=".env", extra="ignore")

    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto = json in production, text elsewhere"
    )
    log_level: str = "INFO"
    access_log: bool = True
    access_log_flush_ms: float = Field(
        default=200,
        ge=0,
        le=60_000,
        description="access lines are written in batches this often (0 = each at once)",
    )
    log_hash_key: SecretStr | None = Field(
        default=None,
        description="key of the customer-id hash in logs (same on every replica to correlate)",
    )
    metrics_enabled: bool = True


def load_observability_settings(**overrides: Any) -> ObservabilitySettings:
    return ObservabilitySettings(**{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------- logs


def redact(text: str) -> str:
    """``text`` with API keys and JWTs masked."""
    # Every secret shape starts with one of these: most lines skip the regular expressions.
    if "rk_" not in text and "eyJ" not in text:
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


class _RequestIds:
    """Request ids: a random 64-bit prefix per process and a counter, as 32 hex digits.

    Unique across processes and restarts (the prefix) without a system call per request,
    which ``uuid4`` makes. Ids only correlate log lines; they are not secrets.
    """

    def __init__(self) -> None:
        self.reset()
        # A forked child draws its own prefix (uvicorn spawns, other servers may fork).
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


new_request_id = _RequestIds()


class CustomerHasher:
    """Keyed hash of customer ids for logs: stable per key, not reversible without it."""

    def __init__(self, key: bytes | None = None):
        self._key = key or secrets.token_bytes(32)

    def __call__(self, customer_id: str) -> str:
        return hmac.new(
            self._key, customer_id.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()[:16]


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; secrets masked; the request id of the current request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """Plain text lines (development), secrets masked, request id appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        return f"{line} [request_id={request_id}]" if request_id else line


def configure_logging(settings: ObservabilitySettings, environment: str = "development") -> None:
    """Root logging for a service process (call at the entry point only)."""
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "json" if environment == "production" else "text"
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter()
        if fmt == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "recsys", "serving", "features"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


# ---------------------------------------------------------------------- metrics


class ServiceMetrics:
    """The service's Prometheus metrics, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._model_labels: tuple[str, str, str] | None = None
        r = self.registry
        self.request_seconds = Histogram(
            "recsys_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method", "status", "touchpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decision_seconds = Histogram(
            "recsys_decision_duration_seconds",
            "Time to decide (eligibility, scoring, arbitration, logging), per touchpoint",
            ["touchpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "recsys_decisions", "Decisions made", ["touchpoint", "fallback"], registry=r
        )
        self.offers_served = Counter(
            "recsys_offers_served", "Offers served in decisions", ["touchpoint"], registry=r
        )
        self.offers_explored = Counter(
            "recsys_offers_explored",
            "Offers served by exploration (explored share = explored / served)",
            ["touchpoint"],
            registry=r,
        )
        self.fallbacks = Counter(
            "recsys_fallback_decisions",
            "Decisions served by the popularity/rules fallback, by reason",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "recsys_model_info",
            "The model being served (value 1)",
            ["name", "version", "source"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_swaps = Counter(
            "recsys_model_swaps", "Model reload attempts by result", ["result"], registry=r
        )
        self.breaker_open = Gauge(
            "recsys_circuit_breaker_open",
            "1 while the model circuit breaker is open",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.events = Counter(
            "recsys_events_ingested", "Feedback events by result", ["type", "result"], registry=r
        )
        self.event_log_errors = Counter(
            "recsys_event_log_errors", "Event-log operations that failed", ["operation"], registry=r
        )

    # hooks called by the lifecycle and the event log wrapper

    def observe_decisions(
        self, decisions: Sequence[Decision], seconds: float, fallback_reason: str | None
    ) -> None:
        per_touchpoint: dict[str, list] = {}
        for d in decisions:
            per_touchpoint.setdefault(d.touchpoint_id, []).append(d)
        for touchpoint, items in per_touchpoint.items():
            self.decision_seconds.labels(touchpoint).observe(seconds)
            fallback = sum(1 for d in items if d.fallback)
            if fallback:
                self.decisions.labels(touchpoint, "true").inc(fallback)
            if len(items) - fallback:
                self.decisions.labels(touchpoint, "false").inc(len(items) - fallback)
            self.offers_served.labels(touchpoint).inc(sum(len(d.offers) for d in items))
            explored = sum(1 for d in items for o in d.offers if o.explored)
            if explored:
                self.offers_explored.labels(touchpoint).inc(explored)
        if fallback_reason is not None:
            self.fallbacks.labels(fallback_reason).inc(len(decisions))

    def model_changed(self, name: str, version: str, source: str) -> None:
        previous, self._model_labels = self._model_labels, (name, version, source)
        if previous is not None and previous != self._model_labels:
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                self.model_info.labels(*previous).set(0)  # no removal across processes
            else:
                self.model_info.remove(*previous)
        self.model_info.labels(name, version, source).set(1)

    def swap_attempt(self, result: str) -> None:
        self.model_swaps.labels(result).inc()

    def breaker(self, is_open: bool) -> None:
        self.breaker_open.set(1 if is_open else 0)

    def render(self) -> bytes:
        """The exposition; with several uvicorn workers (``PROMETHEUS_MULTIPROC_DIR`` set),
        the sum over all worker processes (gauges per process, label ``pid``)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MeteredEventLog(EventLog):
    """An event log that counts what it ingests and what fails; delegates everything."""

    def __init__(self, inner: EventLog, metrics: ServiceMetrics):
        self.inner = inner
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"MeteredEventLog({self.inner!r})"

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.metrics.event_log_errors.labels(operation).inc()
        logger.warning("event log %s failed: %s", operation, type(exc).__name__)

    def record_decisions(self, decisions: Sequence[Decision]) -> None:
        try:
            self.inner.record_decisions(decisions)
        except Exception as exc:
            self._failed("record_decisions", exc)
            raise

    def record_decisions_within_caps(
        self, decisions: Sequence[Decision], caps: Mapping[str, tuple[int, int]]
    ) -> set[str]:
        try:
            return self.inner.record_decisions_within_caps(decisions, caps)
        except Exception as exc:
            self._failed("record_decisions", exc)
            raise

    def record_events(self, events: Sequence[Event]) -> EventWriteResult:
        try:
            result = self.inner.record_events(events)
        except Exception as exc:
            self._failed("record_events", exc)
            raise
        types = {e.event_id: str(e.type) for e in events}
        for result_name, ids in (("new", result.new), ("duplicate", result.duplicates)):
            for event_id in ids:
                self.metrics.events.labels(types.get(event_id, "unknown"), result_name).inc()
        for rejection in result.rejected:
            self.metrics.events.labels(types.get(rejection.event_id, "unknown"), "rejected").inc()
        return result

    def contact_history(
        self, customer_ids: Sequence[str], since: datetime
    ) -> dict[str, ContactHistory]:
        try:
            return self.inner.contact_history(customer_ids, since)
        except Exception as exc:
            self._failed("contact_history", exc)
            raise

    def decision_rows(self) -> list[dict[str, Any]]:
        return self.inner.decision_rows()

    def outcome_rows(self) -> list[dict[str, Any]]:
        return self.inner.outcome_rows()

    def counts(self) -> dict[str, int]:
        return self.inner.counts()

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # backend extras (event_ids, path, ...)
        return getattr(self.inner, name)


# ------------------------------------------------------------------ access log


class AccessLog:
    """One access line per request, written in batches by a thread, off the request path.

    A request only appends a tuple; every ``flush_s`` a thread turns the queued lines into
    log records (the time, request id and fields of the request, not of the write) and
    hands them to the ``serving.access`` logger, so handlers, formats and levels apply as
    usual. Made one by one in a busy worker, with the decision work in between, a record
    cost ~55 us of event-loop CPU; in a batch it costs a fraction of that. Lines at
    WARNING (5xx) are written at once. :meth:`close` writes what is queued; a crash loses
    at most ``flush_s`` of access lines, never a decision or an event.

    Parameters
    ----------
    flush_s : float
        Seconds between writes; 0 writes every line at once (no thread).
    max_queued : int
        Lines kept while the writer is behind; past that, the oldest is dropped and the
        drop is counted and reported on the next write.
    """

    def __init__(self, flush_s: float = 0.2, max_queued: int = 100_000):
        if flush_s < 0:
            raise ValueError(f"`flush_s` must be >= 0, got {flush_s}")
        self.flush_s = flush_s
        self._queued: deque[tuple] = deque(maxlen=max_queued)
        self._dropped = 0
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, level: int, created: float, args: tuple, extra: dict[str, Any]) -> None:
        """Queue (or, at WARNING and above or without batching, write) one access line."""
        if not access_logger.isEnabledFor(level):
            return
        if level >= logging.WARNING or not self.flush_s:
            _write_access_line(level, created, args, extra)
            return
        if len(self._queued) == self._queued.maxlen:
            self._dropped += 1  # the deque drops the oldest line
        self._queued.append((level, created, args, extra))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is not None or self._stop.is_set():
                return  # started meanwhile, or closing (close writes the queue)
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> None:
        """Write every queued line now, in the order the requests finished."""
        with self._flush_lock:
            dropped, self._dropped = self._dropped, 0
            if dropped:
                logger.warning("access log: %d lines dropped (the writer fell behind)", dropped)
            while True:
                try:
                    line = self._queued.popleft()
                except IndexError:
                    return
                _write_access_line(*line)

    def close(self) -> None:
        """Stop the thread and write what is queued (a later line starts a new thread)."""
        with self._flush_lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
        self._stop.clear()


def _write_access_line(level: int, created: float, args: tuple, extra: dict[str, Any]) -> None:
    # The record is made here, not by ``Logger.log``: that walks the stack for the caller's
    # file and line, which an access line does not need.
    record = access_logger.makeRecord(
        access_logger.name, level, __file__, 0, "%s %s %d %.1fms", args, None, "access", extra
    )
    record.created = created
    record.msecs = (created - int(created)) * 1000
    access_logger.handle(record)


# ------------------------------------------------------------------- middleware


class ObservabilityMiddleware:
    """Request id, latency histogram and one access log line per request (outermost layer)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics | None,
        hasher: CustomerHasher,
        access_log: AccessLog | None = None,
        touchpoints: Any = None,
    ):
        self.app = app
        self.metrics = metrics
        self.hasher = hasher
        self.access_log = access_log
        self.touchpoints = touchpoints  # callable -> collection of known touchpoint ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else new_request_id()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 500}
        decision_route = scope["path"] in DECISION_ROUTES and scope["method"] == "POST"
        # POST /v1/decisions labels itself (TOUCHPOINT_LABEL); the batch route's body is read.
        sniff = decision_route and scope["path"] != "/v1/decisions"
        body_parts: list[bytes] = []

        async def observed_receive() -> Message:
            message = await receive()
            if sniff and message["type"] == "http.request" and len(body_parts) < 16:
                body_parts.append(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, observed_receive if sniff else receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            touchpoint = ""
            if decision_route:
                touchpoint = scope.get(TOUCHPOINT_LABEL) or (
                    self._touchpoint(body_parts) if sniff else "unknown"
                )
            if self.metrics is not None:
                self.metrics.request_seconds.labels(
                    route, scope["method"], str(status["code"]), touchpoint
                ).observe(seconds)
            if self.access_log is not None:
                self._log(self.access_log, scope, route, status["code"], seconds, touchpoint)
            request_id_var.reset(token)

    def _touchpoint(self, parts: list[bytes]) -> str:
        body = b"".join(parts)
        if not body or len(body) > 65_536:
            return "unknown"
        try:
            value = orjson.loads(body).get("touchpoint")
        except (orjson.JSONDecodeError, AttributeError):
            return "unknown"
        known = self.touchpoints() if self.touchpoints is not None else ()
        # Only catalogue touchpoints become label values (bounded cardinality).
        return value if isinstance(value, str) and value in known else "unknown"

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
    path = getattr(route, "path", None)
    if path:
        return path
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

    def touchpoints() -> Any:
        components = getattr(app.state, "components", None)
        return components.catalog.touchpoints if components is not None else ()

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
        touchpoints=touchpoints,
    )
    app.state.access_log = access_log  # closed (queued lines written) at shutdown
    app.state.metrics = metrics
    app.state.customer_hasher = hasher
    return metrics
