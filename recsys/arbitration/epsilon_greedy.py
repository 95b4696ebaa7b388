"""Epsilon-greedy slates.

Each position is filled from the offers still available: with probability ``1 - epsilon``
the best of them (highest priority, ties in catalogue order), with probability ``epsilon``
one of them uniformly at random. The propensity logged for the offer at position ``k`` is its
probability of being chosen there given the offers at positions ``< k``:

    propensity = (1 - epsilon) * [offer is the best remaining] + epsilon / n_remaining

computed over the offers left after every eligibility check, so they are the logging
policy's true probabilities, as off-policy evaluation needs.
:meth:`~recsys.arbitration.base.Policy.first_position_probabilities` gives the same
probability for every eligible offer at position 1 (training evaluates the served policy
with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recsys.arbitration.base import Policy, SlateBatch, greedy_order
from recsys.arbitration.draws import Draws


@dataclass(frozen=True)
class EpsilonGreedy(Policy):
    """Epsilon-greedy slate policy.

    Parameters
    ----------
    epsilon : float in [0, 1]
        Share of positions filled by a uniformly random remaining offer; 0 = greedy, fully
        deterministic, every propensity 1.

    Examples
    --------
    >>> import numpy as np
    >>> slates = EpsilonGreedy(0.0).select(
    ...     np.array([[0.1, 0.3, 0.2]]), np.ones((1, 3), bool), np.array([2]),
    ...     Draws(7, ["c1"], ["web_home"], 0))
    >>> slates.positions.tolist(), slates.propensity.tolist()
    ([[1, 2]], [[1.0, 1.0]])
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
    def exploration_rate(self) -> float:
        return self.epsilon

    def _select(
        self, priority: np.ndarray, eligible: np.ndarray, limits: np.ndarray, draws: Draws
    ) -> SlateBatch:
        n, m = eligible.shape
        n_eligible = np.count_nonzero(eligible, axis=1)
        k = np.minimum(limits, n_eligible)
        k_max = int(k.max()) if n else 0
        past = np.arange(k_max)[None, :] >= k[:, None]
        # picks[i, pos]: index into the greedy order of the offers still available
        picks = np.zeros((n, k_max), dtype=np.int64)
        remaining = n_eligible[:, None] - np.arange(k_max)[None, :]
        if self.epsilon > 0 and k_max:
            # draws 2 pos (explore?) and 2 pos + 1 (which one) of every position at once
            u = draws.uniform(np.arange(2 * k_max)).reshape(n, k_max, 2)
            left = np.maximum(remaining, 1)
            pick = np.minimum((u[:, :, 1] * left).astype(np.int64), left - 1)
            picks = np.where((u[:, :, 0] < self.epsilon) & ~past, pick, 0)
        # rank in the greedy order of each pick: the pick-th rank not taken yet (no pick
        # explored: the ranks are the positions themselves)
        rank = np.broadcast_to(np.arange(k_max), (n, k_max))
        if picks.any():
            rank = np.zeros((n, k_max), dtype=np.int64)
            for pos in range(k_max):
                r = picks[:, pos].copy()
                for taken in np.sort(rank[:, :pos], axis=1).T:
                    r += taken <= r
                rank[:, pos] = r
        order = greedy_order(priority, eligible)
        positions = np.take_along_axis(order, np.minimum(rank, max(m - 1, 0)), axis=1)
        positions[past] = -1
        greedy_share = np.where(picks == 0, 1.0 - self.epsilon, 0.0)
        propensity = self.epsilon / np.maximum(remaining, 1) + greedy_share
        propensity[past] = np.nan
        return SlateBatch(positions, propensity, (picks != 0) & ~past, k)

    def _first_position_probabilities(
        self, priority: np.ndarray, eligible: np.ndarray
    ) -> np.ndarray:
        # (1 - epsilon) * [greedy top] + epsilon / n_eligible on every eligible offer
        n_eligible = np.count_nonzero(eligible, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(n_eligible > 0, self.epsilon / n_eligible, 0.0)
        probability = np.where(eligible, share[:, None], 0.0)
        rows = np.flatnonzero(n_eligible > 0)
        if rows.size:
            top = greedy_order(priority[rows], eligible[rows])[:, 0]
            probability[rows, top] += 1.0 - self.epsilon
        return probability
