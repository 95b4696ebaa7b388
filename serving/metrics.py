"""The service's Prometheus metrics (``GET /metrics``), in one registry per app.

Request latency histograms by route, method, status and touchpoint; decisions, offers served
and explored (explored share = explored / served), fallbacks by reason, the model version
being served, model swaps, catalogue swaps, circuit-breaker state, event ingestion (new, duplicate, rejected)
and event-log errors. With several uvicorn workers the exposition sums over the worker
processes (prometheus-client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from recsys.errors import EventLogUnavailable
from recsys.eventlog import Event, EventLog, EventWriteResult

if TYPE_CHECKING:
    from recsys.decision import Decision
    from recsys.eligibility import ContactHistory

logger = logging.getLogger(__name__)

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
        self.catalog_swaps = Counter(
            "recsys_catalog_swaps",
            "Looks at a changed catalogue source by result (swapped, refused, unreadable)",
            ["result"],
            registry=r,
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

    def catalog_swap(self, result: str) -> None:
        self.catalog_swaps.labels(result).inc()

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
        reason = exc.kind if isinstance(exc, EventLogUnavailable) else type(exc).__name__
        logger.warning("event log %s failed: %s", operation, reason)

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

    def decision_customers(self, decision_ids: Collection[str]) -> dict[str, str]:
        try:
            return self.inner.decision_customers(decision_ids)
        except Exception as exc:
            self._failed("decision_customers", exc)
            raise

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
