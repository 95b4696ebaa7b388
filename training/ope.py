"""Off-policy evaluation: the value a target policy would have had on logged traffic.

A round is one logged decision's first shown offer (its propensity is the marginal
probability of that offer in that position). Estimators (Dudík et al. 2011; Swaminathan &
Joachims 2015), all with a seeded bootstrap percentile interval:

- IPS:   mean(w * r)                     with w = pi(a|x) / p(a|x)
- SNIPS: sum(w * r) / sum(w)
- DR:    mean(q_pi(x) + w * (r - q(x, a)))  with q the model's predicted reward
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
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
class Estimate:
    """A policy value with its bootstrap interval."""

    estimator: str
    value: float
    lower: float
    upper: float

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


@dataclass(frozen=True)
class BootstrapResult:
    """Point values (m,) and paired bootstrap values (bootstrap_samples, m) of m jobs."""

    names: tuple[str, ...]
    points: np.ndarray
    samples: np.ndarray

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
        return Estimate(self.names[j], float(self.points[j]), lower, upper)

    def ratio(self, j: int, k: int, confidence: float) -> Estimate:
        """Job j relative to job k (e.g. a policy over the logging policy), paired."""
        with np.errstate(invalid="ignore", divide="ignore"):
            point = self.points[j] / self.points[k]
            values = self.samples[:, j] / self.samples[:, k]
        lower, upper = self.interval(values, confidence)
        return Estimate(f"{self.names[j]}_ratio", float(point), lower, upper)


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
    return BootstrapResult(tuple(est.name for est, _ in jobs), points, samples)


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
    return Estimate("observed", estimate.value, estimate.lower, estimate.upper)
