"""What-if screening: decision recipes valued on logged decisions before any customer sees them.

A recipe is what an experiment arm serves: a model, a policy and the catalogue with the arm's
levers applied (offer weights, contact caps, excluded offers). :func:`screen` decides every
logged round again with each recipe through the decision pipeline, as of the round's time
(:func:`training.served.served_rounds`: eligibility, caps, priority with value and weight, the
policy), and values the result with the off-policy estimators and the logged propensities
(:func:`training.policy_eval.evaluate_policies`): IPS, SNIPS, DR, clipped IPS, SWITCH-DR, each
with its diagnostics (matched rounds, positives, effective sample size, largest weight), the
lift over the logging policy with a paired bootstrap interval, and on generated data the true
value from the ground truth.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from recsys.arbitration import Policy
from recsys.catalog import Catalog
from recsys.decision import ModelInfo
from recsys.errors import DataError
from recsys.scoring import Scorer
from training.config import TrainingConfig
from training.encoding import Encoder
from training.pipeline import TrainingInputs, offer_values
from training.policy_eval import PolicyEvaluation, TargetPolicy, evaluate_policies, first_shown
from training.served import served_rounds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One arm's decision recipe as screening replays it.

    Attributes
    ----------
    name : str
        The arm's name (the policy's name in the evaluation).
    model : ModelInfo
    scorer : recsys.scoring.Scorer
        The model as serving scores it (decision matrix -> P(accept)).
    encoder : Encoder
        The model's matrix encoding (from its ``feature_spec.json``).
    policy : Policy
    catalog : Catalog, optional
        The catalogue with the arm's levers applied; None = the warehouse's.
    probabilistic : bool
        Whether the scores are probabilities (DR's reward model needs them).
    """

    name: str
    model: ModelInfo
    scorer: Scorer
    encoder: Encoder
    policy: Policy
    catalog: Catalog | None = None
    probabilistic: bool = True


@dataclass(frozen=True)
class Screening:
    """The recipes' values on the same logged rounds.

    ``evaluation.policies`` holds, per recipe name, its estimates with diagnostics, lifts over
    the logging policy and (generated data) its true value.
    """

    evaluation: PolicyEvaluation
    rounds: int
    start: datetime
    end: datetime

    def table(self) -> pd.DataFrame:
        """One row per recipe and estimator: value with interval, lift and diagnostics."""
        rows = []
        for name, policy in self.evaluation.policies.items():
            for estimator, est in policy.estimates.items():
                lift = policy.lifts.get(estimator)
                diag = est.diagnostics
                rows.append(
                    {
                        "arm": name,
                        "estimator": estimator,
                        "value": est.value,
                        "lower": est.lower,
                        "upper": est.upper,
                        "lift": None if lift is None else lift.value,
                        "lift_lower": None if lift is None else lift.lower,
                        "lift_upper": None if lift is None else lift.upper,
                        "matched_rounds": None if diag is None else diag.matched,
                        "positives": None if diag is None else diag.positives,
                        "effective_sample_size": None
                        if diag is None
                        else diag.effective_sample_size,
                        "max_weight": None if diag is None else diag.max_weight,
                        "true_value": policy.true_value,
                    }
                )
        return pd.DataFrame(rows)


def screen(
    inputs: TrainingInputs,
    recipes: Sequence[Recipe],
    config: TrainingConfig,
    *,
    since: datetime | None = None,
) -> Screening:
    """Value each recipe on the logged rounds of ``inputs`` (first shown offer of each
    decision, from ``since`` on; a seeded sample of ``evaluation.max_ope_rounds`` at most).

    The first recipe's model is DR's reward model for every recipe, so their DR estimates
    differ only by what they choose.

    Raises
    ------
    DataError
        No recipe, no logged round in the window, or inputs without candidates to replay.
    """
    if not recipes:
        raise DataError("`recipes` must name at least one arm to screen, got none")
    if inputs.candidates is None or inputs.replay is None:
        raise DataError("screening replays logged rounds: `inputs` must have candidates and replay")
    frame = inputs.frame
    logged = frame[first_shown(frame)]
    if since is not None:
        logged = logged[pd.to_datetime(logged["ts"]) >= pd.Timestamp(since).tz_localize(None)]
    logged = logged.reset_index(drop=True)
    if logged.empty:
        raise DataError(
            f"no logged decision to screen on since {since}; load decisions (`recsys data load` "
            "or the event log export) or choose an earlier `since`"
        )
    limit = config.evaluation.max_ope_rounds
    if len(logged) > limit:
        keep = np.sort(np.random.default_rng(config.seed).choice(len(logged), limit, replace=False))
        logged = logged.iloc[keep].reset_index(drop=True)

    reference = recipes[0]
    candidates, cand_x = inputs.candidates(logged, reference.encoder)
    candidates = candidates.reset_index(drop=True)
    if reference.probabilistic:
        q_logged = reference.scorer.score(reference.encoder.transform(logged))
        q_cand = reference.scorer.score(cand_x)
    else:  # a ranking score is no reward estimate: DR falls back to IPS
        q_logged, q_cand = np.zeros(len(logged)), np.zeros(len(candidates))

    targets: dict[str, TargetPolicy] = {}
    for recipe in recipes:
        replay = inputs.replay(logged, recipe.encoder)
        if recipe.catalog is not None:
            replay = dataclasses.replace(replay, catalog=recipe.catalog)
        served = served_rounds(
            logged,
            replay,
            recipe.scorer,
            recipe.model,
            recipe.policy,
            probabilistic=recipe.probabilistic,
            seed=config.seed,
        )
        targets[recipe.name] = served.target
    evaluation = evaluate_policies(
        logged,
        q_logged,
        candidates,
        q_cand,
        {},
        targets=targets,
        truth=inputs.truth,
        offer_values=offer_values(inputs.offers),
        bootstrap_samples=config.evaluation.bootstrap_samples,
        confidence=config.evaluation.confidence,
        seed=config.seed,
        clip=config.evaluation.clip_weight,
    )
    stamps = pd.to_datetime(logged["ts"]).dt.floor("us")
    logger.info("screened %d recipes on %d logged rounds", len(recipes), len(logged))
    return Screening(
        evaluation, len(logged), stamps.min().to_pydatetime(), stamps.max().to_pydatetime()
    )
