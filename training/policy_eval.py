"""Value of policies on logged rounds: off-policy estimates and, on generated data, truth.

Rounds are the first shown offer of each test decision. A policy picks, per decision, one of
the decision's candidate offers: greedy policies the candidate with the highest score (ties go
to the first candidate in the given order), the random policy any candidate uniformly. A
:class:`TargetPolicy` brings its own candidates and probabilities (the served policy: the
eligible offers, the service's policy by priority; see :mod:`training.served`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from training.ope import ESTIMATORS, Estimate, Rounds, SupportLimits, bootstrap, estimators

#: What a policy's true value is measured on.
Objective = Literal["acceptance", "revenue"]
OBJECTIVES: tuple[Objective, ...] = ("acceptance", "revenue")


@dataclass(frozen=True)
class TrueValue:
    """A policy's value per round from the ground truth, on both objectives.

    ``acceptance``: mean over rounds of sum_a pi(a|x) p_accept(x, a); ``revenue``: the same
    with p_accept(x, a) x value(a) (None without offer values); ``coverage``: the share of the
    policy's choices that the truth knows (the served policy may find an offer eligible that
    the data's generator did not; such a choice counts at the mean true value of the round's
    known choices).
    """

    acceptance: float
    revenue: float | None = None
    coverage: float = 1.0

    def on(self, objective: Objective) -> float | None:
        """The value on ``objective`` (``acceptance`` or ``revenue``)."""
        return self.acceptance if objective == "acceptance" else self.revenue


@dataclass(frozen=True)
class PolicyValue:
    """One policy's estimates (``ips``, ``snips``, ``dr``, ``ips_clipped``, ``switch_dr`` on
    the label, ``snips_revenue``), each with its diagnostics."""

    policy: str
    estimates: dict[str, Estimate]
    true: TrueValue | None = None
    #: The label estimates divided by the logging policy's observed value, with a paired
    #: bootstrap interval (the same resamples in numerator and denominator).
    lifts: dict[str, Estimate] = field(default_factory=dict)
    #: Distinct offers the policy chooses with a positive probability over all rounds.
    chosen_offers: int = 0

    @property
    def true_value(self) -> float | None:
        """The true value on acceptance (None without ground truth)."""
        return None if self.true is None else self.true.acceptance


@dataclass(frozen=True)
class PolicyEvaluation:
    """Every policy's value on the same rounds, next to the logging policy and the oracle."""

    rounds: int
    logging: Estimate
    logging_revenue: Estimate
    policies: dict[str, PolicyValue] = field(default_factory=dict)
    #: From the ground truth (generated data only): the logging policy's first shown offer,
    #: the best candidate of every round (``oracle``) and a uniformly random candidate.
    logging_true: TrueValue | None = None
    oracle: TrueValue | None = None
    random: TrueValue | None = None
    #: Distinct offers among the rounds' candidates (of the greedy and random policies).
    candidate_offers: int = 0

    def of_oracle(self, true: TrueValue | None, objective: Objective) -> float | None:
        """Where ``true`` stands on ``objective`` between a random candidate (0) and the
        oracle (1); None without ground truth or when the two coincide."""
        if true is None or self.oracle is None or self.random is None:
            return None
        value, low, high = (t.on(objective) for t in (true, self.random, self.oracle))
        if value is None or low is None or high is None or high <= low:
            return None
        return (value - low) / (high - low)

    @property
    def logging_true_value(self) -> float | None:
        return None if self.logging_true is None else self.logging_true.acceptance

    @property
    def oracle_value(self) -> float | None:
        return None if self.oracle is None else self.oracle.acceptance

    def warnings(self, limits: SupportLimits) -> list[str]:
        """One line per policy whose label estimates rest on too little, judged on the raw
        importance weights (those of IPS, SNIPS and DR; the clipped variants rest on the same
        matched rounds and positives)."""
        lines = []
        for name, value in self.policies.items():
            diagnostics = value.estimates["ips"].diagnostics
            problems = [] if diagnostics is None else diagnostics.problems(limits)
            if problems:
                lines.append(f"{name} policy's estimates rest on too little: {'; '.join(problems)}")
        return lines


@dataclass(frozen=True)
class TargetPolicy:
    """A policy given by its probability of choosing each offer first, over its own
    candidates.

    Attributes
    ----------
    decision_id, offer_id : ndarray of object (str), shape (n_cand,)
        Every offer the policy may choose in every round (offers absent have probability 0).
    prob : ndarray of float64, shape (n_cand,)
        Probability of choosing the offer first; per decision the sum is <= 1.
    q : ndarray of float64, shape (n_cand,)
        The reward model's prediction for the offer (DR's direct-method part).
    """

    decision_id: np.ndarray
    offer_id: np.ndarray
    prob: np.ndarray
    q: np.ndarray

    def __post_init__(self) -> None:
        n = self.decision_id.shape
        for name in ("offer_id", "prob", "q"):
            value = getattr(self, name)
            if value.shape != n:
                raise ValueError(f"`{name}` must have shape {n}, got {value.shape}")
        if ((self.prob < 0) | (self.prob > 1)).any():
            raise ValueError("`prob` must be in [0, 1]")

    @property
    def candidates(self) -> pd.DataFrame:
        return pd.DataFrame({"decision_id": self.decision_id, "offer_id": self.offer_id})

    def of_decisions(self, decision_ids: Collection[str]) -> TargetPolicy:
        """The rows of ``decision_ids`` only."""
        keep = pd.Series(self.decision_id).isin(set(decision_ids)).to_numpy()
        return TargetPolicy(
            self.decision_id[keep], self.offer_id[keep], self.prob[keep], self.q[keep]
        )


def first_shown(meta: pd.DataFrame) -> np.ndarray:
    """Bool mask (n_rows,) of each decision's lowest-position row: its propensity is marginal."""
    position = meta["position"].fillna(1).to_numpy()
    order = pd.DataFrame({"d": meta["decision_id"].to_numpy(), "p": position})
    lowest = order.groupby("d")["p"].transform("min").to_numpy()
    mask = position == lowest
    # Two rows at the same lowest position would both pass; keep the first.
    dup = pd.Series(meta["decision_id"].to_numpy()).where(mask).duplicated(keep="first").to_numpy()
    return mask & ~(dup & mask)


def greedy_probabilities(decision_id: np.ndarray, score: np.ndarray) -> np.ndarray:
    """1.0 on the first highest-scoring candidate of each decision, else 0.0, shape (n_cand,)."""
    frame = pd.DataFrame({"d": decision_id, "s": score, "i": np.arange(len(score))})
    best = frame.sort_values(["d", "s", "i"], ascending=[True, False, True], kind="mergesort")
    chosen = best.drop_duplicates("d", keep="first")["i"].to_numpy()
    prob = np.zeros(len(score))
    prob[chosen] = 1.0
    return prob


def uniform_probabilities(decision_id: np.ndarray) -> np.ndarray:
    """1 / (number of candidates) for each candidate of each decision, shape (n_cand,)."""
    sizes = pd.Series(decision_id).groupby(decision_id).transform("size").to_numpy()
    return 1.0 / sizes


def _target(
    logged: pd.DataFrame, candidates: pd.DataFrame, prob: np.ndarray, q_candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pi(logged action | x), sum_a pi(a|x) q(x, a)) per round, each shape (n_rounds,)."""
    cand = pd.DataFrame(
        {
            "decision_id": candidates["decision_id"].to_numpy(),
            "offer_id": candidates["offer_id"].to_numpy(),
            "prob": prob,
            "pq": prob * q_candidates,
        }
    )
    expected_q = cand.groupby("decision_id")["pq"].sum()
    keyed = cand.set_index(["decision_id", "offer_id"])["prob"]
    keys = pd.MultiIndex.from_arrays(
        [logged["decision_id"].to_numpy(), logged["offer_id"].to_numpy()]
    )
    target_prob = keyed.reindex(keys).fillna(0.0).to_numpy()
    q_target = expected_q.reindex(logged["decision_id"].to_numpy()).fillna(0.0).to_numpy()
    return target_prob, q_target


def true_value(
    decision_id: np.ndarray,
    offer_id: np.ndarray,
    prob: np.ndarray,
    truth: pd.DataFrame,
    rounds: int,
) -> TrueValue:
    """A policy's :class:`TrueValue` over ``rounds`` rounds from its choice probabilities.

    ``decision_id, offer_id, prob`` (each shape (n,)) give the probability of each offer being
    chosen first (a round with none chosen is worth 0); ``truth`` has ``decision_id, offer_id,
    p_accept`` and, for revenue, ``value``.
    """
    chosen = pd.DataFrame({"decision_id": decision_id, "offer_id": offer_id, "prob": prob})
    chosen = chosen[chosen["prob"] > 0]
    columns = ["decision_id", "offer_id", "p_accept", *(["value"] if "value" in truth else [])]
    merged = chosen.merge(truth[columns], on=["decision_id", "offer_id"], how="left")
    known = merged["p_accept"].notna().to_numpy()
    mass = merged.groupby("decision_id")["prob"].sum()
    known_mass = merged[known].groupby("decision_id")["prob"].sum().reindex(mass.index)
    # A round's choices the truth lacks count at the mean of its known choices.
    scale = (mass / known_mass).where(known_mass > 0, 0.0)
    known_rows = merged[known]
    weight = known_rows["prob"] * known_rows["decision_id"].map(scale)
    acceptance = float((weight * known_rows["p_accept"]).sum() / rounds)
    revenue = None
    if "value" in known_rows:
        revenue = float((weight * known_rows["p_accept"] * known_rows["value"]).sum() / rounds)
    total = float(mass.sum())
    coverage = float(known_mass.where(known_mass > 0, 0.0).sum() / total) if total else 1.0
    return TrueValue(acceptance, revenue, coverage)


def truth_with_values(
    truth: pd.DataFrame, offer_values: Mapping[str, float] | None
) -> pd.DataFrame:
    """``truth`` with each offer's business value (column ``value``) when values are given;
    an offer the catalogue lacks is an error naming it."""
    if offer_values is None:
        return truth
    value = truth["offer_id"].map(offer_values)
    if value.isna().any():
        missing = sorted(set(truth.loc[value.isna(), "offer_id"]))
        raise ValueError(f"`offer_values` lacks offers of the ground truth: {missing[:5]}")
    return truth.assign(value=value.astype(np.float64))


def _truth_extremes(truth: pd.DataFrame) -> tuple[TrueValue, TrueValue]:
    """(oracle, random): the best candidate of every round on each objective, and the mean."""
    rounds = truth.groupby("decision_id")
    oracle_revenue = random_revenue = None
    if "value" in truth:
        gain = truth["p_accept"] * truth["value"]
        oracle_revenue = float(gain.groupby(truth["decision_id"]).max().mean())
        random_revenue = float(gain.groupby(truth["decision_id"]).mean().mean())
    return (
        TrueValue(float(rounds["p_accept"].max().mean()), oracle_revenue),
        TrueValue(float(rounds["p_accept"].mean().mean()), random_revenue),
    )


def evaluate_policies(
    logged: pd.DataFrame,
    q_logged: np.ndarray,
    candidates: pd.DataFrame,
    q_candidates: np.ndarray,
    policy_scores: dict[str, np.ndarray | None],
    *,
    targets: Mapping[str, TargetPolicy] | None = None,
    truth: pd.DataFrame | None = None,
    offer_values: Mapping[str, float] | None = None,
    bootstrap_samples: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
    clip: float = 100.0,
) -> PolicyEvaluation:
    """Estimate each policy's value on the logged rounds.

    Parameters
    ----------
    logged : DataFrame, n_rounds rows
        ``decision_id, offer_id, propensity, label, revenue`` of each round (first shown offer).
    q_logged : ndarray, shape (n_rounds,)
        Reward model's prediction for the logged offer.
    candidates : DataFrame, n_cand rows
        ``decision_id, offer_id`` of every candidate offer of every round's decision.
    q_candidates : ndarray, shape (n_cand,)
        Reward model's prediction for each candidate (DR's direct-method part).
    policy_scores : dict
        Policy name -> candidate scores (n_cand,) for a greedy policy, or None for the
        uniform random policy.
    targets : mapping of policy name -> TargetPolicy, optional
        Policies with their own candidates and probabilities (e.g. ``served``).
    truth : DataFrame, optional
        ``decision_id, offer_id, p_accept`` for every candidate (generated data only).
    offer_values : mapping of offer id -> value, optional
        The business value of an accepted offer: with ``truth``, true values on revenue too.
    clip : float
        Weight threshold of the clipped variants (``ips_clipped``, ``switch_dr``).

    Raises
    ------
    ValueError
        A greedy or random policy's candidate that the truth lacks (its candidates are the
        logged decisions'), or an offer of the truth without a value.
    """
    if logged.empty:
        raise ValueError("`logged` must hold at least one round, got 0")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    missing = set(logged["decision_id"]) - set(candidates["decision_id"])
    if missing:
        raise ValueError(f"{len(missing)} logged decisions have no candidates")
    reward = logged["label"].to_numpy(dtype=np.float64)
    revenue = logged["revenue"].fillna(0.0).to_numpy(dtype=np.float64)
    propensity = logged["propensity"].to_numpy(dtype=np.float64)
    decision_ids = candidates["decision_id"].to_numpy()
    zeros = np.zeros(len(logged))

    policies_of: dict[str, TargetPolicy] = {}
    for name, scores in policy_scores.items():
        prob = (
            uniform_probabilities(decision_ids)
            if scores is None
            else greedy_probabilities(decision_ids, scores)
        )
        policies_of[name] = TargetPolicy(
            decision_ids, candidates["offer_id"].to_numpy(), prob, np.asarray(q_candidates)
        )
    clash = set(policy_scores) & set(targets or {})
    if clash:
        raise ValueError(
            f"`targets` must not repeat a name of `policy_scores`, got {sorted(clash)}"
        )
    policies_of.update(targets or {})
    label_estimators = estimators(clip)
    jobs = []
    for name, policy in policies_of.items():
        target_prob, q_target = _target(logged, policy.candidates, policy.prob, policy.q)
        label_rounds = Rounds(reward, propensity, target_prob, q_logged, q_target)
        for estimator in label_estimators.values():
            jobs.append((name, estimator.name, estimator, label_rounds))
        revenue_rounds = Rounds(revenue, propensity, target_prob, zeros, zeros)
        jobs.append((name, "snips_revenue", ESTIMATORS["snips"], revenue_rounds))
    ones = np.ones(len(logged))
    jobs.append(
        ("__logging__", "observed", ESTIMATORS["ips"], Rounds(reward, ones, ones, zeros, zeros))
    )
    jobs.append(
        (
            "__logging__",
            "observed_revenue",
            ESTIMATORS["ips"],
            Rounds(revenue, ones, ones, zeros, zeros),
        )
    )
    boot = bootstrap(
        [(est, rounds) for _, _, est, rounds in jobs],
        bootstrap_samples=bootstrap_samples,
        seed=seed,
    )
    logging_index = len(jobs) - 2
    per_policy: dict[str, dict[str, Estimate]] = {name: {} for name in policies_of}
    lifts: dict[str, dict[str, Estimate]] = {name: {} for name in policies_of}
    for j, (name, key, _, _) in enumerate(jobs[:logging_index]):
        per_policy[name][key] = replace(boot.estimate(j, confidence), estimator=key)
        if key in label_estimators:
            lifts[name][key] = replace(
                boot.ratio(j, logging_index, confidence), estimator=f"{key}_lift"
            )
    logging = replace(boot.estimate(logging_index, confidence), estimator="observed")
    logging_revenue = replace(
        boot.estimate(logging_index + 1, confidence), estimator="observed_revenue"
    )

    truth_in = None
    if truth is not None:
        truth_in = truth_with_values(
            truth[truth["decision_id"].isin(set(logged["decision_id"]))], offer_values
        )
    policies = {}
    for name, policy in policies_of.items():
        true = None
        if truth_in is not None:
            true = true_value(
                policy.decision_id, policy.offer_id, policy.prob, truth_in, len(logged)
            )
            if name in policy_scores and true.coverage < 1.0:
                raise ValueError(f"ground truth lacks p_accept for candidates of policy {name!r}")
        policies[name] = PolicyValue(
            name,
            per_policy[name],
            true,
            lifts[name],
            chosen_offers=int(pd.unique(policy.offer_id[policy.prob > 0]).size),
        )
    logging_true = oracle = random = None
    if truth_in is not None:
        # The logging policy's expected value of its first shown offer, from the truth.
        logging_true = true_value(
            logged["decision_id"].to_numpy(),
            logged["offer_id"].to_numpy(),
            np.ones(len(logged)),
            truth_in,
            len(logged),
        )
        oracle, random = _truth_extremes(truth_in)
    return PolicyEvaluation(
        rounds=len(logged),
        logging=logging,
        logging_revenue=logging_revenue,
        policies=policies,
        logging_true=logging_true,
        oracle=oracle,
        random=random,
        candidate_offers=int(candidates["offer_id"].nunique()),
    )
