"""Arbitration: priority of eligible offers and the slate policy with propensities.

Priority = P(accept) x value x weight. Policies are registered by kind in :data:`POLICIES`;
one implementation decides one or many requests.
"""

from __future__ import annotations

from collections.abc import Mapping

from recsys.arbitration.base import Policy, SlateBatch, greedy_order, priorities
from recsys.arbitration.draws import Draws
from recsys.arbitration.epsilon_greedy import EpsilonGreedy
from recsys.arbitration.softmax import Softmax

POLICIES: dict[str, type[Policy]] = {EpsilonGreedy.kind: EpsilonGreedy, Softmax.kind: Softmax}


def make_policy(kind: str = EpsilonGreedy.kind, **params: float) -> Policy:
    """Build a policy from the registry by ``kind`` (e.g. ``epsilon_greedy``).

    Raises
    ------
    ValueError
        An unknown kind, or parameters the policy refuses.
    """
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(
            f"`policy` must be one of {', '.join(sorted(POLICIES))}, got {kind!r}"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(
            f"policy {kind!r} got unknown parameters {sorted(params)}: {exc}"
        ) from None


def configured_policy(kind: str, epsilon: float, params: Mapping[str, float]) -> Policy:
    """The policy a configuration names: ``kind`` with ``params``; ``epsilon`` (the setting
    ``serving.epsilon``) is epsilon-greedy's exploration share unless ``params`` gives it,
    and no other policy reads it.

    Raises
    ------
    ValueError
        An unknown kind, or parameters the policy refuses.
    """
    if kind == EpsilonGreedy.kind:
        return make_policy(kind, **{"epsilon": epsilon, **params})
    return make_policy(kind, **params)


__all__ = [
    "POLICIES",
    "Draws",
    "EpsilonGreedy",
    "Policy",
    "SlateBatch",
    "Softmax",
    "configured_policy",
    "greedy_order",
    "make_policy",
    "priorities",
]
