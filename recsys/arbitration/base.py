"""What every slate policy shares: priorities, the slate batch it returns, its interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from recsys.arbitration.draws import Draws


def priorities(p_accept: np.ndarray, value: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Priority = P(accept) x value x weight; arrays of one shape -> that shape."""
    return p_accept * value * weight


def greedy_order(priority: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Columns of each row: eligible first, by decreasing priority (NaN last), ties in
    catalogue order; shapes (n, m) -> (n, m)."""
    key = -np.where(np.isnan(priority), -np.inf, priority)
    return np.lexsort((key, ~eligible), axis=-1)


@dataclass(frozen=True)
class SlateBatch:
    """The slates of n decisions, best position first; padded with -1 past ``k``.

    Attributes
    ----------
    positions : ndarray of int64, shape (n, k_max)
        Column (candidate) of the offer at each position; -1 past ``k``.
    propensity : ndarray of float64, shape (n, k_max)
        Probability of choosing that offer at that position given the earlier positions;
        NaN past ``k``.
    explored : ndarray of bool, shape (n, k_max)
        True where the offer is not the greedy choice at that position.
    k : ndarray of int64, shape (n,)
        Positions filled: ``min(limit, eligible offers)``.
    """

    positions: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    k: np.ndarray


@dataclass(frozen=True)
class Policy(ABC):
    """A slate policy: which eligible offers each decision shows, with propensities.

    A new policy is a module beside its siblings plus one line in
    ``recsys.arbitration.POLICIES``: a frozen dataclass whose fields are its parameters
    (:func:`recsys.arbitration.make_policy` builds it from them).
    """

    kind: ClassVar[str]

    @property
    @abstractmethod
    def name(self) -> str:
        """How decisions and the event log name the policy (with its settings)."""

    @property
    @abstractmethod
    def exploration_rate(self) -> float:
        """Share of positions not filled greedily (0 = deterministic)."""

    def select(
        self, priority: np.ndarray, eligible: np.ndarray, limits: np.ndarray, draws: Draws
    ) -> SlateBatch:
        """The slate of every row of a priority matrix, over the row's eligible columns.

        Parameters
        ----------
        priority : ndarray of float64, shape (n, m); only eligible cells are read
        eligible : ndarray of bool, shape (n, m)
        limits : ndarray of int, shape (n,), each >= 1
        draws : Draws
            The decisions' random numbers (counter-based, reproducible).

        Raises
        ------
        ValueError
            If the shapes disagree or a limit is below 1.
        """
        n = eligible.shape[0]
        if priority.shape != eligible.shape or limits.shape != (n,) or len(draws) != n:
            raise ValueError(
                f"`priority` and `eligible` must have one shape and `limits`/`draws` one entry "
                f"per row ({n}), got {priority.shape}, {eligible.shape}, {limits.shape}, "
                f"{len(draws)}"
            )
        if n and limits.min() < 1:
            raise ValueError(f"`limit` must be >= 1, got {int(limits.min())}")
        return self._select(priority, eligible, np.asarray(limits, dtype=np.int64), draws)

    @abstractmethod
    def _select(
        self, priority: np.ndarray, eligible: np.ndarray, limits: np.ndarray, draws: Draws
    ) -> SlateBatch: ...

    def first_position_probabilities(
        self, priority: np.ndarray, eligible: np.ndarray
    ) -> np.ndarray:
        """The probability of each offer being chosen first: what off-policy evaluation of
        this policy needs (the propensity :meth:`select` logs at position 1, for every cell).

        Parameters
        ----------
        priority : ndarray of float64, shape (n, m); only eligible cells are read
        eligible : ndarray of bool, shape (n, m)

        Returns
        -------
        ndarray of float64, shape (n, m)
            0 on ineligible cells; each row sums to 1 (0 for a row with nothing eligible).

        Raises
        ------
        ValueError
            If the shapes disagree.
        """
        if priority.shape != eligible.shape or priority.ndim != 2:
            raise ValueError(
                f"`priority` and `eligible` must have one 2-D shape (n, m), got "
                f"{priority.shape} and {eligible.shape}"
            )
        return self._first_position_probabilities(priority, eligible.astype(bool, copy=False))

    @abstractmethod
    def _first_position_probabilities(
        self, priority: np.ndarray, eligible: np.ndarray
    ) -> np.ndarray: ...
