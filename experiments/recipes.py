"""How an arm of each kind decides: its policy, its catalogue and the model that scores it.

One mapping for every consumer: the service's arm resolver
(:mod:`serving.experiment_arms`) turns it into the arm it serves, the what-if screening
(:mod:`experiments.screening`) into the recipe it replays on logged decisions, so a screened
arm is exactly the arm customers would get. By kind:

- ``treatment`` / ``control`` / ``shadow``: the arm's model, its policy (default the
  service's; a kind it names takes the service's parameters for those it leaves out) and its
  levers;
- ``holdout_random``: the champion scores, every slot is drawn uniformly among the eligible
  offers (epsilon 1);
- ``holdout_popularity``: eligibility + the popularity ranking of the fallback scorer, greedy
  (no model: :attr:`ArmRecipe.model` is None);
- ``holdout_champion``: the champion with the service's policy and no levers at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from experiments.definition import ArmKind, ArmSpec, Levers, ModelRef, PolicySettings
from experiments.levers import apply_levers
from recsys.arbitration import EpsilonGreedy, Policy, make_policy
from recsys.catalog import Catalog


@dataclass(frozen=True)
class ArmRecipe:
    """What one arm decides with.

    Attributes
    ----------
    policy : Policy
    catalog : Catalog or None
        The catalogue with the arm's levers applied; None = the pipeline's, exactly as
        outside experiments.
    model : ModelRef or None
        The registry model that scores; None = the popularity ranking (no model).
    """

    policy: Policy
    catalog: Catalog | None
    model: ModelRef | None


@dataclass(frozen=True)
class Service:
    """What an arm's recipe falls back on: the service's policy (``serving.policy``), its
    catalogue, the alias its champion follows (``model_alias``) and its parameters of every
    policy kind (:meth:`recsys.settings.ServingSettings.policy_parameters`; a kind missing
    here takes the policy's defaults)."""

    policy: Policy
    catalog: Catalog
    policy_parameters: Mapping[str, Mapping[str, float]]
    champion_alias: str = "champion"

    def policy_of(self, spec: PolicySettings) -> Policy:
        """The policy an arm's ``spec`` names, the service's where it names none.

        Raises
        ------
        ValueError
            Parameters the policy refuses.
        """
        kind = spec.chosen_kind
        if kind is None:
            return self.policy
        return make_policy(kind, **{**self.policy_parameters.get(kind, {}), **spec.params})

    @property
    def champion(self) -> ModelRef:
        return ModelRef(alias=self.champion_alias)


def levers_catalog(catalog: Catalog, levers: Levers) -> Catalog | None:
    """The catalogue an arm with ``levers`` decides over: None (the pipeline's, exactly as
    outside experiments) when there are no levers."""
    return None if levers.empty else apply_levers(catalog, levers)


def _as_written(spec: ArmSpec, service: Service) -> ArmRecipe:
    """treatment, control, shadow: the arm's model, policy (default the service's) and levers."""
    policy = service.policy_of(spec.policy)
    return ArmRecipe(policy, levers_catalog(service.catalog, spec.levers), spec.model)


def _random(spec: ArmSpec, service: Service) -> ArmRecipe:
    """Every slot drawn uniformly among the eligible offers (the champion only scores)."""
    return ArmRecipe(EpsilonGreedy(1.0), None, service.champion)


def _popularity(spec: ArmSpec, service: Service) -> ArmRecipe:
    """Eligibility + the fallback's popularity ranking, greedy."""
    return ArmRecipe(EpsilonGreedy(0.0), None, None)


def _champion(spec: ArmSpec, service: Service) -> ArmRecipe:
    """The champion with the service's policy and no levers (not even the default ones)."""
    return ArmRecipe(service.policy, None, service.champion)


#: How an arm of each kind decides: (arm, service) -> recipe.
RECIPES: dict[ArmKind, Callable[[ArmSpec, Service], ArmRecipe]] = {
    ArmKind.TREATMENT: _as_written,
    ArmKind.CONTROL: _as_written,
    ArmKind.SHADOW: _as_written,
    ArmKind.HOLDOUT_RANDOM: _random,
    ArmKind.HOLDOUT_POPULARITY: _popularity,
    ArmKind.HOLDOUT_CHAMPION: _champion,
}


def arm_recipe(spec: ArmSpec, service: Service) -> ArmRecipe:
    """The recipe of ``spec`` (see the module docstring)."""
    return RECIPES[spec.kind](spec, service)
