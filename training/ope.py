"""Off-policy evaluation: the value a target policy would have had on logged traffic.

A round is one logged decision's first shown offer (its propensity is the marginal
probability of that offer in that position). Estimators (Dudík et al. 2011; Swaminathan &
Joachims 2015), all with a seeded bootstrap percentile interval:

- IPS:   mean(w * r)                     with w = pi(a|x) / p(a|x)
- SNIPS: sum(w * r) / sum(w)
- DR:    mean(q_pi(x) + w * (r - q(x, a)))  with q the model's predicted reward

and two variants that bound the variance extreme weights bring, at the price of a bias:

- clipped IPS: mean(min(w, clip) * r)  (Ionides 2008, "Truncated importance sampling", JCGS
  17(2); Strehl et al. 2010, "Learning from logged implicit exploration data", NeurIPS)
- switch-DR:   mean(q_pi(x) + 1[w <= clip] * w * (r - q(x, a)))  (Wang, Agarwal & Dudík 2017,
  "Optimal and adaptive off-policy evaluation in contextual bandits", ICML; the form of
  Open Bandit Pipeline's ``SwitchDoublyRobust``)

Every estimate carries its :class:`Diagnostics` (matched rounds, positives behind it,
effective sample size and largest weight); :meth:`Diagnostics.problems` names what it lacks
against :class:`SupportLimits`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class Rounds:
    """Logged rounds and what the target policy does on them.

    Attributes
    ----------
    reward : ndarray, shape (n_rounds,)
        Observed reward of the logged action.
    propensity : ndarray, shape (n_rounds,)
        Logging policy's probability of the logged action, in (0, 1].
    target_prob : ndarray, shape (n_rounds,)
        Target policy's probability of the logged action, in [0, 1].
    q_logged : ndarray, shape (n_rounds,)
        Reward model's prediction for the logged action (DR only).
    q_target : ndarray, shape (n_rounds,)
        Reward model's expected prediction under the target policy: sum_a pi(a|x) q(x, a).
    """

    reward: np.ndarray
    propensity: np.ndarray
    target_prob: np.ndarray
    q_logged: np.ndarray
    q_target: np.ndarray

    def __post_init__(self) -> None:
        n = self.reward.shape
        for name in ("propensity", "target_prob", "q_logged", "q_target"):
            value = getattr(self, name)
            if value.shape != n:
                raise ValueError(f"`{name}` must have shape {n}, got {value.shape}")
        if len(self.reward) == 0:
            raise ValueError("`reward` must hold at least one round, got 0")
        bad = ~((self.propensity > 0) & (self.propensity <= 1))
        if bad.any():
            raise ValueError(
                f"`propensity` must be in (0, 1], got {float(self.propensity[bad][0])} "
                f"({int(bad.sum())} rounds)"
            )
        if ((self.target_prob < 0) | (self.target_prob > 1)).any():
            raise ValueError("`target_prob` must be in [0, 1]")

    @property
    def weight(self) -> np.ndarray:
        return self.target_prob / self.propensity


@dataclass(frozen=True)
class SupportLimits:
    """What an estimate must rest on to be trusted (``evaluation.min_*`` / ``max_weight``)."""

    min_matched_rounds: int = 100
    min_positives: int = 10
    min_effective_sample_size: float = 100.0
    max_weight: float = 1000.0


@dataclass(frozen=True)
class Diagnostics:
    """What one estimate rests on.

    Attributes
    ----------
    rounds : int
        Logged rounds.
    matched : int
        Rounds where the target policy gives the logged action a positive probability.
    positives : int
        Matched rounds with a reward > 0.
    effective_sample_size : float
        ``(sum w)^2 / sum w^2`` of the weights the estimator applies (0 when all are 0).
    max_weight : float
        The largest of those weights.
    """

    rounds: int
    matched: int
    positives: int
    effective_sample_size: float
    max_weight: float

    @classmethod
    def of(cls, weight: np.ndarray, rounds: Rounds) -> Diagnostics:
        """Diagnostics of ``weight`` (shape (n_rounds,)) applied to ``rounds``."""
        matched = rounds.target_prob > 0
        squares = float(np.sum(weight**2))
        return cls(
            rounds=len(rounds.reward),
            matched=int(matched.sum()),
            positives=int((matched & (rounds.reward > 0)).sum()),
            effective_sample_size=float(np.sum(weight)) ** 2 / squares if squares > 0 else 0.0,
            max_weight=float(np.max(weight)),
        )

    def problems(self, limits: SupportLimits) -> list[str]:
        """What the estimate lacks, one phrase each (empty when it rests on enough)."""
        out = []
        if self.matched < limits.min_matched_rounds:
            out.append(
                f"{self.matched} matched rounds of {self.rounds} "
                f"(`min_matched_rounds` {limits.min_matched_rounds})"
            )
        if self.positives < limits.min_positives:
            out.append(f"{self.positives} positives (`min_positives` {limits.min_positives})")
        if self.effective_sample_size < limits.min_effective_sample_size:
            out.append(
                f"effective sample size {self.effective_sample_size:.1f} "
                f"(`min_effective_sample_size` {limits.min_effective_sample_size:g})"
            )
        if self.max_weight > limits.max_weight:
            out.append(
                f"largest weight {self.max_weight:,.0f} (`max_weight` {limits.max_weight:g})"
            )
        return out


@dataclass(frozen=True)
class Estimate:
    """A policy value with its bootstrap interval and what it rests on."""

    estimator: str
    value: float
    lower: float
    upper: float
    diagnostics: Diagnostics | None = None

    def covers(self, value: float) -> bool:
        return self.lower <= value <= self.upper


class Estimator(ABC):
    """One off-policy estimator: ``estimate`` validates, ``_value`` computes."""

    name: ClassVar[str]

    def estimate(
        self,
        rounds: Rounds,
        *,
        bootstrap_samples: int = 300,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> Estimate:
        """Point estimate and percentile bootstrap interval (resampling rounds, seeded)."""
        (estimate,) = estimate_many(
            [(self, rounds)],
            bootstrap_samples=bootstrap_samples,
            confidence=confidence,
            seed=seed,
        )
        return estimate

    def weights(self, rounds: Rounds) -> np.ndarray:
        """The importance weights the estimator applies, shape (n_rounds,)."""
        return rounds.weight

    @abstractmethod
    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        """(numerator terms, denominator terms), each shape (n_rounds,)."""


class IPS(Estimator):
    name = "ips"

    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        return rounds.weight * rounds.reward, np.ones_like(rounds.reward, dtype=np.float64)


class SNIPS(Estimator):
    name = "snips"

    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        return rounds.weight * rounds.reward, rounds.weight


class DoublyRobust(Estimator):
    name = "dr"

    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        terms = rounds.q_target + rounds.weight * (rounds.reward - rounds.q_logged)
        return terms, np.ones_like(rounds.reward, dtype=np.float64)


class _Thresholded(Estimator):
    """An estimator with a weight threshold ``clip`` (> 0)."""

    def __init__(self, clip: float) -> None:
        if not clip > 0:
            raise ValueError(f"`clip` must be > 0, got {clip}")
        self.clip = clip


class ClippedIPS(_Thresholded):
    """IPS with each weight capped at ``clip`` (Ionides 2008; Strehl et al. 2010)."""

    name = "ips_clipped"

    def weights(self, rounds: Rounds) -> np.ndarray:
        return np.minimum(rounds.weight, self.clip)

    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        return self.weights(rounds) * rounds.reward, np.ones_like(rounds.reward, dtype=np.float64)


class SwitchDR(_Thresholded):
    """DR whose correction is dropped where the weight exceeds ``clip``: the reward model alone
    answers there (Wang, Agarwal & Dudík 2017)."""

    name = "switch_dr"

    def weights(self, rounds: Rounds) -> np.ndarray:
        return np.where(rounds.weight <= self.clip, rounds.weight, 0.0)

    def _terms(self, rounds: Rounds) -> tuple[np.ndarray, np.ndarray]:
        terms = rounds.q_target + self.weights(rounds) * (rounds.reward - rounds.q_logged)
        return terms, np.ones_like(rounds.reward, dtype=np.float64)


@dataclass(frozen=True)
class BootstrapResult:
    """Point values (m,) and paired bootstrap values (bootstrap_samples, m) of m jobs."""

    names: tuple[str, ...]
    points: np.ndarray
    samples: np.ndarray
    diagnostics: tuple[Diagnostics, ...]

    def interval(self, values: np.ndarray, confidence: float) -> tuple[float, float]:
        """Percentile interval of bootstrap ``values`` (shape (bootstrap_samples,))."""
        alpha = (1 - confidence) / 2
        with warnings.catch_warnings():
            # A policy that never agrees with the log has no SNIPS value: NaN, not a warning.
            warnings.simplefilter("ignore", RuntimeWarning)
            lower, upper = np.nanquantile(values, [alpha, 1 - alpha])
        return float(lower), float(upper)

    def estimate(self, j: int, confidence: float) -> Estimate:
        lower, upper = self.interval(self.samples[:, j], confidence)
        return Estimate(self.names[j], float(self.points[j]), lower, upper, self.diagnostics[j])

    def ratio(self, j: int, k: int, confidence: float) -> Estimate:
        """Job j relative to job k (e.g. a policy over the logging policy), paired; with job
        j's diagnostics."""
        with np.errstate(invalid="ignore", divide="ignore"):
            point = self.points[j] / self.points[k]
            values = self.samples[:, j] / self.samples[:, k]
        lower, upper = self.interval(values, confidence)
        return Estimate(f"{self.names[j]}_ratio", float(point), lower, upper, self.diagnostics[j])


def bootstrap(
    jobs: list[tuple[Estimator, Rounds]],
    *,
    bootstrap_samples: int = 300,
    seed: int = 0,
) -> BootstrapResult:
    """Point values and paired bootstrap values of several jobs on the same rounds.

    All ``Rounds`` must have the same length. One resample of the rounds is drawn per
    bootstrap iteration and applied to every job, so policies are compared on the same
    resampled traffic.
    """
    if bootstrap_samples < 10:
        raise ValueError(f"`bootstrap_samples` must be >= 10, got {bootstrap_samples}")
    if not jobs:
        raise ValueError("`jobs` must hold at least one (estimator, rounds) pair, got 0")
    n = len(jobs[0][1].reward)
    if any(len(r.reward) != n for _, r in jobs):
        raise ValueError("all rounds of one bootstrap must have the same length")
    terms = [est._terms(r) for est, r in jobs]
    numerators = np.column_stack([t[0] for t in terms])  # (n, m)
    denominators = np.column_stack([t[1] for t in terms])  # (n, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        points = numerators.sum(axis=0) / denominators.sum(axis=0)
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap_samples, len(jobs)))
        for b in range(bootstrap_samples):
            counts = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            samples[b] = (counts @ numerators) / (counts @ denominators)
    diagnostics = tuple(Diagnostics.of(est.weights(r), r) for est, r in jobs)
    return BootstrapResult(tuple(est.name for est, _ in jobs), points, samples, diagnostics)


def estimate_many(
    jobs: list[tuple[Estimator, Rounds]],
    *,
    bootstrap_samples: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Estimate]:
    """Several estimates on the same rounds with the same (paired) bootstrap resamples."""
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    if not jobs:
        return []
    result = bootstrap(jobs, bootstrap_samples=bootstrap_samples, seed=seed)
    return [result.estimate(j, confidence) for j in range(len(jobs))]


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (IPS(), SNIPS(), DoublyRobust())}


def estimators(clip: float) -> dict[str, Estimator]:
    """IPS, SNIPS, DR, then the variants with the weight threshold ``clip``, by name."""
    return {**ESTIMATORS, **{e.name: e for e in (ClippedIPS(clip), SwitchDR(clip))}}


def observed_value(
    reward: np.ndarray, *, bootstrap_samples: int = 300, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """The logging policy's own value: the mean observed reward, with a bootstrap interval."""
    reward = np.asarray(reward, dtype=np.float64)
    ones = np.ones_like(reward)
    rounds = Rounds(reward, ones, ones, np.zeros_like(reward), np.zeros_like(reward))
    estimate = IPS().estimate(
        rounds, bootstrap_samples=bootstrap_samples, confidence=confidence, seed=seed
    )
    return replace(estimate, estimator="observed")
