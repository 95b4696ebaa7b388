"""Arm recipes: the policy each arm decides with."""

from __future__ import annotations

import pytest

from experiments.recipes import Service, arm_recipe
from recsys.arbitration import EpsilonGreedy, Softmax
from recsys.settings import ServingSettings
from tests.experiments.factories import experiment
from tests.recsys.factories import make_catalog

#: The service's settings: epsilon-greedy 0.1 served, softmax's floor set.
SERVING = ServingSettings(
    policy="epsilon_greedy", epsilon=0.1, policy_params={"softmax": {"floor": 0.05}}
)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, EpsilonGreedy(0.1)),  # the service's policy
        ({"kind": "softmax"}, Softmax(temperature=0.02, floor=0.05)),  # the service's floor
        ({"kind": "softmax", "floor": 0.2}, Softmax(temperature=0.02, floor=0.2)),
        ({"kind": "softmax", "temperature": 0.3}, Softmax(temperature=0.3, floor=0.05)),
        ({"kind": "epsilon_greedy"}, EpsilonGreedy(0.1)),  # the service's epsilon
        ({"epsilon": 0.0}, EpsilonGreedy(0.0)),  # parameters alone: epsilon-greedy's
    ],
)
def test_an_arm_takes_the_services_parameters_for_those_it_leaves_out(policy, expected):
    exp = experiment(
        arms=[
            {"name": "control", "kind": "control", "share": 0.5},
            {"name": "t", "share": 0.5, "policy": policy},
        ]
    )
    service = Service(
        SERVING.slate_policy(), make_catalog(), SERVING.policy_parameters(), "champion"
    )
    assert arm_recipe(exp.arm("t"), service).policy == expected
    assert arm_recipe(exp.arm("control"), service).policy == EpsilonGreedy(0.1)
