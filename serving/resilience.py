"""What keeps decisions flowing when a dependency fails: wrappers of the pipeline's ports.

- :class:`CircuitBreaker`: after ``failures`` consecutive failed or slow scorings the model
  rests for ``cooldown_seconds``; then one trial call goes to it again.
- :class:`ResilientScorer` (a :class:`~recsys.decision.PairScorer`): the model's scores, or the
  popularity/rules fallback's when the model fails or its breaker is open; the scores say
  which (``fallback_reason``), so the decisions are marked ``fallback``.
- :class:`PopularityScorer`: each offer's acceptance rate at the touchpoint (or overall)
  from the warehouse, else one prior rate (``rules``: priority = value x weight).
- :class:`ResilientFeatures` (a :class:`~recsys.decision.FeatureSource`): the online store's
  features, or every customer as a cold start (``degraded: features_down``) when it fails;
  a failed store is not read again until a background probe finds it answering.

Each wrapper implements the whole port it wraps; the pipeline never knows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys.catalog import TouchpointOffers
from recsys.decision import (
    FeatureBlock,
    FeatureSource,
    ModelInfo,
    PairScorer,
    Scores,
    ScoringRows,
)
from recsys.errors import SpecMismatchError

logger = logging.getLogger(__name__)

FALLBACK_MODEL_NAME = "fallback"
#: Beta prior of the popularity fallback's acceptance rate: mean 1 / (1 + 19) = 5 %.
POPULARITY_PRIOR = (1.0, 19.0)


class CircuitBreaker:
    """Opens after ``failures`` consecutive bad calls; half-opens after ``cooldown_seconds``.

    Parameters
    ----------
    failures : int
    slow_seconds : float
        A call slower than this counts as bad (it still returns its result).
    cooldown_seconds : float
    clock : callable returning monotonic seconds
    on_change : callable(bool), optional
        Told True when the breaker opens and False when it closes.
    """

    def __init__(
        self,
        failures: int,
        slow_seconds: float,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ):
        if failures < 1:
            raise ValueError(f"`failures` must be >= 1, got {failures}")
        self.failures = failures
        self.slow_seconds = slow_seconds
        self.cooldown_seconds = cooldown_seconds
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._bad = 0
        self._open_until: float | None = None
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """Whether the next call may use the model (one trial call after the cool-down)."""
        with self._lock:
            if self._open_until is None:
                return True
            if self.clock() >= self._open_until and not self._trial:
                self._trial = True
                return True
            return False

    def record(self, ok: bool, seconds: float) -> None:
        bad = (not ok) or seconds > self.slow_seconds
        changed: bool | None = None
        with self._lock:
            if not bad:
                self._bad = 0
                if self._open_until is not None:
                    self._open_until, self._trial, changed = None, False, False
            else:
                self._bad += 1
                if self._trial or (self._open_until is None and self._bad >= self.failures):
                    was_open = self._open_until is not None
                    self._open_until = self.clock() + self.cooldown_seconds
                    self._trial = False
                    changed = None if was_open else True
        if changed is None:
            return
        if changed:
            logger.error(
                "circuit breaker open: %d consecutive failed or slow scorings; serving the "
                "fallback for %.0f s",
                self.failures,
                self.cooldown_seconds,
            )
        else:
            logger.warning("circuit breaker closed: the model scores normally again")
        if self.on_change is not None:
            self.on_change(changed)


class PopularityScorer:
    """P(accept) = the offer's acceptance rate at the touchpoint, else overall, else a prior.

    Parameters
    ----------
    rates : mapping of (touchpoint_id, offer_id) or offer_id -> rate
        Empty: every offer gets the prior (the ``rules`` fallback).
    reason : str or None
        The ``fallback_reason`` its scores carry when it is the only model (``no_model``).
    """

    def __init__(
        self, rates: Mapping[tuple[str, str] | str, float], reason: str | None = "no_model"
    ):
        self.rates = dict(rates)
        self.prior = POPULARITY_PRIOR[0] / sum(POPULARITY_PRIOR)
        self.model = ModelInfo(FALLBACK_MODEL_NAME, "popularity" if rates else "rules", None)
        self.reason = reason

    def score(self, rows: ScoringRows) -> Scores:
        rates, prior = self.rates, self.prior
        p = [
            rates.get((tp, offer), rates.get(offer, prior))
            for tp, offer in zip(rows.touchpoint_ids.tolist(), rows.offer_ids.tolist(), strict=True)
        ]
        return Scores(np.array(p, dtype=np.float64), self.model, self.reason)


class NoMatrix:
    """The matrix of a model that reads no features (the fallback): zero columns."""

    def build(
        self,
        features: FeatureBlock,
        offers: TouchpointOffers,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        return np.zeros((pair_customer.shape[0], 0))


class ResilientScorer:
    """The model's scorer behind a circuit breaker, with the popularity fallback.

    A failing call (any exception) or an open breaker gives the fallback's scores, with
    ``fallback_reason`` ``model_error`` or ``breaker_open``.
    """

    def __init__(self, model: PairScorer, fallback: PopularityScorer, breaker: CircuitBreaker):
        self.inner = model
        self.fallback = fallback
        self.breaker = breaker

    def score(self, rows: ScoringRows) -> Scores:
        if not self.breaker.allow():
            return replace(self.fallback.score(rows), fallback_reason="breaker_open")
        started = time.perf_counter()
        try:
            scores = self.inner.score(rows)
        except Exception as exc:
            self.breaker.record(False, time.perf_counter() - started)
            logger.warning("model scoring failed (%s): serving the fallback", type(exc).__name__)
            return replace(self.fallback.score(rows), fallback_reason="model_error")
        self.breaker.record(True, time.perf_counter() - started)
        return scores


class ResilientFeatures:
    """The online store; while it fails, every customer is served as a cold start.

    One failed read (an error, or no answer within the store's own timeout: the one
    deadline a request spends on it) marks the store down. While it is down no request
    touches it: the cold start is built from memory, at once, and a background thread asks
    the store every ``probe_seconds`` whether it answers again (its spec version, with the
    same timeout); the first answer of the right spec brings it back. So a hung or absent
    store costs one request at most its timeout, and the service starts without it.

    Parameters
    ----------
    inner : FeatureSource
    cold_start : callable(customer_ids) -> FeatureBlock
        The cold-start block of some ids (no store read).
    probe_seconds : float
        How often a down store is asked again.
    """

    def __init__(
        self,
        inner: FeatureSource,
        cold_start: Callable[[Sequence[str]], FeatureBlock],
        probe_seconds: float = 1.0,
    ):
        self.inner = inner
        self.cold_start = cold_start
        self.probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._down_reason: str | None = None
        self._spec = cold_start([]).spec_version  # what this code computes
        self._prober: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def down_reason(self) -> str | None:
        """Why the store is not read now (None: it is)."""
        return self._down_reason

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        if self._down_reason is None:
            try:
                return self.inner.read(customer_ids)
            except Exception as exc:
                self.mark_down(type(exc).__name__)
        return replace(self.cold_start(customer_ids), degraded="features_down")

    def spec_version(self) -> str:
        """The store's spec version; while it is down, the last one known (or this code's)."""
        if self._down_reason is None:
            try:
                self._spec = self.inner.spec_version()
            except SpecMismatchError:
                raise
            except Exception as exc:
                self.mark_down(type(exc).__name__)
        return self._spec

    def mark_down(self, reason: str) -> None:
        """Stop reading the store and start asking it in the background whether it is back."""
        with self._lock:
            if self._down_reason is not None or self._stopped.is_set():
                return
            self._down_reason = reason
            logger.warning(
                "online store down (%s): serving cold starts, asking it again every %.1f s",
                reason,
                self.probe_seconds,
            )
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=self._probe_until_back, name="online-store-probe", daemon=True
                )
                self._prober.start()

    def _probe_until_back(self) -> None:
        while not self._stopped.wait(self.probe_seconds):
            try:
                spec = self.inner.spec_version()
            except SpecMismatchError as exc:
                reason = "SpecMismatchError"
                logger.error("online store answers again but is refused: %s", exc)
            except Exception as exc:
                reason = type(exc).__name__
            else:
                with self._lock:
                    self._spec, self._down_reason = spec, None
                logger.warning("online store answers again: reading features from it")
                return
            self._down_reason = reason

    def stop(self) -> None:
        """Stop the background probe (at shutdown)."""
        self._stopped.set()
        if self._prober is not None:
            self._prober.join()


def popularity_rates(warehouse_path: Path | None) -> dict[tuple[str, str] | str, float]:
    """Acceptance rate per (touchpoint, offer) and per offer from the warehouse; {} if none.

    rate = (accepted + a) / (shown + a + b) with the Beta prior :data:`POPULARITY_PRIOR`.
    """
    if warehouse_path is None or not Path(warehouse_path).is_file():
        return {}
    import duckdb

    a, b = POPULARITY_PRIOR
    query = f"""
        WITH shown AS (
            SELECT d.decision_id, d.offer_id, d.touchpoint_id,
                   max(CASE WHEN o.outcome IN ('accept', 'convert') THEN 1 ELSE 0 END) AS hit
            FROM decisions d LEFT JOIN outcomes o
              ON o.decision_id = d.decision_id AND o.offer_id = d.offer_id
            GROUP BY ALL)
        SELECT touchpoint_id, offer_id, (sum(hit) + {a}) / (count(*) + {a + b}) FROM shown
        GROUP BY ALL
        UNION ALL
        SELECT NULL, offer_id, (sum(hit) + {a}) / (count(*) + {a + b}) FROM shown GROUP BY ALL
    """
    try:
        con = duckdb.connect(str(warehouse_path), read_only=True)
        try:
            rows = con.execute(query).fetchall()
        finally:
            con.close()
    except Exception as exc:  # a locked or foreign file: the rules fallback still works
        logger.warning("popularity fallback: warehouse not readable (%s); using rules", exc)
        return {}
    rates: dict[tuple[str, str] | str, float] = {}
    for touchpoint_id, offer_id, rate in rows:
        rates[(touchpoint_id, offer_id) if touchpoint_id is not None else offer_id] = float(rate)
    return rates
