"""Training configuration: typed, validated, loaded from YAML over the packaged defaults.

Every key is declared; an unknown key or a bad value raises :class:`recsys.errors.ConfigError`
naming the key (``model.objective``), what is accepted and what came.
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from recsys.arbitration import DEFAULT_POLICY, EpsilonGreedy, Policy, configured_policy
from recsys.contract import OUTCOMES
from recsys.errors import ConfigError
from recsys.settings import ServingSettings
from training.ope import SupportLimits

logger = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    start: datetime | None = None
    end: datetime | None = None
    attribution_days: int = Field(7, ge=0)
    positive_outcomes: tuple[str, ...] = ("accept", "convert")
    truth_dir: Path | None = None
    min_examples: int = Field(200, ge=1)
    min_positives: int = Field(10, ge=1)
    engine: Literal["duckdb", "spark"] = "duckdb"

    @field_validator("positive_outcomes")
    @classmethod
    def _known_outcomes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(o not in OUTCOMES for o in value):
            raise ValueError(f"must be a non-empty subset of {list(OUTCOMES)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.start and self.end and self.start >= self.end:
            raise ValueError(f"start must be before end, got {self.start} >= {self.end}")
        return self


class SplitConfig(_Strict):
    valid_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "valid_fraction + test_fraction must leave at least 10% for training, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        return self


class LogisticRegressionConfig(_Strict):
    C: float = Field(1.0, gt=0)
    max_iter: int = Field(500, ge=1)


class ModelConfig(_Strict):
    """The registered model: ``kind`` names it in ``training.models.MODELS``.

    ``objective``, ``num_boost_round``, ``early_stopping_rounds`` and ``params`` configure
    ``lightgbm``; the ``logistic_regression`` section configures the scikit-learn model.
    """

    kind: Literal["lightgbm", "logistic_regression"] = "lightgbm"
    objective: Literal["binary", "lambdarank"] = "binary"
    num_boost_round: int = Field(500, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    logistic_regression: LogisticRegressionConfig = LogisticRegressionConfig()
    #: After evaluation, refit the registered model on train + valid + test (LightGBM with
    #: the number of trees early stopping found); the evaluation stays the held-out model's.
    refit_on_all_data: bool = True
    #: Test the model refit on train + valid (LightGBM with the trees early stopping found on
    #: valid), as the registered one is refit on everything: the evaluation then describes a
    #: model that has seen the data up to the test period.
    refit_before_test: bool = True

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.objective == "lambdarank" and self.kind != "lightgbm":
            raise ValueError(f"objective lambdarank needs kind lightgbm, got kind {self.kind}")
        return self

    def scorer_params(self) -> dict[str, Any]:
        """Constructor arguments of the ``kind`` model (without ``seed``)."""
        by_kind: dict[str, dict[str, Any]] = {
            "lightgbm": {
                "objective": self.objective,
                "params": dict(self.params),
                "num_boost_round": self.num_boost_round,
                "early_stopping_rounds": self.early_stopping_rounds,
            },
            "logistic_regression": self.logistic_regression.model_dump(),
        }
        return by_kind[self.kind]


class EvaluationConfig(_Strict):
    k: tuple[int, ...] = (1, 3, 5)
    calibration_bins: int = Field(10, ge=2)
    bootstrap_samples: int = Field(300, ge=10)
    confidence: float = Field(0.95, gt=0, lt=1)
    max_ope_rounds: int = Field(10_000, ge=10)
    logging_policy: str | None = None
    #: Exploration share of an epsilon-greedy served policy replayed on the test rounds
    #: (0 = greedy; set it with ``served_policy: epsilon_greedy``); None = the service's
    #: setting ``serving.epsilon`` (``recsys train`` resolves it).
    served_epsilon: float | None = Field(None, ge=0, le=1)
    #: The served policy's kind (:data:`recsys.arbitration.POLICIES`) and parameters beside
    #: ``served_epsilon``; None = the service's settings ``serving.policy`` (default
    #: :data:`recsys.arbitration.DEFAULT_POLICY`) and ``serving.policy_params``
    #: (``recsys train`` resolves them).
    served_policy: str | None = None
    served_policy_params: dict[str, float] | None = None
    #: What a policy is judged by: ``revenue`` (accepted offers' value; the service ranks by
    #: P(accept) x value x weight) or ``acceptance`` (the share of offers accepted).
    objective: Literal["revenue", "acceptance"] = "revenue"
    # What an off-policy estimate must rest on (below: a warning), and the weight threshold
    # of the clipped variants (``ips_clipped``, ``switch_dr``).
    min_matched_rounds: int = Field(100, ge=0)
    min_positives: int = Field(10, ge=0)
    min_effective_sample_size: float = Field(100.0, ge=0)
    max_weight: float = Field(1000.0, gt=0)
    clip_weight: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _check_served_policy(self) -> EvaluationConfig:
        if self.served_policy is not None:  # an unknown kind or parameters fail here
            configured_policy(
                self.served_policy, self.served_epsilon or 0.0, self.served_policy_params or {}
            )
        # an exploration share for a policy that does not read it would be ignored (with no
        # `served_policy`, the service's policy decides; `recsys train` says if it ignores it)
        served = self.served_policy
        if self.served_epsilon is not None and served not in (None, EpsilonGreedy.kind):
            raise ValueError(
                f"`served_epsilon` is read by policy {EpsilonGreedy.kind} only, got "
                f"`served_policy` {served!r}: set `served_policy` to "
                f"{EpsilonGreedy.kind} with it (null = the service's policy, "
                f"{DEFAULT_POLICY} by default), or leave `served_epsilon` out"
            )
        return self

    def served_slate_policy(self, serving: ServingSettings) -> Policy:
        """The policy the served replay uses: ``served_policy`` / ``served_epsilon`` /
        ``served_policy_params``, each where not set the service's (``serving``)."""
        kind = self.served_policy or serving.policy
        return configured_policy(
            kind,
            serving.epsilon if self.served_epsilon is None else self.served_epsilon,
            serving.policy_params.get(kind, {})
            if self.served_policy_params is None
            else self.served_policy_params,
        )

    def support_limits(self) -> SupportLimits:
        return SupportLimits(
            min_matched_rounds=self.min_matched_rounds,
            min_positives=self.min_positives,
            min_effective_sample_size=self.min_effective_sample_size,
            max_weight=self.max_weight,
        )

    @field_validator("k")
    @classmethod
    def _positive_k(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError("must be a non-empty list of integers >= 1")
        return value


class MlflowConfig(_Strict):
    register_model: bool = True
    log_plots: bool = True


class GateConfig(_Strict):
    """The quality gate before the registry (:mod:`training.gate`)."""

    enabled: bool = True
    #: Off-policy estimator whose interval decides "loses to" (on the label).
    estimator: Literal["ips", "snips", "dr", "ips_clipped", "switch_dr"] = "snips"
    #: The model's greedy policy must not lose to these: ``logging`` (its observed value),
    #: ``popularity`` (the baseline's estimate, when it is trained).
    compare_to: tuple[Literal["logging", "popularity"], ...] = ("logging", "popularity")
    #: The AUC interval's lower bound must be above this.
    min_auc: float = Field(0.5, ge=0, lt=1)


BASELINE_NAMES = ("random", "popularity", "logistic_regression")


class TrainingConfig(_Strict):
    seed: int = 7
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    baselines: tuple[Literal["random", "popularity", "logistic_regression"], ...] = BASELINE_NAMES
    evaluation: EvaluationConfig = EvaluationConfig()
    mlflow: MlflowConfig = MlflowConfig()
    gate: GateConfig = GateConfig()

    def flat(self) -> dict[str, str]:
        """The whole config as ``{"model.params.learning_rate": "0.05", ...}`` (MLflow params)."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = str(value)
    return flat


def default_config_dict() -> dict[str, Any]:
    text = resources.files("training").joinpath("default_config.yaml").read_text()
    return yaml.safe_load(text)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        # model.params is replaced as a whole only where the user gives it; keys merge.
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """The defaults with ``overrides`` merged in (nested dicts merge key by key).

    Raises
    ------
    ConfigError
        If a key is unknown or a value is invalid; the message names the key.
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(
            f"the training config must be a mapping of keys, got {type(overrides).__name__}"
        )
    tree = _merge(default_config_dict(), overrides or {})
    try:
        return TrainingConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: str | Path | None = None) -> TrainingConfig:
    """Load a YAML config file over the packaged defaults (``training/default_config.yaml``)."""
    if path is None:
        return build_config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    try:
        return build_config(tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key `{key}`")
        elif err["type"] == "value_error" and not isinstance(err.get("input"), dict):
            lines.append(
                f"`{key}` {err['msg'].removeprefix('Value error, ')}, got {err['input']!r}"
            )
        elif err["type"] == "value_error":
            lines.append(f"`{key}`: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"`{key}`: {err['msg']}, got {err.get('input')!r}")
    return "; ".join(lines)
