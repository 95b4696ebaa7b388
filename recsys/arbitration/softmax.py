"""Softmax (Boltzmann) slates with a uniform floor: explore where the model is unsure.

Epsilon-greedy explores uniformly: an offer worth a tenth of the best one is shown as often as
its near-twin, so exploration costs about ``epsilon`` x (best - mean). This policy spends its
exploration on the offers whose priority is close to the best one, where a wrong ranking is
likely and showing the runner-up costs little, and keeps a small uniform share so every
eligible offer keeps a known propensity (off-policy evaluation and retraining need it).

Each position is filled from the offers still available, with probability

    propensity(j) = floor / n_remaining + (1 - floor) * w_j / sum(w over remaining)
    w_j = exp((priority_j - top) / (temperature * scale))

where ``top`` is the best priority of the decision's eligible offers and ``scale`` their
largest absolute priority, so the temperature is relative: at ``temperature`` 0.05 an offer 5%
below the best one gets ``exp(-1)`` of its weight, one 25% below ``exp(-5)``. The weights do
not depend on the priorities' unit (P, P x value, ...). Every eligible offer has propensity at
least ``floor / n_remaining`` (the largest importance weight is bounded by
``n_remaining / floor``). Positions after the first are a Plackett-Luce draw without
replacement; the propensity logged at position ``k`` is the probability of that offer there
given the offers at positions ``< k``, computed over the offers left after every eligibility
check. One uniform draw per position chooses by the inverse cumulative probability over the
offers in greedy order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recsys.arbitration.base import Policy, SlateBatch, greedy_order
from recsys.arbitration.draws import Draws


@dataclass(frozen=True)
class Softmax(Policy):
    """Softmax slate policy over the priority, relative to the best one, with a uniform floor.

    Parameters
    ----------
    temperature : float > 0
        Relative priority gap that divides an offer's weight by e (0.02: an offer 2% below
        the best one). Small = close to greedy.
    floor : float in (0, 1]
        Share of every position drawn uniformly among the remaining offers: the guaranteed
        support (each offer >= ``floor / n_remaining``). 1 = uniformly random.

    Examples
    --------
    >>> import numpy as np
    >>> slates = Softmax(temperature=0.1, floor=0.03).select(
    ...     np.array([[0.1, 0.3, 0.2]]), np.ones((1, 3), bool), np.array([1]),
    ...     Draws(7, ["c1"], ["web_home"], 0))
    >>> slates.positions.tolist(), slates.propensity.round(4).tolist()
    ([[1]], [[0.9454]])

    Raises
    ------
    ValueError
        ``temperature`` not > 0 or ``floor`` not in (0, 1].
    """

    temperature: float = 0.02
    floor: float = 0.01
    kind: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        if not (0.0 < self.floor <= 1.0):
            raise ValueError(f"`floor` must be in (0, 1], got {self.floor}")

    @property
    def name(self) -> str:
        return f"softmax(temperature={self.temperature:g}, floor={self.floor:g})"

    @property
    def exploration_rate(self) -> float:
        """The uniform share ``floor``: a lower bound of the share of positions not filled
        greedily (the softmax part adds more where priorities are close)."""
        return self.floor

    def _weights(self, priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """Softmax weight of every cell, in (0, 1] on eligible cells (1 for the best), 0
        elsewhere; a NaN priority counts as the row's lowest; shape (n, m)."""
        finite = eligible & np.isfinite(priority)
        low = np.where(finite, priority, np.inf).min(axis=1, keepdims=True)
        p = np.where(finite, priority, np.where(np.isfinite(low), low, 0.0))
        top = np.where(eligible, p, -np.inf).max(axis=1, keepdims=True)
        scale = np.where(eligible, np.abs(p), 0.0).max(axis=1, keepdims=True)
        scale = np.where(scale > 0, scale, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            w = np.exp((p - top) / (self.temperature * scale))
        return np.where(eligible, np.nan_to_num(w, nan=1.0), 0.0)

    def _probabilities(self, weights: np.ndarray, available: np.ndarray) -> np.ndarray:
        """floor / n + (1 - floor) * w / sum(w) over each row's available cells; shape
        (n, m), 0 where not available (and on rows with nothing available)."""
        n_available = np.count_nonzero(available, axis=1)[:, None]
        w = np.where(available, weights, 0.0)
        total = w.sum(axis=1, keepdims=True)
        # every weight underflowed (only at absurd temperatures): the softmax part is uniform
        w = np.where(total > 0, w, available.astype(np.float64))
        total = np.where(total > 0, total, np.maximum(n_available, 1))
        uniform = available / np.maximum(n_available, 1)
        return self.floor * uniform + (1.0 - self.floor) * w / total

    def _select(
        self, priority: np.ndarray, eligible: np.ndarray, limits: np.ndarray, draws: Draws
    ) -> SlateBatch:
        n, m = eligible.shape
        order = greedy_order(priority, eligible)
        available = np.take_along_axis(eligible, order, axis=1).copy()
        weights = np.take_along_axis(self._weights(priority, eligible), order, axis=1)
        k = np.minimum(limits, np.count_nonzero(eligible, axis=1))
        k_max = int(k.max()) if n else 0
        u = draws.uniform(np.arange(k_max)).reshape(n, k_max)
        positions = np.full((n, k_max), -1, dtype=np.int64)
        propensity = np.full((n, k_max), np.nan)
        explored = np.zeros((n, k_max), dtype=bool)
        rows = np.arange(n)
        for pos in range(k_max):
            active = pos < k
            prob = self._probabilities(weights, available)
            cdf = np.cumsum(prob, axis=1)
            # the first cell whose cumulative probability passes the draw (an available one:
            # the cumulative sum is flat over the others)
            pick = np.minimum(np.argmax(cdf > u[:, pos, None] * cdf[:, -1:], axis=1), m - 1)
            best = np.argmax(available, axis=1)  # the best remaining, in greedy order
            r, c = rows[active], pick[active]
            positions[r, pos] = order[r, c]
            propensity[r, pos] = prob[r, c]
            explored[r, pos] = c != best[active]
            available[r, c] = False
        return SlateBatch(positions, propensity, explored, k)

    def _first_position_probabilities(
        self, priority: np.ndarray, eligible: np.ndarray
    ) -> np.ndarray:
        return self._probabilities(self._weights(priority, eligible), eligible)
