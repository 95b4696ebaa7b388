"""The pipeline's arm resolver in a service process: running experiments, else the champion.

:class:`ExperimentArms` follows the experiment store (:mod:`experiments.store`, in the event
log's database) by polling it every ``serving.experiments_poll_seconds`` in a background
thread: a started, stopped or promoted experiment takes effect in every worker within that
interval, without a restart. A failed poll keeps the last known set (logged).

Per request, before scoring: the request's unit (``unit_id``, else the customer) is assigned
by :class:`experiments.assignment.Assigner`; a request outside every running experiment is
decided by the default arm, which is exactly today's champion with the service's policy (plus
the default levers once an experiment's arm has been promoted). Arms by kind (the mapping is
:func:`experiments.recipes.arm_recipe`, shared with the what-if screening):

- ``treatment`` / ``control`` / ``shadow``: the arm's model (registry alias or version; the
  followed alias is the champion holder itself, other models get their own
  :class:`ModelHolder`), its policy (default the service's) and its levers (a catalogue with
  the levers applied, so eligibility and priority read them);
- ``holdout_random``: the champion scores, but every slot is drawn uniformly among the
  eligible offers (epsilon 1);
- ``holdout_popularity``: eligibility + the popularity ranking of the fallback scorer, greedy
  (its decisions are not marked ``fallback``: that is their recipe, not a failure);
- ``holdout_champion``: the champion with the service's policy and no levers at all.

Shadow arms decide a copy of every request their experiment's served arms decide; those
decisions are logged with ``shadow = 1`` and never served nor counted as contacts.

The arms are built on a base catalogue (levers apply to it). When the live catalogue changes
(:mod:`serving.catalogue`), :meth:`ExperimentArms.rebase` builds them again on the new one
before the new pipeline is published, and each pipeline resolves through
:meth:`ExperimentArms.for_catalog`, the arms of *its* catalogue: a batch never mixes the
catalogue it checks eligibility with and the one its arms' levers were applied to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments.assignment import Assigner, Placement
from experiments.definition import ArmKind, ArmSpec, Experiment, ModelRef
from experiments.recipes import Service, arm_recipe, levers_catalog
from experiments.store import ExperimentStore, Snapshot
from recsys.arbitration import Policy
from recsys.catalog import Catalog
from recsys.decision import Arm, DecisionRequest, ServedModel
from recsys.errors import NotFoundError
from serving.lifecycle import ModelHolder
from serving.model_sources import RegistrySource
from serving.polling import Poller
from serving.resilience import NoMatrix, PopularityScorer

logger = logging.getLogger(__name__)

#: Builds and starts the holder of a model other than the champion; raises if it cannot serve.
HolderFactory = Callable[[ModelRef], ModelHolder]


class PinnedVersion:
    """A registry model source that always names one version (an arm's ``model.version``)."""

    def __init__(self, registry: RegistrySource, version: str):
        self.registry = registry
        self.version = version
        self.alias = f"v{version}"
        self.cache_key = registry.cache_key

    def resolve(self, alias: str | None = None) -> str:
        if alias is not None and alias != self.alias:
            raise NotFoundError(f"an arm's pinned model version follows no alias, got {alias!r}")
        return self.version

    def download(self, version: str, dst: Path) -> Path:
        return self.registry.download(version, dst)

    def expected_digest(self, version: str) -> str | None:
        return self.registry.expected_digest(version)

    def follow(self, alias: str) -> None:
        raise NotFoundError("an arm's pinned model version follows no alias")


@dataclass(frozen=True)
class _Recipe:
    """How one arm of a running experiment decides (its model read at decision time)."""

    spec: ArmSpec
    experiment_id: str
    policy: Policy
    catalog: Catalog | None
    model: Callable[[], ServedModel]
    # the last Arm made, reused while its model is the one served (one list slot: a race
    # between two decision threads makes two equal arms, which is harmless)
    _last: list[Arm] = field(default_factory=list, compare=False, repr=False)

    def arm(self) -> Arm:
        model = self.model()
        if self._last and self._last[0].model is model:
            return self._last[0]
        arm = Arm(
            self.spec.name,
            model,
            self.policy,
            self.experiment_id,
            self.catalog,
            shadow=self.spec.kind == ArmKind.SHADOW,
        )
        self._last[:] = [arm]
        return arm


@dataclass(frozen=True)
class _State:
    """What the resolver serves: swapped whole by one assignment."""

    assigner: Assigner
    recipes: dict[tuple[int, str], _Recipe]  # (placement, arm name) -> recipe
    shadows: dict[int, tuple[_Recipe, ...]]  # placement -> its shadow arms
    default_catalog: Catalog | None
    version: tuple | None
    catalog: Catalog  # the base catalogue the arms were built on
    incomplete: bool = False  # an experiment was left out (its model did not load): retried


class ExperimentArms:
    """Arm resolver of a service process (see the module docstring).

    Parameters
    ----------
    holder : ModelHolder
        The champion (the followed alias).
    policy : Policy
        The service's policy (``serving.policy``).
    catalog : Catalog
        The pipeline's catalogue (levers are applied to it).
    store : ExperimentStore or None
        None: no experiments, every request by the default arm.
    poll_seconds : float
        How often the polling thread reads the store (0: only :meth:`refresh`).
    make_holder : callable(ModelRef) -> ModelHolder, optional
        Loads a model other than the followed alias; None = only the champion is available
        (e.g. a local model folder), experiments naming other models are not applied.
    followed_alias : str
        The alias the champion holder follows (``model_alias``).
    policy_parameters : mapping of kind -> parameters
        The service's parameters of every policy kind
        (:meth:`recsys.settings.ServingSettings.policy_parameters`): what an arm naming a
        kind takes for those it leaves out; a kind missing here takes the policy's defaults.
    """

    name = "champion"

    def __init__(
        self,
        holder: ModelHolder,
        policy: Policy,
        catalog: Catalog,
        store: ExperimentStore | None,
        policy_parameters: Mapping[str, Mapping[str, float]],
        poll_seconds: float = 5.0,
        make_holder: HolderFactory | None = None,
        followed_alias: str = "champion",
    ):
        self.holder = holder
        self.policy = policy
        self.policy_parameters = dict(policy_parameters)
        self.catalog = catalog
        self.store = store
        self.poll_seconds = poll_seconds
        self.make_holder = make_holder
        self.followed_alias = followed_alias
        self._holders: dict[str, ModelHolder] = {}
        self._state = _State(Assigner([]), {}, {}, None, None, catalog)
        self._previous: _State | None = None  # the arms of the catalogue before a rebase
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._poller = Poller("experiment-poller", self.refresh, self._poll_failed)
        self.last_error: str | None = None

    # ------------------------------------------------------------ resolver port

    def resolve(self, requests: Sequence[DecisionRequest], now: datetime) -> Sequence[Arm]:
        return self._resolve(self._state, requests, now)  # one read: a swap applies next batch

    def shadows(
        self, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        return self._shadows(self._state, requests, now)

    def for_catalog(self, catalog: Catalog) -> CatalogArms:
        """The resolver of a pipeline deciding on ``catalog``: the arms built on it."""
        return CatalogArms(self, catalog)

    def state_for(self, catalog: Catalog) -> _State:
        """The arms built on ``catalog`` (the current or the previous one); for an older
        catalogue, whose pipeline still finishes a batch, the default arm alone."""
        for state in (self._state, self._previous):
            if state is not None and state.catalog is catalog:
                return state
        return _State(Assigner([]), {}, {}, None, None, catalog)

    def _resolve(
        self, state: _State, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[Arm]:
        default = Arm(self.name, self.holder.current.model, self.policy,
                      catalog=state.default_catalog)  # fmt: skip
        if not state.assigner:
            return [default] * len(requests)
        arms: dict[tuple[int, str], Arm] = {}  # one Arm object per recipe and batch
        out: list[Arm] = []
        for request in requests:
            hit = state.assigner.assign(request.touchpoint_id, request.unit, now)
            if hit is None:
                out.append(default)
                continue
            key = (hit.experiment, hit.arm.name)
            arm = arms.get(key)
            if arm is None:
                arm = arms[key] = state.recipes[key].arm()
            out.append(arm)
        return out

    def _shadows(
        self, state: _State, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        if not state.shadows:
            return ()
        arms: dict[tuple[int, str], Arm] = {}
        out: list[tuple[int, Arm]] = []
        for i, request in enumerate(requests):
            hit = state.assigner.assign(request.touchpoint_id, request.unit, now)
            if hit is None:
                continue
            for recipe in state.shadows.get(hit.experiment, ()):
                key = (hit.experiment, recipe.spec.name)
                arm = arms.get(key)
                if arm is None:
                    arm = arms[key] = recipe.arm()
                out.append((i, arm))
        return out

    # ------------------------------------------------------------ following the store

    def status(self) -> dict[str, Any]:
        """What this worker applies: the running experiments it decides by, whether default
        levers apply, its poll interval and its last failure to read or apply."""
        state = self._state
        return {
            "running": [p.experiment.name for p in state.assigner.placements],
            "default_levers": state.default_catalog is not None,
            "poll_seconds": self.poll_seconds,
            "last_error": self.last_error,
        }

    def refresh(self) -> bool:
        """Read the store; swap in the running set if it changed. False: unchanged.

        Raises whatever the store raises (the poller logs it and keeps the last set)."""
        if self.store is None:
            return False
        snapshot = self.store.snapshot()
        with self._lock:
            if snapshot.version == self._state.version and not self._state.incomplete:
                return False
            self._snapshot = snapshot
            if self._previous is not None:
                self._previous = self._build(snapshot, self._previous.catalog)
            self._state = self._build(snapshot, self.catalog)
            self._drop_unused_holders()
        running = [p.experiment.name for p in self._state.assigner.placements]
        logger.info("experiments running: %s", ", ".join(running) or "none")
        return True

    def rebase(self, catalog: Catalog) -> None:
        """Build the arms on ``catalog`` (the last read experiments, levers applied to it);
        the arms of the catalogue before stay for the batches its pipeline still decides."""
        with self._lock:
            snapshot = self._snapshot
            state = (
                self._build(snapshot, catalog)
                if snapshot is not None
                else _State(Assigner([]), {}, {}, None, None, catalog)
            )
            self._previous, self._state, self.catalog = self._state, state, catalog
            self._drop_unused_holders()

    def _build(self, snapshot: Snapshot, base: Catalog) -> _State:
        placements: list[Placement] = []
        incomplete = False
        recipes: dict[tuple[int, str], _Recipe] = {}
        shadows: dict[int, tuple[_Recipe, ...]] = {}
        for placement in snapshot.placements:
            exp = placement.experiment
            try:
                mine = [self._recipe(exp, spec, base) for spec in exp.arms]
            except Exception as exc:  # one bad experiment does not stop the others
                self.last_error = f"experiment {exp.name} not applied: {exc}"
                logger.error("%s (retried at the next poll)", self.last_error)
                incomplete = True
                continue
            k = len(placements)
            placements.append(placement)
            for recipe in mine:
                recipes[(k, recipe.spec.name)] = recipe
            shadow = tuple(r for r in mine if r.spec.kind == ArmKind.SHADOW)
            if shadow:
                shadows[k] = shadow
        catalog = levers_catalog(base, snapshot.default_levers)
        if not incomplete:
            self.last_error = None
        return _State(Assigner(placements), recipes, shadows, catalog, snapshot.version, base,
                      incomplete)  # fmt: skip

    def _recipe(self, exp: Experiment, spec: ArmSpec, base: Catalog) -> _Recipe:
        """The arm's recipe (:func:`experiments.recipes.arm_recipe`) with its model's holder;
        a recipe without a model ranks by the fallback's popularity, a control on purpose, so
        its decisions are not marked fallback."""
        made = arm_recipe(
            spec, Service(self.policy, base, self.policy_parameters, self.followed_alias)
        )
        if made.model is None:
            popular = PopularityScorer(self.holder.fallback.rates, reason=None)
            served = ServedModel(popular.model, NoMatrix(), popular)
            return _Recipe(spec, exp.name, made.policy, made.catalog, lambda: served)
        return _Recipe(spec, exp.name, made.policy, made.catalog, self.model_of(made.model))

    def model_of(self, ref: ModelRef) -> Callable[[], ServedModel]:
        """The current model of ``ref``'s holder (loaded now if it is a new one)."""
        holder = self.holder if ref.alias == self.followed_alias else self._holders.get(ref.key)
        if holder is None:
            if self.make_holder is None:
                raise NotFoundError(
                    f"model {ref.key} cannot be loaded: the service serves a local model "
                    "folder (only the champion is available to experiments)"
                )
            holder = self._holders[ref.key] = self.make_holder(ref)
        held = holder
        return lambda: held.current.model

    def _drop_unused_holders(self) -> None:
        used = {
            r.spec.model.key
            for r in self._state.recipes.values()
            if r.spec.kind not in (ArmKind.HOLDOUT_RANDOM, ArmKind.HOLDOUT_POPULARITY,
                                   ArmKind.HOLDOUT_CHAMPION)
        }  # fmt: skip
        for key in [k for k in self._holders if k not in used]:
            self._holders.pop(key).stop()

    def start_polling(self) -> None:
        """Read the store now and then every ``poll_seconds`` in a background thread."""
        try:
            self.refresh()
        except Exception as exc:
            self._poll_failed(exc)
        if self.store is not None:
            self._poller.start(self.poll_seconds)

    def _poll_failed(self, exc: Exception) -> None:
        self.last_error = f"experiment store unreadable: {type(exc).__name__}: {exc}"
        logger.warning("%s (keeping the last known experiments)", self.last_error)

    def stop(self) -> None:
        self._poller.stop()
        for holder in self._holders.values():
            holder.stop()
        if self.store is not None:
            self.store.close()


@dataclass(frozen=True)
class CatalogArms:
    """The arm resolver of a pipeline on one catalogue (:meth:`ExperimentArms.for_catalog`):
    the experiments as the shared resolver follows them, arms built on that catalogue."""

    arms: ExperimentArms
    catalog: Catalog

    @property
    def policy(self) -> Policy:
        return self.arms.policy

    def resolve(self, requests: Sequence[DecisionRequest], now: datetime) -> Sequence[Arm]:
        return self.arms._resolve(self.arms.state_for(self.catalog), requests, now)

    def shadows(
        self, requests: Sequence[DecisionRequest], now: datetime
    ) -> Sequence[tuple[int, Arm]]:
        return self.arms._shadows(self.arms.state_for(self.catalog), requests, now)
