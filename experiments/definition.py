"""An experiment as data: what marketers write in YAML, validated field by field.

An :class:`Experiment` names its hypothesis, touchpoints, dates, layer, salt, metrics and
:class:`ArmSpec` s. An arm is a complete decision recipe: a model (registry alias or version), a
policy and its settings, and optional :class:`Levers` (offer weights, contact caps, excluded
offers). Kinds of arm (:class:`ArmKind`): ``treatment`` and ``control`` (the recipe as written),
the holdout controls ``holdout_random`` (uniformly random among eligible offers),
``holdout_popularity`` (eligibility + the popularity ranking of the fallback) and
``holdout_champion`` (the champion, no levers), and ``shadow`` (decided and logged for every
request of the experiment, never served; it takes no traffic share).

Bad input raises :class:`ExperimentDefinitionError`, one line per field: the field's path, what
was expected and what came (``arms[1].share: Input should be less than or equal to 1, got 1.5``).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from experiments.metrics import METRICS
from recsys.arbitration import POLICIES, EpsilonGreedy, make_policy, policy_parameters
from recsys.errors import ConfigError

#: How many buckets units are hashed into (as GrowthBook, Eppo and Statsig do).
BUCKETS = 10_000
#: Tolerance of "served shares sum to 1".
SHARE_TOLERANCE = 1e-6

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_NAME_RULE = "1-63 lowercase letters, digits, '_', '.' or '-', starting with a letter or digit"


class ArmKind(StrEnum):
    TREATMENT = "treatment"
    CONTROL = "control"
    HOLDOUT_RANDOM = "holdout_random"
    HOLDOUT_POPULARITY = "holdout_popularity"
    HOLDOUT_CHAMPION = "holdout_champion"
    SHADOW = "shadow"


#: Kinds whose recipe is fixed by the kind: they take no model, policy or levers.
FIXED_RECIPES = (ArmKind.HOLDOUT_RANDOM, ArmKind.HOLDOUT_POPULARITY, ArmKind.HOLDOUT_CHAMPION)


class Status(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"
    ARCHIVED = "archived"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} of {_NAME_RULE}")
    return value


class CapOverride(_Strict):
    """A contact cap: at most ``per_customer`` contacts in ``window_days``."""

    per_customer: int = Field(ge=1)
    window_days: int = Field(ge=1)


class Levers(_Strict):
    """What an arm changes in the catalogue it decides over.

    ``offer_weights`` multiply the offer's weight (priority = P(accept) x value x weight);
    ``caps`` replace the offer's contact cap; ``excluded_offers`` are never candidates.
    """

    offer_weights: dict[str, float] = Field(default_factory=dict)
    caps: dict[str, CapOverride] = Field(default_factory=dict)
    excluded_offers: tuple[str, ...] = ()

    @field_validator("offer_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for offer_id, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"weights > 0 (offer {offer_id!r} has {weight})")
        return weights

    @property
    def empty(self) -> bool:
        return not (self.offer_weights or self.caps or self.excluded_offers)

    def offer_ids(self) -> set[str]:
        """Every offer the levers name."""
        return {*self.offer_weights, *self.caps, *self.excluded_offers}


class ModelRef(_Strict):
    """A model of the registry by alias (``champion``, ``challenger``) or by version."""

    alias: str | None = None
    version: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_of(self) -> ModelRef:
        if (self.alias is None) == (self.version is None):
            raise ValueError("exactly one of `alias` or `version`")
        return self

    @property
    def key(self) -> str:
        """``@alias`` or ``vN``: how logs and the store name the model."""
        return f"@{self.alias}" if self.alias is not None else f"v{self.version}"


CHAMPION = ModelRef(alias="champion")


class PolicySettings(BaseModel):
    """The slate policy of an arm: ``kind``, a policy of :data:`recsys.arbitration.POLICIES`,
    and that policy's parameters beside it, checked by the policy
    (``{kind: softmax, temperature: 0.05}``, ``{kind: epsilon_greedy, epsilon: 0.1}``).

    A parameter left out is the service's for that kind (``serving.policy_params``, and
    ``serving.epsilon`` for epsilon-greedy); no kind and no parameters = the service's policy
    (``serving.policy``); parameters without a kind are epsilon-greedy's (``{epsilon: 0}``:
    greedy), as before arms could choose the kind.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str | None = None

    @model_validator(mode="after")
    def _check_parameters(self) -> PolicySettings:
        for name, value in (self.model_extra or {}).items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise PydanticCustomError(
                    "policy_parameter", f"`{name}` must be a number, got {value!r}"
                )
        kind = self.chosen_kind
        if kind is None:
            return self
        if kind not in POLICIES:
            raise PydanticCustomError(
                "policy_kind", f"`kind` must be one of {', '.join(POLICIES)}, got {kind!r}"
            )
        unknown = sorted(set(self.params) - set(policy_parameters(kind)))
        if unknown:
            raise PydanticCustomError(
                "policy_parameter",
                f"policy {kind} takes {', '.join(policy_parameters(kind))}, got "
                + ", ".join(f"`{name}`" for name in unknown),
            )
        try:
            make_policy(kind, **self.params)
        except ValueError as exc:  # the policy's own message names the parameter
            raise PydanticCustomError("policy_parameter", f"policy {kind}: {exc}") from None
        return self

    @property
    def params(self) -> dict[str, float]:
        """The parameters the arm sets (None = the service's: left out)."""
        return {k: float(v) for k, v in (self.model_extra or {}).items() if v is not None}

    @property
    def chosen_kind(self) -> str | None:
        """The kind the arm names (epsilon-greedy when it gives parameters only); None = the
        service's policy."""
        if self.kind is None and self.params:
            return EpsilonGreedy.kind
        return self.kind

    @property
    def given(self) -> bool:
        """Whether the arm says anything about its policy."""
        return self.chosen_kind is not None


#: An arm's policy as stored before arms chose a policy kind when it set none.
_STORED_NO_POLICY = {"kind": EpsilonGreedy.kind, "epsilon": None}


class ArmSpec(_Strict):
    """One arm: its kind, traffic share and recipe."""

    name: str
    kind: ArmKind = ArmKind.TREATMENT
    share: float = Field(default=0.0, ge=0.0, le=1.0)
    description: str = ""
    model: ModelRef = CHAMPION
    policy: PolicySettings = PolicySettings()
    levers: Levers = Levers()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value, "an arm name")

    @model_validator(mode="before")
    @classmethod
    def _stored_before_policy_kinds(cls, data: Any) -> Any:
        # Definitions stored before arms chose a policy kind name this one on every arm: it
        # said "the service's policy" (whatever `serving.policy` is), as no policy says now.
        if isinstance(data, dict) and data.get("policy") == _STORED_NO_POLICY:
            return {k: v for k, v in data.items() if k != "policy"}
        return data

    @model_validator(mode="after")
    def _recipe_fits_kind(self) -> ArmSpec:
        if self.kind in FIXED_RECIPES:
            given = ["model"] if self.model != CHAMPION else []
            if self.policy.given:
                given.append("policy")
            if not self.levers.empty:
                given.append("levers")
            if given:
                raise ValueError(
                    f"a {self.kind} arm without "
                    + ", ".join(f"`{g}`" for g in given)
                    + " (its recipe is fixed by its kind)"
                )
        if self.kind == ArmKind.SHADOW and self.share != 0:
            raise ValueError("a shadow arm with `share` 0 or left out (it is never served)")
        if self.kind != ArmKind.SHADOW and self.share <= 0:
            raise ValueError(f"a {self.kind} arm with `share` > 0 (it is served)")
        return self

    @property
    def served(self) -> bool:
        return self.kind != ArmKind.SHADOW


class Guardrail(_Strict):
    """A metric that must not get worse: bounds on the arm's value and/or on its change.

    ``max`` / ``min``: the arm's value must stay at or below / above (breach when its point
    estimate is beyond, e.g. dismiss_rate <= 0.05). ``max_relative_change``: the largest
    relative worsening against the control (breach when the whole confidence sequence is
    beyond it, warning when the point estimate is).
    """

    metric: str
    max: float | None = None
    min: float | None = None
    max_relative_change: float | None = Field(default=None, ge=0)

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        return _known_metric(value)

    @model_validator(mode="after")
    def _threshold(self) -> Guardrail:
        if self.max is None and self.min is None and self.max_relative_change is None:
            raise ValueError("a threshold: `max`, `min` and/or `max_relative_change`")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"`min` <= `max` (min {self.min}, max {self.max})")
        return self


def _known_metric(value: str) -> str:
    if value not in METRICS:
        raise ValueError(f"a metric among {', '.join(METRICS)}")
    return value


class Experiment(_Strict):
    """An experiment definition (see the module docstring and docs/experiments.md)."""

    name: str
    hypothesis: str = Field(min_length=1)
    touchpoints: tuple[str, ...] = Field(min_length=1)
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    layer: str = "default"
    traffic: float = Field(default=1.0, gt=0.0, le=1.0)
    salt: str | None = None
    primary_metric: str = "acceptance_rate"
    secondary_metrics: tuple[str, ...] = ()
    guardrails: tuple[Guardrail, ...] = ()
    arms: tuple[ArmSpec, ...] = Field(min_length=1)

    @field_validator("name", "layer")
    @classmethod
    def _names(cls, value: str) -> str:
        return _check_name(value, "a name")

    @field_validator("primary_metric")
    @classmethod
    def _primary(cls, value: str) -> str:
        return _known_metric(value)

    @field_validator("secondary_metrics")
    @classmethod
    def _secondary(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            _known_metric(value)
        return values

    @field_validator("touchpoints")
    @classmethod
    def _distinct_touchpoints(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(values)) != len(values):
            raise ValueError("distinct touchpoints")
        return values

    @model_validator(mode="after")
    def _arms_and_dates(self) -> Experiment:
        names = [a.name for a in self.arms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"`arms[].name`: expected distinct names, got {', '.join(twice)} twice"
            )
        served = [a for a in self.arms if a.served]
        if not served:
            raise ValueError("`arms`: expected at least one served (non-shadow) arm, got none")
        total = sum(a.share for a in served)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(
                "`arms[].share`: expected the served arms' shares to sum to 1, got "
                + " + ".join(f"{a.name} {a.share:g}" for a in served)
                + f" = {total:g}"
            )
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(
                f"`end`: expected a time after `start` ({self.start.isoformat()}), got "
                f"{self.end.isoformat()}"
            )
        return self

    @property
    def id(self) -> str:
        return self.name

    @property
    def assignment_salt(self) -> str:
        """The salt of arm assignment (default: the experiment's name)."""
        return self.salt if self.salt is not None else self.name

    def arm(self, name: str) -> ArmSpec:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ConfigError(
            f"`arm` must be one of {', '.join(a.name for a in self.arms)} "
            f"(experiment {self.name}), got {name!r}"
        )

    def active_at(self, when: datetime) -> bool:
        """Within ``start`` .. ``end`` (open ends are open)."""
        if self.start is not None and when < self.start:
            return False
        return not (self.end is not None and when >= self.end)

    def check_catalog(self, offer_ids: set[str], touchpoint_ids: set[str]) -> None:
        """Refuse touchpoints and lever offers the catalogue does not know.

        Raises
        ------
        ExperimentDefinitionError
        """
        problems = [
            _line(f"touchpoints[{i}]", "a touchpoint of the catalogue", tp)
            for i, tp in enumerate(self.touchpoints)
            if tp not in touchpoint_ids
        ]
        for i, arm in enumerate(self.arms):
            for offer_id in sorted(arm.levers.offer_ids() - offer_ids):
                problems.append(_line(f"arms[{i}].levers", "offers of the catalogue", offer_id))
        if problems:
            raise ExperimentDefinitionError(self.name, problems)


class ExperimentDefinitionError(ConfigError):
    """An experiment definition with bad fields; ``problems`` has one line per field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid experiment:\n  " + "\n  ".join(problems))


def _line(field: str, expected: str, received: Any) -> str:
    return f"`{field}`: expected {expected}, got {received!r}"


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "model-")) or part in ("str", "int", "float"):
            continue  # pydantic's validator labels, not fields
        else:
            out += f".{part}" if out else part
    return out or "(experiment)"


def parse_experiment(data: Any, source: str = "experiment") -> Experiment:
    """Validate a mapping (parsed YAML or JSON) as an :class:`Experiment`.

    Raises
    ------
    ExperimentDefinitionError
        One line per bad field: its path, what was expected and what came.
    """
    if not isinstance(data, dict):
        raise ExperimentDefinitionError(
            source, [_line("(experiment)", "a mapping of fields", type(data).__name__)]
        )
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field, received = _loc(error["loc"]), error.get("input")
            if error["type"] != "value_error":  # pydantic's own: "Input should be ..."
                message = str(error["msg"])
            elif field == "(experiment)":  # a rule over several fields names them itself
                problems.append(str(error["ctx"]["error"]))
                continue
            else:  # ours say what was expected
                message = f"expected {error['ctx']['error']}"
            if isinstance(received, dict):
                problems.append(f"`{field}`: {message}")  # a whole mapping: the message says
            else:
                problems.append(f"`{field}`: {message}, got {received!r}")
        raise ExperimentDefinitionError(source, problems) from None


def load_experiment(path: str | Path, **overrides: Any) -> Experiment:
    """Read and validate an experiment YAML file; ``overrides`` (not None) replace its fields
    (e.g. ``start`` given on the command line).

    Raises
    ------
    ExperimentDefinitionError
        Unreadable YAML or bad fields (the file named in the message).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExperimentDefinitionError(str(path), [f"cannot read the file: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ExperimentDefinitionError(str(path), [f"not valid YAML: {exc}"]) from None
    if isinstance(data, dict):
        data.update({k: v for k, v in overrides.items() if v is not None})
    return parse_experiment(data, str(path))
