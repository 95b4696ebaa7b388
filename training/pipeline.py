"""Train the model and the baselines on a time split and evaluate them; no I/O, no MLflow.

:func:`train_and_evaluate` takes an already built training set (:class:`TrainingInputs`) so
it runs the same on the warehouse, on the Open Bandit Dataset and on test factories.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.decision import ModelInfo
from recsys.errors import ConfigError, DataError
from recsys.settings import ServingSettings
from training.config import TrainingConfig
from training.encoding import Encoder
from training.evaluation import offline_metrics
from training.examples import META_COLUMNS, Examples
from training.metrics import Reliability, reliability
from training.models import Scorer, ServableScorer, make_scorer
from training.policy_eval import (
    OBJECTIVES,
    PolicyEvaluation,
    TargetPolicy,
    TrueValue,
    evaluate_policies,
    first_shown,
)
from training.progress import progress_bar
from training.served import SERVED, ReplayBuilder, ServedRounds, served_rounds
from training.split import TimeSplit, time_split

logger = logging.getLogger(__name__)

#: Candidate rows of the given rounds (first shown row of each test decision): a frame with one
#: row per (decision, candidate offer) and at least ``decision_id, offer_id, touchpoint_id``,
#: and their model matrix, shape (n_candidates, n_columns), encoded by the given encoder.
CandidateBuilder = Callable[[pd.DataFrame, Encoder], tuple[pd.DataFrame, np.ndarray]]
#: Fixes the model columns and vocabularies from the training periods' rows.
EncoderFactory = Callable[[pd.DataFrame], Encoder]


@dataclass(frozen=True)
class TrainingInputs:
    """A built training set and what evaluation needs beside it.

    Attributes
    ----------
    frame : DataFrame
        ``META_COLUMNS`` plus model input columns, one row per shown offer.
    encoder_factory : EncoderFactory
        Fitted on the train + validation rows; encodes every split and the candidates.
    candidates : CandidateBuilder, optional
        Without it, no off-policy evaluation.
    replay : ReplayBuilder, optional
        With it (and ``candidates``), the served policy is evaluated too: every test round
        decided again by the decision pipeline (:mod:`training.served`), reported as ``served``.
    truth : DataFrame, optional
        ``decision_id, offer_id, p_accept`` of every candidate (generated data).
    offers : DataFrame, optional
        The offer catalogue at training time (logged as a snapshot).
    source : str
        Where the data came from (logged as a param).
    """

    frame: pd.DataFrame
    encoder_factory: EncoderFactory
    candidates: CandidateBuilder | None = None
    truth: pd.DataFrame | None = None
    offers: pd.DataFrame | None = None
    source: str = ""
    replay: ReplayBuilder | None = None


@dataclass(frozen=True)
class RegisteredModel:
    """The model that goes to the registry and how it was fitted.

    With ``model.refit_on_all_data`` it is a new model of the same kind refit on every row
    (train + valid + test) with an encoder fitted on every row; otherwise the held-out model
    that was evaluated, with its encoder.

    Attributes
    ----------
    scorer : ServableScorer
    encoder : Encoder
    rows : int
        Rows the model was fitted on.
    refit : bool
        True if refit on all data.
    example : ndarray, shape (n_example_rows, n_columns)
        A few encoded rows (the MLflow signature and input example).
    """

    scorer: ServableScorer
    encoder: Encoder
    rows: int
    refit: bool
    example: np.ndarray


@dataclass
class TrainingResult:
    config: TrainingConfig
    split: TimeSplit
    scorers: dict[str, Scorer]
    metrics: dict[str, float]
    offline: dict[str, dict[str, float]]
    policy: PolicyEvaluation | None
    policy_by_touchpoint: dict[str, PolicyEvaluation]
    test: Examples
    test_scores: dict[str, np.ndarray]
    calibration: dict[str, Reliability]
    fingerprint: str
    encoder: Encoder
    #: The model to register: the held-out model, or the same kind refit on all data.
    registered: RegisteredModel
    offers: pd.DataFrame | None = None
    source: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    #: The first and last decision time of the examples (the data window).
    data_start: pd.Timestamp | None = None
    data_end: pd.Timestamp | None = None
    #: The served policy replayed on the test rounds (None without ``inputs.replay``).
    served: ServedRounds | None = None
    #: Off-policy estimates that rest on too little (``evaluation.min_*``), one line each.
    ope_warnings: list[str] = field(default_factory=list)

    @property
    def main(self) -> str:
        """Name of the model registered and served (``config.model.kind``)."""
        return self.config.model.kind

    @property
    def model(self) -> ServableScorer:
        return main_scorer(self.scorers, self.config)


def fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of the training set's rows and columns (order-independent of columns)."""
    frame = frame[sorted(frame.columns)]
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(row_hashes.tobytes())
    digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()[:16]


def check_training_set(frame: pd.DataFrame, config: TrainingConfig) -> None:
    """Refuse a training set that cannot give a meaningful model, with the reason."""
    missing = [c for c in META_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"the training set lacks the columns {missing}")
    n, positives = len(frame), int(frame["label"].sum())
    if n < config.data.min_examples:
        raise DataError(
            f"too little data: {n} labelled examples, `data.min_examples` is "
            f"{config.data.min_examples}; load more decisions or widen `data.start`/`data.end`"
        )
    if positives == 0 or positives == n:
        only = "positive" if positives else "negative"
        raise DataError(
            f"every one of the {n} examples is {only}: the label needs both classes; check "
            f"`data.positive_outcomes` (got {list(config.data.positive_outcomes)}) against the "
            "outcomes loaded"
        )
    if positives < config.data.min_positives:
        raise DataError(
            f"too few positives: {positives} of {n} examples, `data.min_positives` is "
            f"{config.data.min_positives}"
        )


def _examples(frame: pd.DataFrame, encoder: Encoder) -> Examples:
    return Examples(
        X=encoder.transform(frame),
        y=frame["label"].to_numpy(dtype=np.int8),
        meta=frame[list(META_COLUMNS)].reset_index(drop=True),
        columns=encoder.columns,
        categorical=encoder.categorical,
    )


def build_scorers(config: TrainingConfig) -> dict[str, Scorer]:
    """The ``config.model.kind`` model, then each baseline that is not that model."""
    main = config.model.kind
    scorers: dict[str, Scorer] = {
        main: make_scorer(main, **config.model.scorer_params(), seed=config.seed)
    }
    for name in config.baselines:
        if name != main:
            scorers[name] = make_scorer(name, seed=config.seed)
    return scorers


def main_scorer(scorers: dict[str, Scorer], config: TrainingConfig) -> ServableScorer:
    """The model to register; ConfigError if ``config.model.kind`` cannot be served."""
    scorer = scorers[config.model.kind]
    if not isinstance(scorer, ServableScorer):
        raise ConfigError(
            f"`model.kind` must name a model serving can load, got {config.model.kind!r}"
        )
    return scorer


def train_and_evaluate(inputs: TrainingInputs, config: TrainingConfig) -> TrainingResult:
    """Split by time, fit every scorer on train (+ valid for early stopping), evaluate on test.

    Raises
    ------
    DataError
        Too little data, a single-class label, or an empty split period.
    """
    frame = inputs.frame
    check_training_set(frame, config)
    frame = frame.sort_values(["ts", "decision_id", "position"], kind="mergesort")
    frame = frame.reset_index(drop=True)
    split = time_split(frame["ts"], config.split.valid_fraction, config.split.test_fraction)
    period = split.assign(frame["ts"])
    parts = {
        name: frame[period == name].reset_index(drop=True) for name in ("train", "valid", "test")
    }
    train_part = parts["train"]
    if train_part["label"].nunique() < 2:
        raise DataError(
            f"the training period ({len(train_part)} examples before {split.valid_start}) has "
            "a single-class label; load more data or change `split`"
        )
    encoder = inputs.encoder_factory(frame[period != "test"])
    examples = {name: _examples(part, encoder) for name, part in parts.items()}
    sizes = {name: len(part) for name, part in parts.items()}
    logger.info("time split: %s", sizes)

    scorers = build_scorers(config)
    test = examples["test"]
    before_test = _examples(frame[period != "test"].reset_index(drop=True), encoder)
    offline: dict[str, dict[str, float]] = {}
    test_scores: dict[str, np.ndarray] = {}
    calibration: dict[str, Reliability] = {}
    models_bar = progress_bar("models (fit + offline evaluation)", len(scorers), "model")
    for name, scorer in scorers.items():
        logger.info("fitting %s", name)
        models_bar.set_postfix_str(name)
        scorer.fit(examples["train"], examples["valid"])
        if config.model.refit_before_test and isinstance(scorer, ServableScorer):
            scorer = scorer.refit(before_test)  # early stopping's size, on train + valid
            scorers[name] = scorer
        scores = scorer.predict(test.X, test.meta)
        test_scores[name] = scores
        offline[name] = offline_metrics(
            test,
            scores,
            probabilistic=scorer.probabilistic,
            ks=config.evaluation.k,
            bins=config.evaluation.calibration_bins,
            bootstrap_samples=config.evaluation.bootstrap_samples,
            confidence=config.evaluation.confidence,
            seed=config.seed,
        )
        if scorer.probabilistic:
            calibration[name] = reliability(test.y, scores, config.evaluation.calibration_bins)
        models_bar.update()
    models_bar.close()

    policy, by_touchpoint, served = None, {}, None
    if inputs.candidates is not None:
        policy, by_touchpoint, served = _policy_evaluation(
            inputs, encoder, config, parts["test"], scorers
        )

    ope_warnings = [] if policy is None else policy.warnings(config.evaluation.support_limits())
    for line in ope_warnings:
        logger.warning("off-policy estimate: %s", line)
    metrics = _flat_metrics(config.model.kind, offline, policy, by_touchpoint)
    metrics.update(main_scorer(scorers, config).fit_summary())
    for name, size in sizes.items():
        metrics[f"examples_{name}"] = float(size)
    fitted_rows = len(before_test) if config.model.refit_before_test else sizes["train"]
    metrics["examples_evaluated_model"] = float(fitted_rows)
    registered = _registered_model(
        inputs, frame, config, main_scorer(scorers, config), encoder, fitted_rows
    )
    metrics["examples_registered_model"] = float(registered.rows)
    metrics["ope_warnings"] = float(len(ope_warnings))
    return TrainingResult(
        config=config,
        split=split,
        scorers=scorers,
        metrics=metrics,
        offline=offline,
        policy=policy,
        policy_by_touchpoint=by_touchpoint,
        test=test,
        test_scores=test_scores,
        calibration=calibration,
        fingerprint=fingerprint(inputs.frame),
        encoder=encoder,
        offers=inputs.offers,
        source=inputs.source,
        sizes=sizes,
        data_start=frame["ts"].min(),
        data_end=frame["ts"].max(),
        served=served,
        registered=registered,
        ope_warnings=ope_warnings,
    )


def _registered_model(
    inputs: TrainingInputs,
    frame: pd.DataFrame,
    config: TrainingConfig,
    held_out: ServableScorer,
    encoder: Encoder,
    fitted_rows: int,
) -> RegisteredModel:
    """The held-out model (fitted on ``fitted_rows``), or (``model.refit_on_all_data``) the
    same kind refit on every row of ``frame`` with an encoder fitted on every row."""
    if not config.model.refit_on_all_data:
        example = _examples(frame.head(5), encoder).X
        return RegisteredModel(held_out, encoder, fitted_rows, False, example)
    encoder_all = inputs.encoder_factory(frame)
    everything = _examples(frame, encoder_all)
    logger.info("refitting %s on all %d rows", config.model.kind, len(everything))
    scorer = held_out.refit(everything)
    return RegisteredModel(scorer, encoder_all, len(everything), True, everything.X[:5])


def _policy_evaluation(
    inputs: TrainingInputs,
    encoder: Encoder,
    config: TrainingConfig,
    test_frame: pd.DataFrame,
    scorers: dict[str, Scorer],
) -> tuple[PolicyEvaluation, dict[str, PolicyEvaluation], ServedRounds | None]:
    assert inputs.candidates is not None
    logged = test_frame[first_shown(test_frame)].reset_index(drop=True)
    wanted = config.evaluation.logging_policy
    if wanted is not None:
        logged = logged[logged["policy"] == wanted].reset_index(drop=True)
        if logged.empty:
            raise DataError(
                f"`evaluation.logging_policy` is {wanted!r} but no test decision was logged by "
                f"it; policies in the test period: {sorted(test_frame['policy'].dropna().unique())}"
            )
    limit = config.evaluation.max_ope_rounds
    if len(logged) > limit:
        # A seeded sample of rounds bounds the cost of scoring every candidate.
        keep = np.sort(np.random.default_rng(config.seed).choice(len(logged), limit, replace=False))
        logged = logged.iloc[keep].reset_index(drop=True)
    candidates, cand_X = inputs.candidates(logged, encoder)
    candidates = candidates.reset_index(drop=True)
    logged_ex = _examples(logged, encoder)
    cand_meta = candidates.reindex(columns=list(META_COLUMNS))
    reward_model = scorers[config.model.kind]
    if not reward_model.probabilistic:
        # A ranking score is no reward estimate: DR falls back to IPS (q = 0).
        q_logged, q_cand = np.zeros(len(logged)), np.zeros(len(candidates))
    else:
        q_logged = reward_model.predict(logged_ex.X, logged_ex.meta)
        q_cand = reward_model.predict(cand_X, cand_meta)
    policy_scores: dict[str, np.ndarray | None] = {}
    for name, scorer in scorers.items():
        policy_scores[name] = None if name == "random" else scorer.predict(cand_X, cand_meta)
    kwargs = {
        "offer_values": offer_values(inputs.offers),
        "bootstrap_samples": config.evaluation.bootstrap_samples,
        "confidence": config.evaluation.confidence,
        "seed": config.seed,
        "clip": config.evaluation.clip_weight,
    }
    served = None
    targets: dict[str, TargetPolicy] = {}
    if inputs.replay is not None:
        served = _served(inputs.replay, logged, encoder, config, scorers)
        targets[SERVED] = served.target
    overall = evaluate_policies(
        logged,
        q_logged,
        candidates,
        q_cand,
        policy_scores,
        targets=targets,
        truth=inputs.truth,
        **kwargs,
    )
    by_touchpoint = {}
    touchpoints = sorted(logged["touchpoint_id"].unique())
    bar = progress_bar("off-policy evaluation per touchpoint", len(touchpoints), "touchpoint")
    cand_tp = (
        candidates["decision_id"].map(logged.set_index("decision_id")["touchpoint_id"]).to_numpy()
    )
    for tp in touchpoints:
        bar.update()
        mask, cmask = (logged["touchpoint_id"] == tp).to_numpy(), cand_tp == tp
        if mask.sum() < 2:
            continue
        by_touchpoint[tp] = evaluate_policies(
            logged[mask].reset_index(drop=True),
            q_logged[mask],
            candidates[cmask].reset_index(drop=True),
            q_cand[cmask],
            {k: (None if v is None else v[cmask]) for k, v in policy_scores.items()},
            targets={
                k: v.of_decisions(logged.loc[mask, "decision_id"]) for k, v in targets.items()
            },
            truth=inputs.truth,
            **kwargs,
        )
    bar.close()
    return overall, by_touchpoint, served


def offer_values(offers: pd.DataFrame | None) -> dict[str, float] | None:
    """Offer id -> business value of an acceptance (the catalogue's default 1 where unset)."""
    if offers is None or "value" not in offers:
        return None
    values = pd.to_numeric(offers["value"], errors="coerce").fillna(1.0)
    return dict(zip(offers["offer_id"].astype(str), values.astype(float), strict=True))


def _served(
    replay: ReplayBuilder,
    logged: pd.DataFrame,
    encoder: Encoder,
    config: TrainingConfig,
    scorers: dict[str, Scorer],
) -> ServedRounds:
    """The registered model served as the service serves it, on the logged rounds."""
    model = main_scorer(scorers, config)
    # not resolved from the settings (``recsys train`` does): their defaults
    policy = config.evaluation.served_slate_policy(ServingSettings())
    return served_rounds(
        logged,
        replay(logged, encoder),
        model.flavour_scorer(),
        ModelInfo(config.model.kind, "candidate", encoder.spec_version),
        policy,
        probabilistic=model.probabilistic,
        seed=config.seed,
    )


def _flat_metrics(
    main: str,
    offline: dict[str, dict[str, float]],
    policy: PolicyEvaluation | None,
    by_touchpoint: dict[str, PolicyEvaluation],
) -> dict[str, float]:
    """MLflow metric names: the main model's unprefixed (``auc``, ``auc.web_cart``), baselines
    prefixed (``popularity.auc``); policy values ``snips_value``, ``popularity.dr_value.lower``,
    ``served.snips_value`` (the served policy), ``logging_value``; from the ground truth
    ``true_value`` / ``true_revenue`` and their ``.of_oracle`` share of the way from a random
    candidate (``chance_value``, ``chance_revenue``) to the best (``oracle_value``,
    ``oracle_revenue``), ``logging_true_value`` (per touchpoint with ``.<touchpoint>``); overall, each estimate's
    diagnostics ``snips_value.matched``, ``.positives``, ``.ess``, ``.max_weight``."""
    metrics: dict[str, float] = {}
    for name, values in offline.items():
        prefix = "" if name == main else f"{name}."
        for key, value in values.items():
            metrics[f"{prefix}{key}"] = value
    for suffix, evaluation in [("", policy), *((f".{tp}", e) for tp, e in by_touchpoint.items())]:
        if evaluation is None:
            continue
        metrics[f"ope_rounds{suffix}"] = float(evaluation.rounds)
        metrics[f"logging_value{suffix}"] = evaluation.logging.value
        metrics[f"logging_value.lower{suffix}"] = evaluation.logging.lower
        metrics[f"logging_value.upper{suffix}"] = evaluation.logging.upper
        metrics[f"logging_revenue{suffix}"] = evaluation.logging_revenue.value
        truth = {
            "logging_true": evaluation.logging_true,
            "oracle": evaluation.oracle,
            "chance": evaluation.random,
        }
        for who, true in truth.items():
            if true is not None:
                metrics[f"{who}_value{suffix}"] = true.acceptance
                if true.revenue is not None:
                    metrics[f"{who}_revenue{suffix}"] = true.revenue
        for name, value in evaluation.policies.items():
            prefix = "" if name == main else f"{name}."
            for key, estimate in value.estimates.items():
                stem = f"{prefix}{key}" if key.endswith("revenue") else f"{prefix}{key}_value"
                metrics[f"{stem}{suffix}"] = estimate.value
                metrics[f"{stem}.lower{suffix}"] = estimate.lower
                metrics[f"{stem}.upper{suffix}"] = estimate.upper
                if not suffix and estimate.diagnostics is not None:
                    d = estimate.diagnostics
                    metrics[f"{stem}.matched"] = float(d.matched)
                    metrics[f"{stem}.positives"] = float(d.positives)
                    metrics[f"{stem}.ess"] = d.effective_sample_size
                    metrics[f"{stem}.max_weight"] = d.max_weight
            for key, lift in value.lifts.items():
                metrics[f"{prefix}{key}_lift{suffix}"] = lift.value
                metrics[f"{prefix}{key}_lift.lower{suffix}"] = lift.lower
                metrics[f"{prefix}{key}_lift.upper{suffix}"] = lift.upper
            if value.true is not None:
                metrics.update(_true_metrics(prefix, value.true, evaluation, suffix))
    return {k: float(v) for k, v in metrics.items()}


def _true_metrics(
    prefix: str, true: TrueValue, evaluation: PolicyEvaluation, suffix: str
) -> dict[str, float]:
    """``true_value`` (acceptance), ``true_revenue``, ``true_coverage`` and, for each, the
    share of the way from a random candidate to the oracle (``.of_oracle``)."""
    out = {f"{prefix}true_value{suffix}": true.acceptance}
    if true.coverage < 1.0:
        out[f"{prefix}true_coverage{suffix}"] = true.coverage
    if true.revenue is not None:
        out[f"{prefix}true_revenue{suffix}"] = true.revenue
    for objective, stem in zip(OBJECTIVES, ("true_value", "true_revenue"), strict=True):
        share = evaluation.of_oracle(true, objective)
        if share is not None:
            out[f"{prefix}{stem}.of_oracle{suffix}"] = share
    return out
