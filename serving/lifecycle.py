"""The model a service process serves, swapped atomically, and what serves when it cannot.

- :class:`ModelHolder` holds the served model (its matrix builder and scorer, swapped
  together by one attribute assignment: a request in flight keeps the model it started
  with). It follows a registry alias by polling (``model_poll_seconds``) and on demand
  (``POST /admin/model/reload``). A candidate that fails to load, whose feature spec does
  not match the online store, or whose trial decisions fail or score outside [0, 1], is
  refused: the previous model stays and the refusal is logged and counted.
- Every model accepted from the registry is kept in ``model_cache_dir`` with a
  ``last_good.json`` pointer; when the registry is unreachable at start, the last good
  local copy is served (``source: cache``).
- No model at all: the popularity/rules fallback (:mod:`serving.resilience`), responses
  ``fallback: true``, status 200, ``model: {name: "fallback", version: "popularity"|"rules"}``.
- The accepted model's scorer sits behind the circuit breaker (:class:`ResilientScorer`);
  the online store behind :class:`ResilientFeatures` (cold starts while it is down).
- :class:`HolderArms` is the pipeline's arm resolver: every request decided by the held model
  with the configured policy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recsys.arbitration import Policy
from recsys.decision import Arm, Decision, DecisionRequest, ServedModel
from recsys.errors import ModelRefused, SpecMismatchError
from recsys.settings import LifecycleSettings
from serving.errors import unavailable_types
from serving.model_sources import LocalDirSource, ModelSource, NoChampion
from serving.resilience import CircuitBreaker, NoMatrix, PopularityScorer, ResilientScorer

logger = logging.getLogger(__name__)

LAST_GOOD = "last_good.json"


@dataclass(frozen=True)
class Served:
    """What a process serves right now."""

    model: ServedModel
    source: str  # registry | cache | local | none (the fallback)
    loaded_at: datetime

    @property
    def is_fallback(self) -> bool:
        return self.source == "none"


@dataclass(frozen=True)
class SwapResult:
    result: str  # swapped | unchanged | refused | unreachable | missing
    previous: str
    current: str
    detail: str = ""


class DecisionObserver(Protocol):
    def observe_decisions(
        self, decisions: Sequence[Decision], seconds: float, fallback_reason: str | None
    ) -> None: ...

    def model_changed(self, name: str, version: str, source: str) -> None: ...

    def swap_attempt(self, result: str) -> None: ...

    def breaker(self, is_open: bool) -> None: ...


#: Loads a model folder (path, version) into a servable model; raises on bad files.
ModelLoader = Callable[[Path, str], ServedModel]
#: Tries a candidate (spec check, trial decisions); raises ModelRefused, or a backend error.
ModelTrial = Callable[[ServedModel], None]


class ModelHolder:
    """The current model of a process, swapped atomically; its fallback and breaker.

    Parameters
    ----------
    load : callable(path, version) -> ServedModel
    trial : callable(ServedModel) -> None
        Raises ModelRefused (or SpecMismatchError) for a model that must not be served.
    fallback : PopularityScorer
        Scores while there is no model, the breaker is open or the model fails.
    source : ModelSource or None
        None = no model is ever loaded (fallback only).
    settings : LifecycleSettings
    model_name : str
    observer : DecisionObserver, optional
        Metrics hooks.
    """

    def __init__(
        self,
        load: ModelLoader,
        trial: ModelTrial,
        fallback: PopularityScorer,
        source: ModelSource | None,
        settings: LifecycleSettings,
        model_name: str = "offer-ranker",
        observer: DecisionObserver | None = None,
    ):
        self.load = load
        self.trial = trial
        self.fallback = fallback
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
        self.fallback_model = ServedModel(fallback.model, NoMatrix(), fallback)
        self._current = Served(self.fallback_model, "none", datetime.now(UTC))
        self._refresh_lock = threading.Lock()
        self._refused: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # ---------------------------------------------------------------- state

    @property
    def current(self) -> Served:
        return self._current

    def status(self) -> dict[str, Any]:
        served = self._current
        return {
            "name": served.model.info.name,
            "version": served.model.info.version,
            "source": served.source,
            "fallback": served.is_fallback,
            "alias": self.source.alias if self.source is not None else None,
            "loaded_at": served.loaded_at.isoformat(),
            "breaker_open": self.breaker.is_open,
            "last_error": self.last_error,
        }

    def _publish(self, served: Served) -> None:
        self._current = served  # one assignment: readers see the old or the new, never a mix
        self.breaker.record(True, 0.0)  # a new model starts with a closed breaker
        if self.observer is not None:
            info = served.model.info
            self.observer.model_changed(info.name, info.version, served.source)

    # ---------------------------------------------------------------- loading

    def start(self) -> Served:
        """First load: the registry; if unreachable, the last good local copy; else none."""
        fallback = self.fallback.model.version
        if self.source is None:
            logger.warning("no model source: serving the %s fallback", fallback)
            self._publish(self._current)
            return self._current
        outcome = self.refresh(force=True)
        if outcome.result == "swapped":
            return self._current
        if outcome.result == "missing":
            if not self.settings.start_without_model:
                raise NoChampion(
                    f"{outcome.detail}; or set RECSYS_LIFECYCLE__START_WITHOUT_MODEL=true to "
                    "serve the popularity/rules fallback until one is promoted"
                )
            logger.warning("%s: serving the %s fallback until one is promoted", outcome.detail,
                           fallback)  # fmt: skip
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
                fallback,
            )
            self._publish(self._current)
        return self._current

    def refresh(self, force: bool = False) -> SwapResult:
        """Check the followed alias; load, check and swap in a new version.

        ``force`` reloads the alias's version even when it is the one being served or was
        refused before (an operator asked for it).
        """
        version_now = self._current.model.info.version
        if self.source is None:
            return SwapResult("unchanged", version_now, version_now)
        with self._refresh_lock:
            previous = self._current
            before = previous.model.info.version
            try:
                version = self.source.resolve()
            except NoChampion as exc:
                return self._failed("missing", before, str(exc))
            except Exception as exc:
                return self._failed("unreachable", before, f"registry unreachable: {exc}")
            same = not previous.is_fallback and before == version
            if not force and (same or version in self._refused):
                return SwapResult("unchanged", before, before)
            try:
                path = self._fetch(version)
                model = self._candidate(path, version)
            except unavailable_types() as exc:
                logger.warning("model %s v%s not loaded: %s", self.model_name, version, exc)
                detail = f"version {version} not checked: {type(exc).__name__}: {exc}"
                return self._failed("unreachable", before, detail)
            except Exception as exc:
                self._refused.add(version)
                logger.error("refusing model %s v%s (keeping v%s): %s", self.model_name,
                             version, before, exc)  # fmt: skip
                return self._failed("refused", before, f"version {version} refused: {exc}")
            source = "local" if isinstance(self.source, LocalDirSource) else "registry"
            self._publish(Served(model, source, datetime.now(UTC)))
            self._refused.discard(version)
            self.last_error = None
            if source == "registry":
                self._remember(path, version)
            self._observe_swap("swapped")
            logger.info("serving model %s v%s (was %s v%s)", model.info.name, model.info.version,
                        previous.model.info.name, before)  # fmt: skip
            return SwapResult("swapped", before, model.info.version)

    def follow(self, alias: str) -> SwapResult:
        """Follow another alias of the registered model (e.g. challenger) and load it; a
        refused or unresolvable alias leaves the followed one as it was."""
        assert self.source is not None
        was = self.source.alias
        self.source.follow(alias)
        outcome = self.refresh(force=True)
        if outcome.result != "swapped":
            self.source.follow(was)
        return outcome

    def _failed(self, result: str, version: str, detail: str) -> SwapResult:
        self.last_error = detail
        self._observe_swap(result)
        return SwapResult(result, version, version, detail)

    def _observe_swap(self, result: str) -> None:
        if self.observer is not None:
            self.observer.swap_attempt(result)

    def _cache_root(self) -> Path:
        """Downloaded versions, one folder per source (v1 of one registry is not v1 of
        another)."""
        key = self.source.cache_key if self.source is not None else self.model_name
        return Path(self.settings.model_cache_dir) / key

    def _pointer(self) -> Path:
        """The last good copy this service served, whichever source it came from."""
        return Path(self.settings.model_cache_dir) / self.model_name / LAST_GOOD

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

    def _candidate(self, path: Path, version: str) -> ServedModel:
        """Load ``path``, try it, and put its scorer behind the breaker and the fallback."""
        try:
            model = self.load(path, version)
        except Exception as exc:
            raise ModelRefused(f"cannot load the model files: {type(exc).__name__}: {exc}") from exc
        try:
            self.trial(model)
        except SpecMismatchError as exc:
            raise ModelRefused(f"feature spec mismatch: {exc}") from exc
        scorer = ResilientScorer(model.scorer, self.fallback, self.breaker)
        return ServedModel(model.info, model.matrix, scorer)

    def _remember(self, path: Path, version: str) -> None:
        pointer = self._pointer()
        pointer.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "name": self.model_name,
            "version": version,
            "path": str(path.resolve()),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, pointer)

    def _load_last_good(self) -> None:
        pointer = self._pointer()
        if not pointer.is_file():
            raise ModelRefused(f"no {pointer}")
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
            path, version = Path(record["path"]), str(record["version"])
        except (ValueError, KeyError) as exc:
            raise ModelRefused(f"{pointer} is unreadable: {exc}") from exc
        try:
            model = self._candidate(path, version)
        except unavailable_types() as exc:
            raise ModelRefused(f"{type(exc).__name__}: {exc}") from exc
        self._publish(Served(model, "cache", datetime.now(UTC)))
        logger.warning("registry unreachable: serving the last good local copy of %s v%s",
                       self.model_name, version)  # fmt: skip

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


@dataclass(frozen=True)
class HolderArms:
    """The pipeline's arm resolver: every request by the held model, with ``policy``.

    The model is read once per batch, so a swap applies from the next batch on."""

    holder: ModelHolder
    policy: Policy
    name: str = "champion"

    def resolve(self, requests: Sequence[DecisionRequest], now: datetime) -> Sequence[Arm]:
        arm = Arm(self.name, self.holder.current.model, self.policy)
        return [arm] * len(requests)

    def shadows(
        self, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        return ()  # no experiments: the service resolves arms with ExperimentArms
