"""What-if screening of an experiment's arms on logged decisions, before any customer sees them.

Each arm becomes the recipe the service would decide it with (:func:`experiments.recipes.
arm_recipe`: policy, catalogue with the arm's levers, model), and :func:`training.screening.
screen` decides every logged round of the experiment's touchpoints again with it through the
decision pipeline and values it with the off-policy estimators on the logged propensities.
The result per arm (:class:`ArmScreening`: the chosen estimator's value and interval, the lift
over the logging policy, revenue, diagnostics, support warnings, the true value on generated
data) is written as JSON that ``recsys experiments report --screening`` shows beside the
online result.

``holdout_popularity`` arms are not screened: their popularity ranking reads no model matrix,
and the replay scores with matrix models only; they are listed under ``not_screened``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as validated

from experiments.definition import Experiment, ModelRef
from experiments.recipes import Service, arm_recipe
from recsys.decision import ModelInfo
from recsys.errors import ConfigError, DataError
from recsys.scoring import Scorer
from training.config import TrainingConfig
from training.encoding import Encoder
from training.ope import estimators
from training.pipeline import TrainingInputs
from training.policy_eval import PolicyValue
from training.screening import Recipe, Screening, screen

#: The estimator a screening reports unless told otherwise.
DEFAULT_ESTIMATOR = "snips"


@dataclasses.dataclass(frozen=True)
class ArmModel:
    """A registry model as screening scores it: its identity, scorer and matrix encoding."""

    info: ModelInfo
    scorer: Scorer
    encoder: Encoder
    probabilistic: bool = True


#: Loads the model an arm names (registry alias or version).
ModelLoader = Callable[[ModelRef], ArmModel]


@validated(frozen=True)
class ArmScreening:
    """One arm's what-if value on logged decisions (None where not known).

    ``value`` [``lower``, ``upper``] is ``estimator``'s acceptance per decision; ``lift`` its
    ratio to the logging policy's observed value (paired bootstrap interval); ``revenue`` the
    SNIPS revenue per decision; ``warnings`` say when the estimate rests on too little
    (``evaluation.min_*`` / ``max_weight``); ``true_value`` / ``true_revenue`` come from the
    ground truth of generated data.
    """

    value: float
    lower: float | None = None
    upper: float | None = None
    estimator: str = DEFAULT_ESTIMATOR
    lift: float | None = None
    lift_lower: float | None = None
    lift_upper: float | None = None
    revenue: float | None = None
    revenue_lower: float | None = None
    revenue_upper: float | None = None
    matched_rounds: int | None = None
    positives: int | None = None
    effective_sample_size: float | None = None
    max_weight: float | None = None
    warnings: tuple[str, ...] = ()
    true_value: float | None = None
    true_revenue: float | None = None


@validated(frozen=True)
class ExperimentScreening:
    """An experiment's screening: every arm valued on the same logged rounds."""

    experiment: str
    estimator: str
    rounds: int
    start: datetime
    end: datetime
    logging_value: float
    arms: dict[str, ArmScreening]
    not_screened: dict[str, str] = Field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(TypeAdapter(ExperimentScreening).dump_python(self, mode="json"))


def screen_experiment(
    experiment: Experiment,
    inputs: TrainingInputs,
    config: TrainingConfig,
    service: Service,
    load_model: ModelLoader,
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    since: datetime | None = None,
) -> ExperimentScreening:
    """Value every arm of ``experiment`` on the logged decisions of its touchpoints.

    Parameters
    ----------
    experiment : Experiment
    inputs : TrainingInputs
        The warehouse's logged decisions (with candidates and replay).
    config : TrainingConfig
        Bootstrap, clipping, round sample and support limits (``evaluation``).
    service : Service
        The service's policy, catalogue and champion alias (what arms fall back on).
    load_model : callable(ModelRef) -> ArmModel
        Loads each distinct model the arms name, once.
    estimator : str
        The estimator reported (``ips``, ``snips``, ``dr``, ``ips_clipped``, ``switch_dr``).
    since : datetime, optional
        Screen only decisions from then on.

    Raises
    ------
    ConfigError
        Unknown ``estimator``, or no arm that screening can replay.
    DataError
        No logged decision at the experiment's touchpoints (from ``since`` on).
    """
    known = sorted(estimators(config.evaluation.clip_weight))
    if estimator not in known:
        raise ConfigError(f"`estimator` must be one of {known}, got {estimator!r}")
    recipes: list[Recipe] = []
    skipped: dict[str, str] = {}
    models: dict[str, ArmModel] = {}
    for spec in experiment.arms:
        made = arm_recipe(spec, service)
        if made.model is None:
            skipped[spec.name] = (
                "the popularity ranking reads no model matrix; screening replays model arms"
            )
            continue
        model = models.get(made.model.key)
        if model is None:
            model = models[made.model.key] = load_model(made.model)
        recipe = Recipe(spec.name, model.info, model.scorer, model.encoder, made.policy,
                        made.catalog, model.probabilistic)  # fmt: skip
        recipes.append(recipe)
    if not recipes:
        raise ConfigError(
            f"experiment {experiment.name} must have an arm with a model to screen, got only "
            f"{sorted(skipped)}"
        )
    frame = inputs.frame
    at_touchpoints = frame[frame["touchpoint_id"].isin(experiment.touchpoints)]
    if at_touchpoints.empty:
        raise DataError(
            f"no logged decision at the experiment's touchpoints {list(experiment.touchpoints)}"
        )
    mine = dataclasses.replace(inputs, frame=at_touchpoints.reset_index(drop=True))
    screening = screen(mine, recipes, config, since=since)
    arms = {
        name: _arm(value, estimator, config)
        for name, value in screening.evaluation.policies.items()
    }
    return _result(experiment.name, estimator, screening, arms, skipped)


def _arm(policy: PolicyValue, estimator: str, config: TrainingConfig) -> ArmScreening:
    est = policy.estimates[estimator]
    lift = policy.lifts.get(estimator)
    revenue = policy.estimates.get("snips_revenue")
    # judged on the raw importance weights, as training's evaluation warns
    diagnostics = est.diagnostics or policy.estimates["ips"].diagnostics
    problems = (
        () if diagnostics is None else diagnostics.problems(config.evaluation.support_limits())
    )
    return ArmScreening(
        value=est.value,
        lower=est.lower,
        upper=est.upper,
        estimator=estimator,
        lift=None if lift is None else lift.value,
        lift_lower=None if lift is None else lift.lower,
        lift_upper=None if lift is None else lift.upper,
        revenue=None if revenue is None else revenue.value,
        revenue_lower=None if revenue is None else revenue.lower,
        revenue_upper=None if revenue is None else revenue.upper,
        matched_rounds=None if diagnostics is None else diagnostics.matched,
        positives=None if diagnostics is None else diagnostics.positives,
        effective_sample_size=None if diagnostics is None else diagnostics.effective_sample_size,
        max_weight=None if diagnostics is None else diagnostics.max_weight,
        warnings=tuple(problems),
        true_value=policy.true_value,
        true_revenue=None if policy.true is None else policy.true.revenue,
    )


def _result(
    name: str,
    estimator: str,
    screening: Screening,
    arms: dict[str, ArmScreening],
    skipped: dict[str, str],
) -> ExperimentScreening:
    return ExperimentScreening(
        experiment=name,
        estimator=estimator,
        rounds=screening.rounds,
        start=screening.start,
        end=screening.end,
        logging_value=screening.evaluation.logging.value,
        arms=arms,
        not_screened=skipped,
    )


def read_screening(path: Path) -> dict[str, ArmScreening]:
    """The per-arm screening of a JSON file: written by ``recsys experiments screen``, or a
    plain ``{arm: value}`` (a value from elsewhere, without interval or diagnostics).

    Raises
    ------
    ConfigError
        The file is not JSON or matches neither shape (the message names the field).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"screening file {path} must be JSON, got: {exc}") from None
    return parse_screening(data, str(path))


def parse_screening(data: Any, source: str = "screening") -> dict[str, ArmScreening]:
    """See :func:`read_screening`."""
    try:
        if isinstance(data, Mapping) and "arms" in data:
            return dict(TypeAdapter(ExperimentScreening).validate_python(data).arms)
        plain = TypeAdapter(dict[str, float]).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(
            f"{source}: `{where}` {first['msg']}, got {first.get('input')!r} (expected the "
            "output of `recsys experiments screen` or {arm: value})"
        ) from None
    return {arm: ArmScreening(value=value, estimator="given") for arm, value in plain.items()}
