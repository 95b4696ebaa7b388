"""The model a service process serves, swapped atomically, and what serves when it cannot.

- :class:`ModelHolder` holds the served model (its matrix builder and scorer, swapped
  together by one attribute assignment: a request in flight keeps the model it started
  with). It follows a registry alias by polling (``model_poll_seconds``) and on demand
  (``POST /admin/model/reload``). A candidate is first loaded and test-scored in a child
  process (:mod:`recsys.scoring.check`: a file that crashes LightGBM or LLVM kills only
  that child). A candidate that crashes or fails there, fails its checksum, whose feature
  spec does not match the online store, or whose trial decisions fail or score outside
  [0, 1], is refused: the previous model stays and the refusal is logged ("refusing model
  NAME vN ...") and counted. A refused version is remembered (a marker in the model cache,
  seen by every worker) and not tried again until an admin reload asks for it.
- Downloaded versions are kept, checksummed, in ``model_cache_dir``
  (:mod:`serving.model_cache`); when the registry is unreachable (or its version refused)
  at start, the last good copy is served (``source: cache``).
- Reloads and alias changes are transactional: the followed alias changes only when its
  version is swapped in; :meth:`ModelHolder.start_swap` runs one in the background for the
  admin routes.
- No model at all: the popularity/rules fallback (:mod:`serving.resilience`), responses
  ``fallback: true``, status 200, ``model: {name: "fallback", version: "popularity"|"rules"}``.
- The accepted model's scorer sits behind the circuit breaker (:class:`ResilientScorer`);
  the online store behind :class:`ResilientFeatures` (cold starts while it is down).
- :class:`HolderArms` is the pipeline's arm resolver: every request decided by the held model
  with the configured policy.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recsys.arbitration import Policy
from recsys.decision import Arm, Decision, DecisionRequest, ServedModel
from recsys.errors import ModelRefused, NotFoundError, SpecMismatchError
from recsys.settings import LifecycleSettings
from serving.errors import unavailable_types
from serving.model_cache import FilesRefused, ModelCache
from serving.model_sources import LocalDirSource, ModelSource, NoChampion
from serving.polling import Poller
from serving.resilience import CircuitBreaker, NoMatrix, PopularityScorer, ResilientScorer

logger = logging.getLogger(__name__)


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


#: Background swaps each process remembers (for ``GET /admin/model/swaps/{id}``).
KEPT_SWAP_JOBS = 32


@dataclass
class SwapJob:
    """A reload or follow running in the background; :meth:`wait` for its outcome."""

    id: str
    action: str  # reload | follow
    alias: str | None
    started_at: datetime
    outcome: SwapResult | None = None
    finished_at: datetime | None = None
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def finish(self, outcome: SwapResult) -> None:
        self.outcome = outcome
        self.finished_at = datetime.now(UTC)
        self._done.set()

    def wait(self, seconds: float) -> SwapResult | None:
        """The outcome once done, or None if the swap still runs after ``seconds``."""
        self._done.wait(seconds)
        return self.outcome


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
        self.cache = ModelCache(Path(settings.model_cache_dir), source, model_name)
        self._jobs: dict[str, SwapJob] = {}
        self._jobs_lock = threading.Lock()
        self._poller = Poller("model-poller", self.refresh, self._poll_failed)
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
        outcome = self.refresh()  # a version refused before (by any worker) is not retried
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

    def refresh(self, force: bool = False, alias: str | None = None) -> SwapResult:
        """Check an alias (None: the followed one); load, check and swap in a new version.

        A version refused before (by this process, or by another worker: a marker in the
        model cache) is not tried again unless ``force``: an operator asked for it. ``force``
        also reloads the version being served. With ``alias``, the holder follows it from
        now on if, and only if, its version is swapped in.
        """
        version_now = self._current.model.info.version
        if self.source is None:
            return SwapResult("unchanged", version_now, version_now)
        with self._refresh_lock:
            previous = self._current
            before = previous.model.info.version
            try:
                version = self.source.resolve(alias)
            except NoChampion as exc:
                return self._failed("missing", before, str(exc))
            except Exception as exc:
                return self._failed("unreachable", before, f"registry unreachable: {exc}")
            same = not previous.is_fallback and before == version
            if not force and same:
                return SwapResult("unchanged", before, before)
            refused_before = None if force else self.cache.refusal(version)
            if refused_before is not None:
                detail = (
                    f"version {version} was refused before ({refused_before}); "
                    "POST /admin/model/reload tries it again"
                )
                return SwapResult("refused" if previous.is_fallback else "unchanged", before,
                                  before, detail)  # fmt: skip
            try:
                model, path = self._checked_candidate(version)
            except unavailable_types() as exc:
                logger.warning("model %s v%s not loaded: %s", self.model_name, version, exc)
                detail = f"version {version} not checked: {type(exc).__name__}: {exc}"
                return self._failed("unreachable", before, detail)
            except Exception as exc:
                self.cache.remember_refusal(version, str(exc))
                logger.error("refusing model %s v%s (keeping %s v%s): %s", self.model_name,
                             version, previous.model.info.name, before, exc)  # fmt: skip
                return self._failed("refused", before, f"version {version} refused: {exc}")
            source = "local" if isinstance(self.source, LocalDirSource) else "registry"
            self._publish(Served(model, source, datetime.now(UTC)))
            if alias is not None:
                self.source.follow(alias)  # only now: a refused alias changes nothing
            self.cache.forget_refusal(version)
            self.last_error = None
            if source == "registry":
                self.cache.remember_last_good(path, version)
            self._observe_swap("swapped")
            logger.info("serving model %s v%s (was %s v%s)", model.info.name, model.info.version,
                        previous.model.info.name, before)  # fmt: skip
            return SwapResult("swapped", before, model.info.version)

    def follow(self, alias: str) -> SwapResult:
        """Follow another alias of the registered model (e.g. challenger) and load it; a
        refused or unresolvable alias leaves the followed one (and the served model) as they
        were.

        Raises
        ------
        NotFoundError
            The model source follows no aliases (a local model folder, or none).
        """
        self.check_followable(alias)
        return self.refresh(force=True, alias=alias)

    def check_followable(self, alias: str) -> None:
        """Raise NotFoundError unless the model source can follow ``alias``."""
        if self.source is None:
            raise NotFoundError("`alias` can only be followed with a registry model source")
        if isinstance(self.source, LocalDirSource):
            self.source.follow(alias)  # raises: a local folder has no aliases

    # ---------------------------------------------------------------- swaps in the background

    def start_swap(self, alias: str | None = None) -> SwapJob:
        """Reload the followed alias (or follow ``alias``) in a background thread; the job
        tells when it is done and how it went (``POST /admin/model/reload`` and ``/follow``
        wait a little for it, then answer 202 with its status URL)."""
        if alias is not None:
            self.check_followable(alias)
        job = SwapJob(uuid.uuid4().hex[:16], "follow" if alias else "reload", alias,
                      datetime.now(UTC))  # fmt: skip

        def run() -> None:
            try:
                outcome = self.refresh(force=True, alias=alias)
            except Exception as exc:  # refresh reports failures as results; never lose a job
                logger.exception("model %s failed", job.action)
                current = self._current.model.info.version
                outcome = SwapResult("unreachable", current, current, f"{type(exc).__name__}")
            job.finish(outcome)

        with self._jobs_lock:
            self._jobs[job.id] = job
            while len(self._jobs) > KEPT_SWAP_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
        threading.Thread(target=run, name=f"model-{job.action}", daemon=True).start()
        return job

    def swap_job(self, job_id: str) -> SwapJob:
        """A swap started here (the last :data:`KEPT_SWAP_JOBS`).

        Raises
        ------
        NotFoundError
            No such job in this process.
        """
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(
                f"no model swap {job_id!r} in this process (pid {os.getpid()}; each worker "
                f"keeps its last {KEPT_SWAP_JOBS})"
            )
        return job

    def _failed(self, result: str, version: str, detail: str) -> SwapResult:
        self.last_error = detail
        self._observe_swap(result)
        return SwapResult(result, version, version, detail)

    def _observe_swap(self, result: str) -> None:
        if self.observer is not None:
            self.observer.swap_attempt(result)

    def _checked_candidate(self, version: str) -> tuple[ServedModel, Path]:
        """The candidate ``version``, fetched, checked and tried; a cached copy whose files
        fail is discarded and downloaded once more."""
        path, fresh = self.cache.fetch(version)
        try:
            return self._candidate(path, version), path
        except FilesRefused as exc:
            if fresh:
                raise
            logger.warning("model %s v%s: the cached copy fails (%s): discarding it and "
                           "downloading it again", self.model_name, version, exc)  # fmt: skip
            self.cache.discard(version)
        path, _ = self.cache.fetch(version)
        return self._candidate(path, version), path

    def _candidate(self, path: Path, version: str) -> ServedModel:
        """Load ``path`` (checked in a child process first), try it, and put its scorer
        behind the breaker and the fallback."""
        try:
            model = self.load(path, version)
        except unavailable_types():
            raise
        except Exception as exc:
            raise FilesRefused(f"cannot load the model files: {type(exc).__name__}: {exc}") from exc
        try:
            self.trial(model)
        except SpecMismatchError as exc:
            raise ModelRefused(f"feature spec mismatch: {exc}") from exc
        scorer = ResilientScorer(model.scorer, self.fallback, self.breaker)
        return ServedModel(model.info, model.matrix, scorer)

    def _load_last_good(self) -> None:
        path, version = self.cache.last_good()
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
        self._poller.start(interval)

    @staticmethod
    def _poll_failed(exc: Exception) -> None:
        logger.error("model poll failed", exc_info=exc)

    def stop(self) -> None:
        self._poller.stop()


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
