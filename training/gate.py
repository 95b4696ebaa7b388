"""The quality gate before the registry: a degenerate model is not registered.

:func:`quality_gate` refuses the ``model.kind`` model (the held-out model that was evaluated)
when any of these holds:

- **constant scores**: its test scores are the same for every row;
- **constant policy**: its greedy policy chooses the same offer in every off-policy round
  while the rounds' candidates hold more than one offer;
- **no split**: the model itself is degenerate (:meth:`ServableScorer.degenerate`: LightGBM
  with no split or a single tree, a logistic regression with every coefficient 0);
- **AUC not above chance**: the lower bound of the test AUC's bootstrap interval is not above
  ``gate.min_auc`` (0.5), or the AUC is undefined (a single-class test period);
- **loses to the logging policy**: the paired bootstrap interval of its ``gate.estimator``
  (SNIPS) value over the logging policy's observed value lies entirely below 1 (upper < 1);
- **loses to popularity**: the upper bound of its ``gate.estimator`` interval is below the
  popularity policy's ``gate.estimator`` value.

The off-policy comparisons count only where the estimates compared rest on enough
(``evaluation.min_matched_rounds``, ``min_positives``, ``min_effective_sample_size``,
``max_weight``, judged on the raw weights): an estimate from a handful of matched rounds is
no evidence either way, so it refuses nothing and the verdict notes it was not compared. ``force`` turns a refusal into ``forced``: the model is registered and the
reasons are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.config import GateConfig
from training.pipeline import TrainingResult

GateStatus = Literal["passed", "refused", "forced", "disabled"]


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision on one model, with every reason it found."""

    model: str
    status: GateStatus
    reasons: tuple[str, ...] = ()
    #: Checks that could not be made (e.g. an off-policy value resting on too little).
    notes: tuple[str, ...] = ()

    @property
    def allows_registration(self) -> bool:
        return self.status != "refused"

    def message(self) -> str:
        """One paragraph for the terminal and the log."""
        why = "; ".join(self.reasons)
        noted = f" Not checked: {'; '.join(self.notes)}." if self.notes else ""
        return self._verdict(why) + noted

    def _verdict(self, why: str) -> str:
        if self.status == "refused":
            return (
                f"quality gate: {self.model} was NOT registered because it is degenerate or "
                f"loses to a simpler policy: {why}. The run is logged in MLflow (tag "
                "quality_gate=refused); check the data and the config (see docs/training.md, "
                "'Quality gate'), or run `recsys train --force` to register it anyway."
            )
        if self.status == "forced":
            return (
                f"quality gate: {self.model} would have been refused ({why}); registered "
                "anyway because of --force (tag quality_gate=forced)."
            )
        if self.status == "disabled":
            return "quality gate: disabled (`gate.enabled: false`); not checked."
        return f"quality gate: {self.model} passed."


def quality_gate(result: TrainingResult, *, force: bool = False) -> GateVerdict:
    """Check the evaluated ``model.kind`` model (see the module docstring)."""
    config = result.config.gate
    if not config.enabled:
        return GateVerdict(result.main, "disabled")
    notes: list[str] = []
    reasons = [
        *_degenerate(result),
        *_auc(result, config),
        *_loses(result, config, notes),
    ]
    if not reasons:
        return GateVerdict(result.main, "passed", notes=tuple(notes))
    status: GateStatus = "forced" if force else "refused"
    return GateVerdict(result.main, status, tuple(reasons), tuple(notes))


def _degenerate(result: TrainingResult) -> list[str]:
    reasons = []
    scores = result.test_scores[result.main]
    if len(scores) and np.ptp(scores) == 0:
        reasons.append(f"its score is {scores[0]:.4g} for every one of {len(scores):,} test rows")
    policy = result.policy
    if policy is not None:
        chosen = policy.policies[result.main].chosen_offers
        if chosen == 1 and policy.candidate_offers > 1:
            reasons.append(
                f"its policy chooses the same offer in every one of {policy.rounds:,} rounds "
                f"(of {policy.candidate_offers} candidate offers)"
            )
    why = result.model.degenerate()
    if why is not None:
        reasons.append(why)
    if result.registered.refit:  # the model registered is the refit one: it must hold too
        refit_why = result.registered.scorer.degenerate()
        if refit_why is not None and refit_why != why:
            reasons.append(f"refit on all data, {refit_why}")
    return reasons


def _auc(result: TrainingResult, config: GateConfig) -> list[str]:
    offline = result.offline[result.main]
    value, lower, upper = offline["auc"], offline["auc.lower"], offline["auc.upper"]
    if math.isnan(value):
        return ["its test AUC is undefined (the test period has a single class)"]
    if not lower > config.min_auc:
        return [
            f"its test AUC {value:.3f} [{lower:.3f}, {upper:.3f}] is not above "
            f"{config.min_auc:g} (`gate.min_auc`)"
        ]
    return []


def _loses(result: TrainingResult, config: GateConfig, notes: list[str]) -> list[str]:
    """Refusals by off-policy value; comparisons that rest on too little go to ``notes``."""
    policy = result.policy
    if policy is None:
        return []
    limits = result.config.evaluation.support_limits()
    key, name = config.estimator, config.estimator.upper()

    def short(policy_name: str) -> str | None:
        """Why ``policy_name``'s estimates are no evidence (None if they are)."""
        diagnostics = policy.policies[policy_name].estimates["ips"].diagnostics
        problems = [] if diagnostics is None else diagnostics.problems(limits)
        return f"{policy_name}'s estimates rest on {problems[0]}" if problems else None

    mine = policy.policies[result.main]
    estimate, lift = mine.estimates[key], mine.lifts[key]
    reasons = []
    if "logging" in config.compare_to:
        if (why := short(result.main)) is not None:
            notes.append(f"{name} against the logging policy ({why})")
        elif lift.upper < 1:
            reasons.append(
                f"its {name} value is {lift.value:.2f}x [{lift.lower:.2f}, {lift.upper:.2f}] "
                f"the logging policy's observed {policy.logging.value:.4g}: below it"
            )
    if "popularity" in config.compare_to and "popularity" in policy.policies:
        theirs = policy.policies["popularity"].estimates[key].value
        if (why := short(result.main) or short("popularity")) is not None:
            notes.append(f"{name} against popularity ({why})")
        elif estimate.upper < theirs:
            reasons.append(
                f"its {name} value {estimate.value:.4g} [{estimate.lower:.4g}, "
                f"{estimate.upper:.4g}] lies below popularity's {theirs:.4g}"
            )
    return reasons
