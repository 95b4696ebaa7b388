"""What an experiment readout reads: the arms, metrics, window and options of one analysis
(:class:`AnalysisPlan`), from a YAML file or a stored experiment's definition."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from experiments.definition import Guardrail
from experiments.metrics import metric
from experiments.store import StoredExperiment
from recsys.errors import ConfigError

if TYPE_CHECKING:  # the screening's types only: analysis needs no model nor replay
    pass


class ArmPlan(BaseModel):
    """A served arm: its name, planned share and kind (the recipe is the experiment's)."""

    # model, policy and levers belong to the experiment definition; the readout reads none
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    share: float = Field(gt=0, description="planned share of the units (any scale)")
    kind: str = "treatment"


#: A guardrail of the plan: the definition's (one model for both).
GuardrailPlan = Guardrail


class AnalysisPlan(BaseModel):
    """What to read and how: the experiment's arms, dates, metrics and statistical settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    experiment_id: str | None = Field(
        default=None, description="decisions.experiment_id (default: name)"
    )
    arms: tuple[ArmPlan, ...] = Field(min_length=2)
    control: str = Field(default="", description="default: the arm of kind control")
    start: datetime
    end: datetime | None = None
    primary_metric: str = "acceptance_rate"
    secondary_metrics: tuple[str, ...] = (
        "click_rate",
        "conversion_rate",
        "revenue_per_decision",
        "revenue_per_customer",
    )
    guardrails: tuple[GuardrailPlan, ...] = (
        GuardrailPlan(metric="dismiss_rate", max_relative_change=0.10),
        GuardrailPlan(metric="complaint_rate", max_relative_change=0.10),
        GuardrailPlan(metric="contacts_per_customer", max_relative_change=0.10),
    )
    pre_period_days: float = Field(default=28.0, ge=0)
    attribution_days: float = Field(default=7.0, gt=0)
    peeks: int = Field(default=20, ge=1, le=200)
    planned_units: int | None = Field(
        default=None, gt=0, description="units where the confidence sequence is tightest"
    )
    relative_mde: float = Field(default=0.05, gt=0)
    min_units: int = Field(
        default=100, ge=2, description="units each arm needs before a verdict is given"
    )
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    correction: Literal["holm", "fdr_bh"] = "holm"
    cuped: bool = True

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _check(self) -> AnalysisPlan:
        names = [a.name for a in self.arms]
        if not self.control:
            controls = [a.name for a in self.arms if a.kind == "control"]
            if len(controls) != 1:
                raise ValueError(
                    f"`control` must name the control arm (or exactly one arm must have kind "
                    f"control), got {len(controls)} arms of kind control"
                )
            object.__setattr__(self, "control", controls[0])
        if len(set(names)) != len(names):
            raise ValueError(f"`arms` names must be unique, got {names}")
        if self.control not in names:
            raise ValueError(f"`control` must be one of the arms {names}, got {self.control!r}")
        for name in (self.primary_metric, *self.secondary_metrics):
            metric(name)
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"`end` must be after `start` ({self.start}), got {self.end}")
        return self

    @property
    def experiment(self) -> str:
        return self.experiment_id or self.name


#: Fields of an experiment definition (docs/experiments.md) that the readout does not use.
_DEFINITION_ONLY = ("hypothesis", "touchpoints", "layer", "traffic", "salt", "status")


def stored_plan(stored: StoredExperiment, **options: Any) -> AnalysisPlan:
    """The plan of an experiment from the store: its definition, starting when it was started
    unless it names its own start; ``options`` (not None) override its fields."""
    definition = stored.experiment.model_dump(mode="json")
    if definition.get("start") is None:
        started = [h["at"] for h in stored.history if h.get("action") == "start"]
        definition["start"] = started[0] if started else None
    return load_plan(None, definition, **options)


def load_plan(
    path: str | Path | None = None,
    definition: Mapping[str, Any] | None = None,
    **options: Any,
) -> AnalysisPlan:
    """The analysis plan from a YAML file or a stored experiment's ``definition``, with
    ``options`` (not None) overriding its fields.

    Raises
    ------
    ConfigError
        If the file is missing or a field is invalid (the message names the field).
    """
    import yaml
    from pydantic import ValidationError

    data: dict[str, Any] = dict(definition or {})
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"`plan` must name a YAML file, got {str(path)!r}")
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"`plan` {path} must hold a mapping, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in options.items() if v is not None})
    # an experiment definition file works as a plan: what only decides is not read here, and
    # shadow arms are never served (no exposure to analyse)
    for key in _DEFINITION_ONLY:
        data.pop(key, None)
    if isinstance(data.get("arms"), list):
        data["arms"] = [
            a for a in data["arms"] if not (isinstance(a, dict) and a.get("kind") == "shadow")
        ]
    try:
        return AnalysisPlan(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in e['loc']) or 'plan'}`: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid experiment plan: {problems}") from None
