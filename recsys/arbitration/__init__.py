"""Arbitration: priority of eligible offers and the slate policy with propensities.

Priority = P(accept) x value x weight. Policies are registered by kind in :data:`POLICIES`;
one implementation decides one or many requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from recsys.arbitration.base import Policy, SlateBatch, greedy_order, priorities
from recsys.arbitration.draws import Draws
from recsys.arbitration.epsilon_greedy import EpsilonGreedy
from recsys.arbitration.softmax import Softmax

POLICIES: dict[str, type[Policy]] = {EpsilonGreedy.kind: EpsilonGreedy, Softmax.kind: Softmax}
#: The service's policy unless the setting ``serving.policy`` names another (its parameters'
#: defaults are the class's: temperature 0.02, floor 0.01). bench/RESULTS.md, "Exploration
#: policies": on the demo it serves more value than epsilon-greedy 0.05, exploring as often.
DEFAULT_POLICY = Softmax.kind


def policy_parameters(kind: str) -> tuple[str, ...]:
    """The parameters policy ``kind`` takes, e.g. ``("temperature", "floor")``.

    Raises
    ------
    ValueError
        An unknown kind.
    """
    return tuple(f.name for f in dataclasses.fields(_policy_class(kind)))


def make_policy(kind: str, **params: float) -> Policy:
    """Build a policy from the registry by ``kind`` (e.g. ``softmax``); a parameter left out
    takes the policy's default.

    Raises
    ------
    ValueError
        An unknown kind, or parameters the policy refuses (the message names them).
    """
    cls = _policy_class(kind)
    unknown = sorted(set(params) - set(policy_parameters(kind)))
    if unknown:
        raise ValueError(
            f"policy {kind!r} got unknown parameters {unknown}; it takes "
            f"{', '.join(policy_parameters(kind))}"
        )
    return cls(**params)


def _policy_class(kind: str) -> type[Policy]:
    try:
        return POLICIES[kind]
    except KeyError:
        raise ValueError(
            f"`policy` must be one of {', '.join(sorted(POLICIES))}, got {kind!r}"
        ) from None


def configured_parameters(
    kind: str, epsilon: float, params: Mapping[str, float]
) -> dict[str, float]:
    """The parameters a configuration gives policy ``kind``: ``params``, and for
    epsilon-greedy ``epsilon`` (the setting ``serving.epsilon``) unless ``params`` gives it;
    no other policy reads ``epsilon``."""
    return {"epsilon": epsilon, **params} if kind == EpsilonGreedy.kind else dict(params)


def configured_policy(kind: str, epsilon: float, params: Mapping[str, float]) -> Policy:
    """The policy a configuration names: ``kind`` with :func:`configured_parameters`.

    Raises
    ------
    ValueError
        An unknown kind, or parameters the policy refuses.
    """
    return make_policy(kind, **configured_parameters(kind, epsilon, params))


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Draws",
    "EpsilonGreedy",
    "Policy",
    "SlateBatch",
    "Softmax",
    "configured_parameters",
    "configured_policy",
    "greedy_order",
    "make_policy",
    "policy_parameters",
    "priorities",
]
