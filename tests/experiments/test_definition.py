"""Experiment definitions: YAML in, field-level errors out."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.definition import (
    ArmKind,
    ExperimentDefinitionError,
    load_experiment,
    parse_experiment,
)
from recsys.datagen.catalog import OFFERS, TOUCHPOINTS
from tests.experiments.factories import definition

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "experiments"


def test_the_documented_example_loads():
    exp = load_experiment(EXAMPLES / "web-home-challenger.yaml")
    assert exp.name == "web-home-challenger"
    assert [a.kind for a in exp.arms] == [
        ArmKind.CONTROL,
        ArmKind.TREATMENT,
        ArmKind.HOLDOUT_RANDOM,
        ArmKind.HOLDOUT_POPULARITY,
        ArmKind.SHADOW,
    ]
    challenger = exp.arm("challenger")
    assert challenger.model.alias == "challenger"
    assert challenger.levers.offer_weights == {"OF003": 1.5}
    assert challenger.levers.caps["OF006"].per_customer == 2
    assert exp.assignment_salt == "web-home-challenger-1"
    # written for the demo business: its touchpoints and offers exist there
    exp.check_catalog({o.offer_id for o in OFFERS}, {t.touchpoint_id for t in TOUCHPOINTS})


ARMS = definition()["arms"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"arms": [{"name": "a", "share": 0.6}, {"name": "b", "share": 0.3}]},
            r"`arms\[\]\.share`: expected the served arms' shares to sum to 1, got a 0\.6 \+ "
            r"b 0\.3 = 0\.9",
        ),
        (
            {"arms": [{"name": "a", "share": 1.0}, {"name": "b", "share": 1.5}]},
            r"`arms\[1\]\.share`: Input should be less than or equal to 1, got 1\.5",
        ),
        (
            {"arms": [*ARMS, {"name": "s", "kind": "shadow", "share": 0.2}]},
            r"`arms\[2\]`: expected a shadow arm with `share` 0 or left out \(it is never served\)",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "r", "kind": "holdout_random", "share": 0.5,
                                  "levers": {"excluded_offers": ["o_tv"]}}]},
            r"`arms\[1\]`: expected a holdout_random arm without `levers` \(its recipe is fixed",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5, "kind": "winner"}]},
            r"`arms\[1\]\.kind`: Input should be 'treatment', .*got 'winner'",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5,
                                  "levers": {"offer_weights": {"o_tv": 0}}}]},
            r"`arms\[1\]\.levers\.offer_weights`: expected weights > 0 \(offer 'o_tv' has 0\.0\)",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5,
                                  "model": {"alias": "challenger", "version": 3}}]},
            r"`arms\[1\]\.model`: expected exactly one of `alias` or `version`",
        ),
        (
            {"primary_metric": "happiness"},
            r"`primary_metric`: expected a metric among acceptance_rate, .*got 'happiness'",
        ),
        (
            {"guardrails": [{"metric": "dismiss_rate"}]},
            r"`guardrails\[0\]`: expected a threshold: `max`, `min` and/or `max_relative_change`",
        ),
        (
            {"start": "2026-06-02T00:00:00Z", "end": "2026-06-01T00:00:00Z"},
            r"`end`: expected a time after `start` \(2026-06-02T00:00:00\+00:00\), got "
            r"2026-06-01T00:00:00\+00:00",
        ),
        ({"start": "2026-06-02T00:00:00"}, r"`start`: Input should have timezone info"),
        ({"name": "Exp 1"}, r"`name`: expected a name of 1-63 lowercase letters.*got 'Exp 1'"),
        ({"touchpoints": []}, r"`touchpoints`: Tuple should have at least 1 item after validation, not 0, got \[\]"),
        ({"colour": "red"}, r"`colour`: Extra inputs are not permitted, got 'red'"),
        ({"arms": [*ARMS, ARMS[0]]}, r"`arms\[\]\.name`: expected distinct names, got control"),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5,
                                  "policy": {"kind": "softmax", "temperature": -1}}]},
            r"`arms\[1\]\.policy`: policy softmax: `temperature` must be > 0, got -1.0$",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5,
                                  "policy": {"kind": "softmax", "tempreature": 0.1}}]},
            r"`arms\[1\]\.policy`: policy softmax takes temperature, floor, got `tempreature`$",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5,
                                  "policy": {"kind": "softmax", "floor": "high"}}]},
            r"`arms\[1\]\.policy`: `floor` must be a number, got 'high'$",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5, "policy": {"epsilon": 1.5}}]},
            r"`arms\[1\]\.policy`: policy epsilon_greedy: `epsilon` must be in \[0, 1\], got 1.5$",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "t", "share": 0.5, "policy": {"kind": "thompson"}}]},
            r"`arms\[1\]\.policy`: `kind` must be one of epsilon_greedy, softmax, "
            r"got 'thompson'$",
        ),
        (
            {"arms": [*ARMS[:1], {"name": "r", "kind": "holdout_random", "share": 0.5,
                                  "policy": {"kind": "softmax"}}]},
            r"`arms\[1\]`: expected a holdout_random arm without `policy` \(its recipe is fixed",
        ),
    ],
)  # fmt: skip
def test_bad_definitions_name_the_field_expected_and_received(overrides, message):
    with pytest.raises(ExperimentDefinitionError, match=message):
        parse_experiment(definition(**overrides))


def test_an_arm_names_any_registered_policy_with_its_parameters(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(
        "name: softmax-vs-epsilon\nhypothesis: softmax explores where it costs little\n"
        "touchpoints: [web_home]\narms:\n"
        "  - {name: epsilon, kind: control, share: 0.5, policy: {kind: epsilon_greedy, "
        "epsilon: 0.05}}\n"
        "  - {name: softmax, share: 0.5, policy: {kind: softmax, temperature: 0.05}}\n"
        "  - {name: service, kind: shadow}\n"
        "  - {name: greedy, kind: shadow, policy: {epsilon: 0}}\n"
    )
    exp = load_experiment(path)
    policies = {a.name: (a.policy.chosen_kind, a.policy.params) for a in exp.arms}
    assert policies == {
        "epsilon": ("epsilon_greedy", {"epsilon": 0.05}),
        "softmax": ("softmax", {"temperature": 0.05}),
        "service": (None, {}),  # the service's policy
        "greedy": ("epsilon_greedy", {"epsilon": 0.0}),  # parameters alone: epsilon-greedy's
    }
    # stored as JSON and read back unchanged
    assert parse_experiment(exp.model_dump(mode="json")) == exp


def test_the_exploration_example_compares_softmax_with_epsilon_greedy():
    exp = load_experiment(EXAMPLES / "exploration.yaml")
    policies = {a.name: (a.policy.chosen_kind, a.policy.params) for a in exp.arms}
    assert policies == {
        "epsilon-greedy": ("epsilon_greedy", {"epsilon": 0.05}),
        "softmax": ("softmax", {"temperature": 0.02, "floor": 0.01}),
    }
    exp.check_catalog({o.offer_id for o in OFFERS}, {t.touchpoint_id for t in TOUCHPOINTS})
    for name in ("web-home-challenger.yaml", "demo-live.yaml"):  # every example loads
        load_experiment(EXAMPLES / name)


def test_a_definition_stored_before_arms_chose_a_policy_kind_still_loads():
    stored = definition(
        arms=[
            {"name": "c", "kind": "control", "share": 0.5,
             "policy": {"kind": "epsilon_greedy", "epsilon": None}},
            {"name": "t", "share": 0.25, "policy": {"kind": "epsilon_greedy", "epsilon": 0.0}},
            {"name": "r", "kind": "holdout_random", "share": 0.25,
             "policy": {"kind": "epsilon_greedy", "epsilon": None}},
        ]
    )  # fmt: skip
    c, t, r = parse_experiment(stored).arms
    assert not c.policy.given  # the service's policy, whichever `serving.policy` names
    assert (t.policy.chosen_kind, t.policy.params) == ("epsilon_greedy", {"epsilon": 0.0})
    assert not r.policy.given


def test_a_yaml_file_error_names_the_file_and_every_bad_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: exp-x\nhypothesis: h\ntouchpoints: [web_home]\ntraffic: 2\n"
        "arms:\n  - {name: a, share: 1}\n  - {name: b, kind: shadow, share: 0.5}\n"
    )
    with pytest.raises(ExperimentDefinitionError) as caught:
        load_experiment(path)
    assert str(path) in str(caught.value)
    assert caught.value.problems == [
        "`traffic`: Input should be less than or equal to 1, got 2",
        "`arms[1]`: expected a shadow arm with `share` 0 or left out (it is never served)",
    ]


def test_not_yaml_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ExperimentDefinitionError, match=r"(?s)broken.yaml.*not valid YAML"):
        load_experiment(path)


def test_levers_and_touchpoints_are_checked_against_the_catalogue():
    exp = parse_experiment(
        definition(
            touchpoints=["web_home", "kiosk"],
            arms=[
                {"name": "control", "kind": "control", "share": 0.5},
                {"name": "t", "share": 0.5, "levers": {"excluded_offers": ["o_gone"]}},
            ],
        )
    )
    with pytest.raises(ExperimentDefinitionError) as caught:
        exp.check_catalog({"o_tv"}, {"web_home"})
    assert caught.value.problems == [
        "`touchpoints[1]`: expected a touchpoint of the catalogue, got 'kiosk'",
        "`arms[1].levers`: expected offers of the catalogue, got 'o_gone'",
    ]
