"""Arbitration: priority of eligible offers, the slate, and exploration with propensities.

Priority = P(accept) x value x weight. The greedy slate is the ``limit`` offers of highest
priority (ties: catalogue order). Epsilon-greedy exploration fills each position from the
offers still available: with probability ``1 - epsilon`` the best of them, with probability
``epsilon`` one of them uniformly at random. The propensity logged for the offer served at
position ``k`` is its probability of being chosen there given the offers served at
positions ``< k`` (for a one-slot touchpoint, simply its probability of being shown):

    propensity = (1 - epsilon) * [offer is the best remaining] + epsilon / n_remaining

Propensities are computed over the offers left after every eligibility rule, so they are
the true probabilities of the logging policy, as off-policy evaluation needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def priorities(p_accept: np.ndarray, value: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Priority of each offer; all arrays shape (n,) -> (n,)."""
    return p_accept * value * weight


def greedy_order(priority: np.ndarray) -> np.ndarray:
    """Indices by decreasing priority, ties in input order; shape (n,) -> (n,)."""
    return np.argsort(-priority, kind="stable")


@dataclass(frozen=True)
class Slate:
    """The offers chosen for one decision, best position first.

    Attributes
    ----------
    positions : ndarray of int, shape (k,)
        Indices into the eligible offers.
    propensity : ndarray of float, shape (k,)
        Probability of choosing that offer at that position (given earlier positions).
    explored : ndarray of bool, shape (k,)
        True where the offer is not the greedy choice at that position.
    position_probabilities : tuple of ndarray, each shape (n,)
        The full choice distribution over eligible offers at each position (zero for
        offers already placed); each sums to 1. Kept for traces and tests.
    """

    positions: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    position_probabilities: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class EpsilonGreedy:
    """Epsilon-greedy slate policy.

    Parameters
    ----------
    epsilon : float in [0, 1]
        Share of positions filled by a uniformly random remaining offer. 0 = greedy, fully
        deterministic, every propensity 1.

    Examples
    --------
    >>> policy = EpsilonGreedy(epsilon=0.0)
    >>> slate = policy.select(np.array([0.1, 0.3, 0.2]), limit=2, rng=None)
    >>> slate.positions.tolist(), slate.propensity.tolist()
    ([1, 2], [1.0, 1.0])
    """

    epsilon: float = 0.0
    kind: ClassVar[str] = "epsilon_greedy"

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"`epsilon` must be in [0, 1], got {self.epsilon}")

    @property
    def name(self) -> str:
        return "greedy" if self.epsilon == 0 else f"epsilon_greedy(epsilon={self.epsilon:g})"

    @property
    def explores(self) -> bool:
        return self.epsilon > 0

    def select(
        self,
        priority: np.ndarray,
        limit: int,
        rng: np.random.Generator | None,
        with_distributions: bool = False,
    ) -> Slate:
        """Choose up to ``limit`` offers.

        Parameters
        ----------
        priority : ndarray of float, shape (n,)
        limit : int >= 1
        rng : numpy Generator, required when ``epsilon > 0``
        with_distributions : bool
            Also return the choice distribution of every position.

        Returns
        -------
        Slate with k = min(limit, n) positions.

        Raises
        ------
        ValueError
            If ``limit < 1`` or an exploring policy gets no ``rng``.
        """
        if limit < 1:
            raise ValueError(f"`limit` must be >= 1, got {limit}")
        n = priority.shape[0]
        k = min(limit, n)
        order = greedy_order(priority)
        if not self.explores:
            dists: tuple[np.ndarray, ...] = ()
            if with_distributions:
                dists = tuple(_one_hot(n, order[i]) for i in range(k))
            return Slate(order[:k], np.ones(k), np.zeros(k, dtype=bool), dists)
        if rng is None:
            raise ValueError("`rng` must be a numpy Generator when epsilon > 0, got None")
        remaining = list(order)  # kept in greedy order: remaining[0] is the best left
        positions = np.empty(k, dtype=np.int64)
        propensity = np.empty(k)
        explored = np.zeros(k, dtype=bool)
        dist_list: list[np.ndarray] = []
        for pos in range(k):
            m = len(remaining)
            if with_distributions:
                dist = np.zeros(n)
                dist[remaining] = self.epsilon / m
                dist[remaining[0]] += 1.0 - self.epsilon
                dist_list.append(dist)
            pick = int(rng.integers(m)) if rng.random() < self.epsilon else 0
            chosen = remaining.pop(pick)
            positions[pos] = chosen
            propensity[pos] = self.epsilon / m + (1.0 - self.epsilon if pick == 0 else 0.0)
            explored[pos] = pick != 0
        return Slate(positions, propensity, explored, tuple(dist_list))


def _one_hot(n: int, i: int) -> np.ndarray:
    out = np.zeros(n)
    out[i] = 1.0
    return out


POLICIES: dict[str, type[EpsilonGreedy]] = {EpsilonGreedy.kind: EpsilonGreedy}


def make_policy(kind: str = EpsilonGreedy.kind, **params: float) -> EpsilonGreedy:
    """Build a policy from the registry by ``kind`` (e.g. ``epsilon_greedy``)."""
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(
            f"`policy` must be one of {', '.join(sorted(POLICIES))}, got {kind!r}"
        ) from None
    return cls(**params)
