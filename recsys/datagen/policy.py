"""The logging policy: epsilon-greedy slates over a business-rules score.

Position by position, from the candidates not shown yet: with probability ``1 - epsilon``
the one with the highest business score (``value x weight``; ties go to the offer listed
first in the catalogue), otherwise one drawn uniformly. So every candidate has a positive
probability, and the probability of the chosen offer at a position given the earlier
positions is ``epsilon / n_remaining + (1 - epsilon) * [chosen is the greedy one]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICY_NAME = "epsilon_greedy_rules"


@dataclass(frozen=True)
class Slate:
    """Shown offers, one entry per (decision, position); arrays of shape (n_shown,)."""

    row: np.ndarray  # index of the decision in the round
    offer: np.ndarray  # offer index
    position: np.ndarray  # 1-based
    propensity: np.ndarray  # P(offer at this position | earlier positions)


def epsilon_greedy_slates(
    candidates: np.ndarray,
    score: np.ndarray,
    slots: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
) -> Slate:
    """Pick a slate for each decision.

    Parameters
    ----------
    candidates : bool array, shape (n_decisions, n_offers)
        Eligible offers per decision (at least one per row).
    score : float array, shape (n_offers,)
        Business score; higher is preferred by the greedy part.
    slots : int array, shape (n_decisions,)
        Offers wanted per decision; fewer are shown when fewer candidates exist.
    epsilon : float
        Exploration probability in (0, 1].
    rng : numpy Generator
    """
    if not 0 < epsilon <= 1:
        raise ValueError(f"`epsilon` must be in (0, 1], got {epsilon}")
    remaining = candidates.copy()
    n_show = np.minimum(slots, candidates.sum(axis=1))
    rows, offers, positions, props = [], [], [], []
    all_rows = np.arange(len(candidates))
    for k in range(int(n_show.max(initial=0))):
        active = all_rows[n_show > k]
        rem = remaining[active]
        n_rem = rem.sum(axis=1)
        greedy = np.argmax(np.where(rem, score[None, :], -np.inf), axis=1)  # first max wins
        explore = rng.random(len(active)) < epsilon
        pick_rank = np.minimum((rng.random(len(active)) * n_rem).astype(np.int64), n_rem - 1)
        uniform = np.argmax(np.cumsum(rem, axis=1) > pick_rank[:, None], axis=1)
        chosen = np.where(explore, uniform, greedy)
        prop = epsilon / n_rem + (1.0 - epsilon) * (chosen == greedy)
        remaining[active, chosen] = False
        rows.append(active)
        offers.append(chosen)
        positions.append(np.full(len(active), k + 1))
        props.append(prop)
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return Slate(empty, empty, empty, np.zeros(0))
    return Slate(
        row=np.concatenate(rows),
        offer=np.concatenate(offers),
        position=np.concatenate(positions),
        propensity=np.concatenate(props),
    )


def first_position_probabilities(
    candidates: np.ndarray, score: np.ndarray, epsilon: float
) -> np.ndarray:
    """P(offer shown at position 1) for each candidate, shape (n_decisions, n_offers).

    Rows sum to 1; non-candidates get 0. Off-policy evaluation can use it for the logging
    policy's full action distribution.
    """
    n = candidates.sum(axis=1, keepdims=True)
    greedy = np.argmax(np.where(candidates, score[None, :], -np.inf), axis=1)
    probs = np.where(candidates, epsilon / np.maximum(n, 1), 0.0)
    probs[np.arange(len(candidates)), greedy] += 1.0 - epsilon
    return probs
