"""The model a service process serves, and what it does when the model cannot be used.

- :class:`ModelHolder` holds the decision engine of the current model and swaps it
  atomically (one attribute assignment: a request in flight keeps the engine it started
  with). It follows a registry alias by polling (``model_poll_seconds``) and on demand
  (``POST /admin/model/reload``). A candidate that fails to load, whose feature spec does
  not match the online store, or whose trial decision fails or scores outside [0, 1], is
  refused: the previous model stays and the refusal is logged and counted.
- Every model accepted from the registry is kept in ``model_cache_dir`` with a
  ``last_good.json`` pointer; when the registry is unreachable at start, the last good
  local copy is served (``source: cache``).
- No model at all: a popularity/rules fallback (acceptance rate per offer from the
  warehouse's decisions and outcomes, else value x weight), responses ``fallback: true``,
  status 200, ``model: {name: "fallback", version: "popularity"|"rules"}``.
- Circuit breaker: after ``breaker_failures`` consecutive failed or slow
  (> ``breaker_slow_ms``) scorings the fallback serves for ``breaker_cooldown_seconds``;
  then one trial request goes to the model again (closed on success, open again on failure).
- Online store down: decisions as for an unknown customer from the fallback (no consent is
  known, so consent-gated channels get nothing), ``fallback: true``.
- Event log down, locked or full: 503 with ``Retry-After`` (a decision is never served
  without being logged; events are never acknowledged without a commit).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recsys.arbitration import EpsilonGreedy
from recsys.catalog import Catalog, Offer, Touchpoint
from recsys.decision import Decision, DecisionEngine, DecisionRequest, ModelInfo
from recsys.errors import NotFoundError, SpecMismatchError
from recsys.eventlog import EventLog
from serving.model import LoadedModel, load_model_dir

logger = logging.getLogger(__name__)

FALLBACK_MODEL_NAME = "fallback"
#: Beta prior of the popularity fallback's acceptance rate: mean 1 / (1 + 19) = 5 %.
POPULARITY_PRIOR = (1.0, 19.0)
LAST_GOOD = "last_good.json"
TRIAL_CUSTOMER = "__model_check__"


class LifecycleSettings(BaseSettings):
    """Model following, cache and circuit breaker (``RECSYS_SERVING_*``)."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", env_file=".env", extra="ignore")

    model_cache_dir: Path = Field(
        default=Path("data/model_cache"), description="last good copies of registry models"
    )
    compiled_scorer: bool = Field(
        default=True,
        description="score with the model compiled to native code (lleaves), checked against "
        "LightGBM at load; binaries cached under model_cache_dir/compiled",
    )
    model_poll_seconds: float = Field(
        default=30.0, ge=0, description="how often to check the registry alias; 0 = never"
    )
    breaker_failures: int = Field(default=5, ge=1, description="consecutive bad scorings to open")
    breaker_slow_ms: float = Field(default=250.0, gt=0, description="a scoring slower is bad")
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    start_without_model: bool = Field(
        default=False,
        description="when the registry has no model under the alias: serve the popularity/"
        "rules fallback until one is promoted (default: refuse to start, it is a setup error)",
    )


def load_lifecycle_settings(**overrides: Any) -> LifecycleSettings:
    return LifecycleSettings(**{k: v for k, v in overrides.items() if v is not None})


def compiled_model_dir(settings: LifecycleSettings) -> Path | None:
    """Where compiled models are cached, or None when compiled scoring is off."""
    return Path(settings.model_cache_dir) / "compiled" if settings.compiled_scorer else None


class ModelUnavailable(Exception):
    """The model failed to score (the request is served by the fallback)."""


class FeaturesUnavailable(Exception):
    """The online feature store failed (the request is served as a cold start)."""


class ModelRefused(Exception):
    """A candidate model cannot be served; the previous model stays."""


class NoChampion(NotFoundError):
    """The registry answers, and the followed alias names no model version."""


# ------------------------------------------------------------------ circuit breaker


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
        if changed is not None:
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


class GuardedScorer:
    """A model's scorer behind the circuit breaker: failures become :class:`ModelUnavailable`."""

    def __init__(self, inner: Any, breaker: CircuitBreaker):
        self.inner = inner
        self.breaker = breaker

    @property
    def num_threads(self) -> int:
        return getattr(self.inner, "num_threads", 1)

    @num_threads.setter
    def num_threads(self, value: int) -> None:
        self.inner.num_threads = value

    def score(self, matrix: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            scores = self.inner.score(matrix)
        except Exception as exc:
            self.breaker.record(False, time.perf_counter() - started)
            logger.warning("model scoring failed: %s", type(exc).__name__)
            raise ModelUnavailable(f"the model failed to score: {type(exc).__name__}") from exc
        self.breaker.record(True, time.perf_counter() - started)
        return scores


class GuardedFeatures:
    """The online store: a failure becomes :class:`FeaturesUnavailable` (served cold)."""

    def __init__(self, inner: Any):
        self.inner = inner

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        try:
            return self.inner.get_many(customer_ids)
        except Exception as exc:
            logger.warning("online store read failed: %s", type(exc).__name__)
            raise FeaturesUnavailable(f"online store failed: {type(exc).__name__}") from exc

    def spec_version(self) -> str:
        try:
            return self.inner.spec_version()
        except Exception as exc:
            raise FeaturesUnavailable(f"online store failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()


# ------------------------------------------------------------------ fallback engine


class ColdStartFeatures:
    """Every customer unknown: what the fallback sees while the online store is down."""

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {c: {"is_cold_start": True} for c in customer_ids}

    def spec_version(self) -> str:
        return "cold-start"


class PopularityMatrix:
    """One column: each offer's acceptance rate at the touchpoint (or overall), else a prior."""

    def __init__(self, rates: dict[tuple[str, str] | str, float], prior: float):
        self.rates = rates
        self.prior = prior

    def __call__(
        self,
        customer_vector: Any,
        offers: Sequence[Offer],
        touchpoint: Touchpoint,
        context: Any,
        now: datetime,
    ) -> np.ndarray:
        rates = self.rates
        tp = touchpoint.touchpoint_id
        return np.array(
            [[rates.get((tp, o.offer_id), rates.get(o.offer_id, self.prior))] for o in offers],
            dtype=np.float64,
        ).reshape(len(offers), 1)


class FirstColumnScorer:
    """The score is the matrix's only column (the popularity rate)."""

    num_threads = 1

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return matrix[:, 0]


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


class FallbackEngine(DecisionEngine):
    """The decision path without the model; every decision says ``fallback: true``.

    Marked where each decision is made, so the engine's recording (contact caps checked at
    commit, re-decisions) handles fallback decisions like any other.
    """

    def _arbitrate(self, *args: Any, **kwargs: Any) -> Decision:
        return replace(super()._arbitrate(*args, **kwargs), fallback=True)


def fallback_engine(
    catalog: Catalog,
    features: Any,
    event_log: EventLog,
    rates: dict[tuple[str, str] | str, float],
    policy: EpsilonGreedy,
    seed: int,
    max_limit: int,
    clock: Callable[[], datetime] | None = None,
) -> FallbackEngine:
    """Popularity (rates known) or rules (value x weight with one prior rate) fallback."""
    prior = POPULARITY_PRIOR[0] / sum(POPULARITY_PRIOR)
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return FallbackEngine(
        catalog=catalog,
        features=features,
        build_matrix=PopularityMatrix(rates, prior),
        scorer=FirstColumnScorer(),
        model=ModelInfo(FALLBACK_MODEL_NAME, "popularity" if rates else "rules", None),
        history=event_log,
        sink=event_log,
        policy=policy,
        seed=seed,
        max_limit=max_limit,
        **kwargs,
    )


# -------------------------------------------------------------------- model sources


class ModelSource(Protocol):
    """Where models come from: the version the followed alias names, and its files."""

    alias: str

    def resolve(self) -> str: ...

    def download(self, version: str, dst: Path) -> Path: ...


class RegistrySource:
    """An MLflow registered model followed by alias (``models:/NAME@ALIAS``)."""

    def __init__(self, tracking_uri: str, name: str, alias: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias

    def resolve(self) -> str:
        from mlflow import MlflowClient

        try:
            version = MlflowClient(tracking_uri=self.tracking_uri).get_model_version_by_alias(
                self.name, self.alias
            )
        except Exception as exc:
            code = getattr(exc, "error_code", None)
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise NoChampion(
                    f"registered model {self.name!r} must have a version under alias "
                    f"{self.alias!r} (train and promote a model first)"
                ) from exc
            raise NotFoundError(
                f"registered model {self.name!r} alias {self.alias!r} not resolvable: "
                f"{type(exc).__name__}"
            ) from exc
        return str(version.version)

    def download(self, version: str, dst: Path) -> Path:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=str(dst)
            )
        )


class LocalDirSource:
    """A fixed local model folder (``model_dir``): nothing to follow."""

    alias = "local"

    def __init__(self, path: Path):
        self.path = Path(path)

    def resolve(self) -> str:
        return "local"

    def download(self, version: str, dst: Path) -> Path:
        return self.path


# ---------------------------------------------------------------------- the holder


@dataclass(frozen=True)
class ServedModel:
    """What a process serves right now (engine None = the fallback only)."""

    engine: DecisionEngine | None
    info: ModelInfo
    source: str  # registry | cache | local | none
    loaded_at: datetime


@dataclass(frozen=True)
class SwapResult:
    result: str  # swapped | unchanged | refused | unreachable | missing
    previous: str
    current: str
    detail: str = ""


EngineFactory = Callable[[LoadedModel], DecisionEngine]


class DecisionObserver(Protocol):
    def observe_decisions(
        self, decisions: Sequence[Decision], seconds: float, fallback_reason: str | None
    ) -> None: ...

    def model_changed(self, name: str, version: str, source: str) -> None: ...

    def swap_attempt(self, result: str) -> None: ...

    def breaker(self, is_open: bool) -> None: ...


class ModelHolder:
    """The current model of a process, swapped atomically; its fallbacks and breaker.

    Parameters
    ----------
    factory : callable(LoadedModel) -> DecisionEngine
        Builds the engine of a loaded model (raises SpecMismatchError on a wrong spec).
    fallback : DecisionEngine
        The popularity/rules engine on the real features.
    cold_fallback : DecisionEngine
        The same on :class:`ColdStartFeatures` (online store down).
    source : ModelSource or None
        None = no model is ever loaded (fallback only).
    settings : LifecycleSettings
    model_name : str
    observer : DecisionObserver, optional
        Metrics hooks.
    """

    def __init__(
        self,
        factory: EngineFactory,
        fallback: DecisionEngine,
        cold_fallback: DecisionEngine,
        source: ModelSource | None,
        settings: LifecycleSettings,
        model_name: str = "offer-ranker",
        observer: DecisionObserver | None = None,
    ):
        self.factory = factory
        self.fallback = fallback
        self.cold_fallback = cold_fallback
        self.source = source
        self.settings = settings
        self.model_name = model_name
        self.observer = observer
        self.breaker = CircuitBreaker(
            settings.breaker_failures,
            settings.breaker_slow_ms / 1000.0,
            settings.breaker_cooldown_seconds,
            on_change=observer.breaker if observer is not None else None,
        )
        self._current = ServedModel(None, fallback.model, "none", datetime.now(UTC))
        self._refresh_lock = threading.Lock()
        self._refused: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.engine = ResilientEngine(self)

    # ---------------------------------------------------------------- state

    @property
    def current(self) -> ServedModel:
        return self._current

    def status(self) -> dict[str, Any]:
        served = self._current
        return {
            "name": served.info.name,
            "version": served.info.version,
            "source": served.source,
            "fallback": served.engine is None,
            "alias": getattr(self.source, "alias", None),
            "loaded_at": served.loaded_at.isoformat(),
            "breaker_open": self.breaker.is_open,
            "last_error": self.last_error,
        }

    def _publish(self, served: ServedModel) -> None:
        self._current = served  # one assignment: readers see the old or the new, never a mix
        self.breaker.record(True, 0.0)  # a new model starts with a closed breaker
        if self.observer is not None:
            self.observer.model_changed(served.info.name, served.info.version, served.source)

    # ---------------------------------------------------------------- loading

    def start(self) -> ServedModel:
        """First load: the registry; if unreachable, the last good local copy; else none."""
        if self.source is None:
            logger.warning("no model source: serving the %s fallback", self.fallback.model.version)
            self._publish(self._current)
            return self._current
        outcome = self.refresh(force=True)
        if outcome.result == "swapped":
            return self._current
        if outcome.result == "missing":
            if not self.settings.start_without_model:
                raise NoChampion(
                    f"{outcome.detail}; or set RECSYS_SERVING_START_WITHOUT_MODEL=true to serve "
                    "the popularity/rules fallback until one is promoted"
                )
            logger.warning(
                "%s: serving the %s fallback until one is promoted",
                outcome.detail,
                self.fallback.model.version,
            )
            self._publish(self._current)
            return self._current
        logger.warning("no model from %s: %s", type(self.source).__name__, outcome.detail)
        try:
            self._load_last_good()
        except ModelRefused as exc:
            logger.error(
                "no usable model (registry: %s; local copy: %s): serving the %s fallback",
                outcome.detail,
                exc,
                self.fallback.model.version,
            )
            self._publish(self._current)
        return self._current

    def refresh(self, force: bool = False) -> SwapResult:
        """Check the followed alias; load, check and swap in a new version.

        ``force`` reloads the alias's version even when it is the one being served or was
        refused before (an operator asked for it).
        """
        if self.source is None:
            return SwapResult("unchanged", self._current.info.version, self._current.info.version)
        with self._refresh_lock:
            previous = self._current
            try:
                version = self.source.resolve()
            except NoChampion as exc:
                self.last_error = str(exc)
                self._observe_swap("missing")
                return SwapResult(
                    "missing", previous.info.version, previous.info.version, self.last_error
                )
            except Exception as exc:
                self.last_error = f"registry unreachable: {exc}"
                self._observe_swap("unreachable")
                return SwapResult(
                    "unreachable", previous.info.version, previous.info.version, self.last_error
                )
            same = previous.engine is not None and previous.info.version == version
            if not force and (same or version in self._refused):
                return SwapResult("unchanged", previous.info.version, previous.info.version)
            try:
                path = self._fetch(version)
                engine = self._candidate(path, version)
            except (FeaturesUnavailable, *_unavailable_types()) as exc:
                self.last_error = f"version {version} not checked: {type(exc).__name__}: {exc}"
                logger.warning("model %s v%s not loaded: %s", self.model_name, version, exc)
                self._observe_swap("unreachable")
                return SwapResult(
                    "unreachable", previous.info.version, previous.info.version, self.last_error
                )
            except (ModelRefused, Exception) as exc:
                self._refused.add(version)
                self.last_error = f"version {version} refused: {exc}"
                logger.error(
                    "refusing model %s v%s (keeping v%s): %s",
                    self.model_name,
                    version,
                    previous.info.version,
                    exc,
                )
                self._observe_swap("refused")
                return SwapResult(
                    "refused", previous.info.version, previous.info.version, self.last_error
                )
            source = "local" if isinstance(self.source, LocalDirSource) else "registry"
            self._publish(ServedModel(engine, engine.model, source, datetime.now(UTC)))
            self._refused.discard(version)
            self.last_error = None
            if source == "registry":
                self._remember(path, version)
            self._observe_swap("swapped")
            logger.info(
                "serving model %s v%s (was %s v%s)",
                engine.model.name,
                engine.model.version,
                previous.info.name,
                previous.info.version,
            )
            return SwapResult("swapped", previous.info.version, engine.model.version)

    def follow(self, alias: str) -> SwapResult:
        """Follow another alias of the registered model (e.g. challenger) and load it."""
        if not isinstance(self.source, RegistrySource):
            raise NotFoundError("`alias` can only be followed with a registry model source")
        self.source.alias = alias
        return self.refresh(force=True)

    def _observe_swap(self, result: str) -> None:
        if self.observer is not None:
            self.observer.swap_attempt(result)

    def _cache_root(self) -> Path:
        return Path(self.settings.model_cache_dir) / self.model_name

    def _fetch(self, version: str) -> Path:
        assert self.source is not None
        if isinstance(self.source, LocalDirSource):
            return self.source.path
        root = self._cache_root()
        final = root / f"v{version}"
        if final.is_dir():
            return final
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=root))
        try:
            self.source.download(version, staging)
            os.replace(staging, final)  # a half-downloaded copy is never under its final name
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def _candidate(self, path: Path, version: str) -> DecisionEngine:
        """Load ``path``, build its engine, and try one decision per touchpoint (no logging)."""
        try:
            loaded = load_model_dir(
                path,
                name=self.model_name,
                version=version,
                compiled_dir=compiled_model_dir(self.settings),
            )
        except Exception as exc:
            raise ModelRefused(f"cannot load the model files: {type(exc).__name__}: {exc}") from exc
        try:
            engine = self.factory(loaded)
        except SpecMismatchError as exc:
            raise ModelRefused(f"feature spec mismatch: {exc}") from exc
        requests = [
            DecisionRequest(TRIAL_CUSTOMER, tp_id)
            for tp_id in sorted(engine.catalog.touchpoints)
            if engine.catalog.for_touchpoint(tp_id).offers
        ]
        if requests:
            try:
                decisions = engine.decide_many(requests, record=False)
            except (FeaturesUnavailable, *_unavailable_types()):
                raise
            except Exception as exc:
                raise ModelRefused(f"a trial decision failed: {type(exc).__name__}: {exc}") from exc
            scores = np.array(
                [o.score for d in decisions for o in d.offers if o.score is not None],
                dtype=np.float64,
            )
            if scores.size and (
                not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1
            ):
                raise ModelRefused("a trial decision scored outside [0, 1]")
        engine.scorer = GuardedScorer(engine.scorer, self.breaker)
        return engine

    def _remember(self, path: Path, version: str) -> None:
        pointer = self._cache_root() / LAST_GOOD
        record = {
            "name": self.model_name,
            "version": version,
            "path": str(path),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, pointer)

    def _load_last_good(self) -> None:
        pointer = self._cache_root() / LAST_GOOD
        if not pointer.is_file():
            raise ModelRefused(f"no {LAST_GOOD} under {self._cache_root()}")
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
            path, version = Path(record["path"]), str(record["version"])
        except (ValueError, KeyError) as exc:
            raise ModelRefused(f"{pointer} is unreadable: {exc}") from exc
        try:
            engine = self._candidate(path, version)
        except (FeaturesUnavailable, *_unavailable_types()) as exc:
            raise ModelRefused(f"{type(exc).__name__}: {exc}") from exc
        self._publish(ServedModel(engine, engine.model, "cache", datetime.now(UTC)))
        logger.warning(
            "registry unreachable: serving the last good local copy of %s v%s",
            self.model_name,
            version,
        )

    # ---------------------------------------------------------------- polling

    def start_polling(self) -> None:
        interval = self.settings.model_poll_seconds
        if interval <= 0 or self.source is None or isinstance(self.source, LocalDirSource):
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # never let the poller die; the next tick retries
                    logger.exception("model poll failed")

        self._thread = threading.Thread(target=loop, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class ResilientEngine:
    """What the routes call: the current model's engine, or a fallback when it cannot serve.

    Behaves like a :class:`DecisionEngine` for ``decide`` / ``decide_many`` and the
    attributes routes read (catalog, features, model, policy, scorer).
    """

    def __init__(self, holder: ModelHolder):
        self._holder = holder

    def _engine(self) -> DecisionEngine:
        served = self._holder.current
        return served.engine if served.engine is not None else self._holder.fallback

    @property
    def catalog(self) -> Catalog:
        return self._engine().catalog

    @property
    def features(self) -> Any:
        return self._engine().features

    @property
    def model(self) -> ModelInfo:
        return self._holder.current.info

    @property
    def policy(self) -> EpsilonGreedy:
        return self._engine().policy

    @property
    def scorer(self) -> Any:
        return self._engine().scorer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine(), name)

    def decide(self, request: DecisionRequest, *, trace: bool = False) -> Decision:
        return self.decide_many([request], trace=trace)[0]

    def decide_many(
        self,
        requests: Sequence[DecisionRequest],
        *,
        trace: bool = False,
        now: datetime | None = None,
        record: bool = True,
    ) -> list[Decision]:
        holder = self._holder
        served = holder.current  # one snapshot for the whole call
        started = time.perf_counter()
        reason: str | None = None
        decisions: list[Decision] | None = None
        if served.engine is None:
            reason = "no_model"
        elif not holder.breaker.allow():
            reason = "breaker_open"
        else:
            try:
                decisions = served.engine.decide_many(requests, trace=trace, now=now, record=record)
            except ModelUnavailable:
                reason = "model_error"
            except FeaturesUnavailable:
                reason = "features_down"
        if decisions is None and reason != "features_down":
            try:
                decisions = holder.fallback.decide_many(
                    requests, trace=trace, now=now, record=record
                )
            except FeaturesUnavailable:
                reason = "features_down"
        if decisions is None:
            decisions = holder.cold_fallback.decide_many(
                requests, trace=trace, now=now, record=record
            )
        if holder.observer is not None:
            holder.observer.observe_decisions(decisions, time.perf_counter() - started, reason)
        return decisions


# ------------------------------------------------------------------ fault mapping


def _unavailable_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [sqlite3.OperationalError]
    try:
        import psycopg

        types.append(psycopg.OperationalError)
    except ImportError:  # psycopg is only needed for the PostgreSQL event log
        pass
    try:
        import redis

        types.extend([redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
    except ImportError:
        pass
    return tuple(types)


def install_fault_handlers(app: FastAPI) -> None:
    """Event log locked/full/unreachable (and other backends down) -> 503 + Retry-After."""

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning(
            "backend unavailable on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        message = "a backend of the service (event log) is unavailable; retry later"
        return JSONResponse(
            {
                "detail": message,
                "errors": [{"field": "", "expected": "", "received": None, "message": message}],
            },
            status_code=503,
            headers={"retry-after": "1"},
        )

    for exc_type in _unavailable_types():
        app.add_exception_handler(exc_type, unavailable)


def install_lifecycle(app: FastAPI, holder: ModelHolder) -> None:
    """Expose the holder to the admin routes and map backend faults to 503."""
    app.state.model_holder = holder
    install_fault_handlers(app)


# ------------------------------------------------------------------ production wiring


def build_model_holder(
    catalog: Catalog,
    features: Any,
    event_log: EventLog,
    factory: EngineFactory,
    source: ModelSource | None,
    settings: LifecycleSettings,
    *,
    epsilon: float,
    seed: int,
    max_limit: int,
    model_name: str = "offer-ranker",
    warehouse_path: Path | None = None,
    observer: DecisionObserver | None = None,
    clock: Callable[[], datetime] | None = None,
) -> ModelHolder:
    """A holder with its popularity/rules fallbacks; call :meth:`ModelHolder.start` next.

    ``features`` should be wrapped in :class:`GuardedFeatures` (so a store failure serves
    the cold-start fallback) and ``factory`` should build engines on those features.
    """
    rates = popularity_rates(warehouse_path)
    policy = EpsilonGreedy(epsilon)
    fallback = fallback_engine(catalog, features, event_log, rates, policy, seed, max_limit, clock)
    cold = fallback_engine(
        catalog, ColdStartFeatures(), event_log, rates, policy, seed, max_limit, clock
    )
    return ModelHolder(factory, fallback, cold, source, settings, model_name, observer)


def build_served_components(
    core: Any,
    serving: Any,
    lifecycle: LifecycleSettings,
    observer: DecisionObserver | None = None,
    wrap_event_log: Callable[[EventLog], EventLog] | None = None,
) -> tuple[Any, ModelHolder]:
    """Catalogue, online store, event log and a started :class:`ModelHolder` from settings.

    Unlike ``serving.components.build_components`` this never fails for want of a model:
    registry down -> last good local copy -> popularity/rules fallback.

    Returns
    -------
    (serving.components.Components, ModelHolder)
    """
    from features.decision_matrix import DecisionMatrixBuilder as EncodedMatrixBuilder
    from features.matrix import Encoding
    from features.online import StoreFeatureSource, open_online_store
    from recsys.catalog import load_catalog
    from serving.components import Components, open_service_event_log

    catalog = load_catalog(serving.catalog_source or core.warehouse_path)
    features = GuardedFeatures(StoreFeatureSource(open_online_store(core), catalog))
    event_log = open_service_event_log(core.event_log_url, serving)
    if wrap_event_log is not None:
        event_log = wrap_event_log(event_log)
    policy_epsilon = serving.epsilon

    def factory(loaded: LoadedModel) -> DecisionEngine:
        if "encoding" not in loaded.spec:
            raise SpecMismatchError(
                f"model {loaded.info.name} v{loaded.info.version}: feature_spec.json must "
                "carry the model's `encoding`, got none"
            )
        return DecisionEngine(
            catalog=catalog,
            features=features,
            build_matrix=EncodedMatrixBuilder(catalog, Encoding.from_dict(loaded.spec["encoding"])),
            scorer=loaded.scorer,
            model=loaded.info,
            history=event_log,
            sink=event_log,
            policy=EpsilonGreedy(policy_epsilon),
            seed=core.seed,
            max_limit=serving.max_limit,
        )

    source: ModelSource
    if serving.model_dir is not None:
        source = LocalDirSource(serving.model_dir)
    else:
        source = RegistrySource(core.mlflow_tracking_uri, core.model_name, core.model_alias)
    holder = build_model_holder(
        catalog,
        features,
        event_log,
        factory,
        source,
        lifecycle,
        epsilon=policy_epsilon,
        seed=core.seed,
        max_limit=serving.max_limit,
        model_name=core.model_name,
        warehouse_path=core.warehouse_path,
        observer=observer,
    )
    holder.start()
    components = Components(engine=holder.engine, event_log=event_log, serving=serving)
    return components, holder
