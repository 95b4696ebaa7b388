"""Experiments in a running service: assignment before scoring, the arm in the response, the
event log and the export, shadow arms, holdout controls, levers, and changes without restart."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from experiments.definition import load_experiment, parse_experiment
from experiments.store import SQLiteExperimentStore, open_experiment_store
from recsys.arbitration import Softmax
from recsys.decision import DecisionRequest
from recsys.eventlog import Event, EventType, export_contract
from tests.experiments.factories import definition
from tests.serving.factories import NOW

CUSTOMERS = [f"v{i:04d}" for i in range(60)]  # cold starts: every offer without rules fits


@pytest.fixture
def service(client_factory, tmp_path):
    """(client, store of the same database, run(definition) -> started experiment)."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"  # the store shares the event log's file
    store = open_experiment_store(url)
    client = client_factory(
        experiment_store=open_experiment_store(url), experiments_poll_seconds=0.1
    )

    def run(**overrides) -> None:
        exp = parse_experiment(definition(**overrides))
        store.create(exp, "test")
        store.transition(exp.name, "start", "test")
        client.app.state.components.arms.refresh()

    yield client, store, run
    store.close()


def decide(client, customer_id: str, touchpoint: str = "web_home", **body) -> dict:
    response = client.post(
        "/v1/decisions", json={"customer_id": customer_id, "touchpoint": touchpoint, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_started_experiment_takes_effect_in_the_running_service(service):
    client, store, _ = service
    assert decide(client, "c1")["experiment"] is None
    # what `recsys experiments create/start` does, from another connection
    store.create(parse_experiment(definition()), "cli:ana")
    store.transition("exp-home", "start", "cli:ana")
    assert wait_for(lambda: decide(client, "c1")["experiment"] is not None)
    arms = {decide(client, c)["experiment"]["arm"] for c in CUSTOMERS}
    assert arms == {"control", "treatment"}
    assert decide(client, "c1", touchpoint="app_home")["experiment"] is None  # not its touchpoint
    store.transition("exp-home", "stop", "cli:ana")
    assert wait_for(lambda: decide(client, "c1")["experiment"] is None)


def test_the_arm_is_in_the_response_the_event_log_and_the_export(service, tmp_path):
    client, _, run = service
    run()
    body = decide(client, "c1", unit_id="visitor-42")
    assert body["experiment"]["id"] == "exp-home"
    arm = body["experiment"]["arm"]
    again = decide(client, "c2", unit_id="visitor-42")  # the unit decides, not the customer
    assert again["experiment"] == body["experiment"]
    log = client.app.state.components.event_log
    rows = [r for r in log.decision_rows() if r["decision_id"] == body["decision_id"]]
    assert {(r["experiment_id"], r["arm"], r["unit_id"], r["shadow"]) for r in rows} == {
        ("exp-home", arm, "visitor-42", False)
    }
    summary = export_contract(log, tmp_path / "export")
    exported = pd.read_parquet(summary.decisions_path)
    mine = exported[exported.decision_id == body["decision_id"]]
    assert set(zip(mine.experiment_id, mine.arm, mine.unit_id, strict=True)) == {
        ("exp-home", arm, "visitor-42")
    }
    outside = decide(client, "c1", touchpoint="app_home")
    row = next(r for r in log.decision_rows() if r["decision_id"] == outside["decision_id"])
    assert (row["experiment_id"], row["arm"], row["unit_id"]) == (None, "champion", None)


def test_a_shadow_arm_is_logged_never_served_and_never_a_contact(service, tmp_path):
    client, _, run = service
    run(
        arms=[
            # served: never o_capped; shadow: o_capped first (cap 2 per 7 days)
            {"name": "control", "kind": "control", "share": 1.0,
             "levers": {"excluded_offers": ["o_capped"]}},
            {"name": "greedy", "kind": "shadow",
             "levers": {"offer_weights": {"o_capped": 1000.0}}},
        ]
    )  # fmt: skip
    served = [decide(client, "c1") for _ in range(4)]
    assert {d["experiment"]["arm"] for d in served} == {"control"}
    assert all(o["offer_id"] != "o_capped" for d in served for o in d["offers"])
    log = client.app.state.components.event_log
    shadow = [r for r in log.decision_rows() if r["shadow"]]
    assert {r["arm"] for r in shadow} == {"greedy"}
    assert len({r["decision_id"] for r in shadow}) == 4  # one per served request
    assert {r["decision_id"] for r in shadow}.isdisjoint(d["decision_id"] for d in served)
    # four shadow contacts with a cap of 2: shadow decisions do not count toward caps
    assert sum(r["offer_id"] == "o_capped" and r["position"] == 1 for r in shadow) == 4
    history = log.contact_history(["c1"], NOW - timedelta(days=7))["c1"]
    assert "o_capped" not in history.contacts
    # never served, so no feedback can name it
    result = log.record_events(
        [Event("e1", shadow[0]["decision_id"], "o_capped", EventType.ACCEPT, NOW)]
    )
    assert [r.field for r in result.rejected] == ["decision_id"]
    export = export_contract(log, tmp_path / "export")
    assert export.shadow_rows == len(shadow)
    assert (
        not pd.read_parquet(export.decisions_path)
        .decision_id.isin([r["decision_id"] for r in shadow])
        .any()
    )


SOFTMAX_VS_EPSILON = """\
name: softmax-vs-epsilon
hypothesis: softmax exploration serves more value than epsilon-greedy, exploring as often
touchpoints: [web_home]
arms:
  - name: epsilon
    kind: control
    share: 0.5
    policy: {kind: epsilon_greedy, epsilon: 0.05}
  - name: softmax
    share: 0.5
    policy: {kind: softmax, temperature: 0.5, floor: 0.1}
"""


def test_an_arm_decides_with_the_policy_its_yaml_names_and_logs_its_propensities(service, tmp_path):
    client, store, _ = service
    path = tmp_path / "softmax-vs-epsilon.yaml"
    path.write_text(SOFTMAX_VS_EPSILON)
    store.create(load_experiment(path), "cli:ana")
    store.transition("softmax-vs-epsilon", "start", "cli:ana")
    client.app.state.components.arms.refresh()
    policy = Softmax(temperature=0.5, floor=0.1)
    log = client.app.state.components.event_log
    by_arm: dict[str, int] = {}
    for c in CUSTOMERS:
        response = client.post(
            "/v1/decisions?trace=true", json={"customer_id": c, "touchpoint": "web_home"}
        )
        body = response.json()
        arm = body["experiment"]["arm"]
        by_arm[arm] = by_arm.get(arm, 0) + 1
        if arm == "epsilon":
            assert body["policy"] == "epsilon_greedy(epsilon=0.05)"
            continue
        assert body["policy"] == policy.name == "softmax(temperature=0.5, floor=0.1)"
        # position 1's propensity is the softmax's probability of that offer among the eligible
        scores = body["trace"]["scores"]
        assert len(scores) == body["trace"]["eligible"] > 1
        priority = np.array([[s["priority"] for s in scores]])
        expected = policy.first_position_probabilities(priority, np.ones_like(priority, bool))[0]
        first = body["offers"][0]
        column = [s["offer_id"] for s in scores].index(first["offer_id"])
        assert first["propensity"] == pytest.approx(expected[column])
        assert 0.1 / len(scores) <= first["propensity"] < 1
        logged = [r for r in log.decision_rows() if r["decision_id"] == body["decision_id"]]
        assert {r["policy"] for r in logged} == {policy.name}
        assert [r["propensity"] for r in logged] == pytest.approx(
            [o["propensity"] for o in body["offers"]]
        )
    assert set(by_arm) == {"epsilon", "softmax"}


def test_holdout_random_draws_uniformly_among_eligible_offers(service):
    client, _, run = service
    run(arms=[{"name": "random", "kind": "holdout_random", "share": 1.0}])
    firsts = []
    for c in CUSTOMERS:
        response = client.post(
            "/v1/decisions?trace=true", json={"customer_id": c, "touchpoint": "web_home"}
        )
        body = response.json()
        assert body["experiment"] == {"id": "exp-home", "arm": "random"}
        assert body["policy"] == "epsilon_greedy(epsilon=1)"
        first = body["offers"][0]
        assert first["propensity"] == pytest.approx(1 / body["trace"]["eligible"])
        firsts.append(first["offer_id"])
    assert len(set(firsts)) >= 3  # not the same greedy choice for everyone


def test_holdout_popularity_decides_as_the_fallback_ranking(service, client_factory):
    client, _, run = service
    run(arms=[{"name": "popular", "kind": "holdout_popularity", "share": 1.0}])
    no_model = client_factory("no-model.sqlite", source=None)
    for c in ("c1", "c2", "c3", "v0001"):
        holdout = decide(client, c)
        assert holdout["experiment"]["arm"] == "popular"
        fallback = decide(no_model, c)
        assert holdout["model"] == fallback["model"]
        assert (holdout["fallback"], fallback["fallback"]) == (False, True)  # a control, no fault
        assert [o["offer_id"] for o in holdout["offers"]] == [
            o["offer_id"] for o in fallback["offers"]
        ]


def test_levers_and_the_champion_holdout(service, client_factory):
    client, store, run = service
    run(
        arms=[
            {"name": "control", "kind": "control", "share": 0.5},
            {"name": "no-tv", "share": 0.5, "levers": {"excluded_offers": ["o_tv"]}},
        ]
    )
    by_arm: dict[str, list[dict]] = {"control": [], "no-tv": []}
    for c in CUSTOMERS:
        body = decide(client, c)
        by_arm[body["experiment"]["arm"]].append(body)
    assert any(o["offer_id"] == "o_tv" for d in by_arm["control"] for o in d["offers"])
    assert not any(o["offer_id"] == "o_tv" for d in by_arm["no-tv"] for o in d["offers"])
    # promoted: its levers become the default, applied outside experiments
    store.promote("exp-home", "no-tv", "test", None)
    client.app.state.components.arms.refresh()
    outside = [decide(client, c, touchpoint="app_home") for c in CUSTOMERS[:20]]
    assert all(d["experiment"] is None for d in outside)
    assert not any(o["offer_id"] == "o_tv" for d in outside for o in d["offers"])
    # the champion holdout decides as the champion without any levers
    run(name="exp-holdout", arms=[{"name": "champ", "kind": "holdout_champion", "share": 1.0}])
    plain = client_factory("plain.sqlite")
    for c in [f"w{i}" for i in range(20)]:  # new customers: no contacts (caps) yet
        held = decide(client, c)
        assert held["experiment"] == {"id": "exp-holdout", "arm": "champ"}
        assert [o["offer_id"] for o in held["offers"]] == [
            o["offer_id"] for o in decide(plain, c)["offers"]
        ]


def test_offer_weights_multiply_the_priority(service):
    client, _, run = service
    run(arms=[{"name": "boost", "share": 1.0, "levers": {"offer_weights": {"o_sofa": 3.0}}}])
    body = decide(client, "c1", limit=5)
    sofa = next(o for o in body["offers"] if o["offer_id"] == "o_sofa")
    assert sofa["priority"] == pytest.approx(sofa["score"] * 2.0 * 3.0)  # P x value x weight


def test_a_cap_lever_replaces_the_offer_s_cap_in_its_arm(service):
    client, _, run = service
    run(
        arms=[{"name": "capped", "share": 1.0,
               "levers": {"caps": {"o_tv": {"per_customer": 1, "window_days": 30}}}}]
    )  # fmt: skip
    first = decide(client, "c1", limit=5)
    assert "o_tv" in [o["offer_id"] for o in first["offers"]]
    again = decide(client, "c1", limit=5)
    assert "o_tv" not in [o["offer_id"] for o in again["offers"]]
    # outside the experiment (another touchpoint) the catalogue's cap (none) applies
    assert "o_tv" in [o["offer_id"] for o in decide(client, "c1", "app_home", limit=5)["offers"]]


def test_outside_running_experiments_decisions_are_exactly_today_s(service, client_factory):
    client, _, run = service
    run(arms=[{"name": "boost", "share": 1.0, "levers": {"offer_weights": {"o_sofa": 9.0}}}])
    plain = client_factory("plain.sqlite")  # a service without experiments
    for c in ["c1", "c2", "c3", *CUSTOMERS[:10]]:
        mine, today = decide(client, c, "app_home"), decide(plain, c, "app_home")
        assert mine["experiment"] is None
        for key in ("offers", "model", "policy", "fallback", "cold_start"):
            assert mine[key] == today[key], key


class FlakyStore(SQLiteExperimentStore):
    """The real store, made unreadable on demand (a database outage)."""

    down = False

    def snapshot(self):
        if self.down:
            raise sqlite3.OperationalError("database is locked")
        return super().snapshot()


def test_a_failed_poll_keeps_the_last_known_experiments(client_factory, tmp_path):
    store = FlakyStore(tmp_path / "events.sqlite")
    store.create(parse_experiment(definition()), "test")
    store.transition("exp-home", "start", "test")
    client = client_factory(experiment_store=store, experiments_poll_seconds=0.05)
    arms = client.app.state.components.arms
    assert arms.status()["running"] == ["exp-home"]
    store.down = True
    assert wait_for(lambda: arms.last_error is not None)
    assert "experiment store unreadable: OperationalError" in arms.last_error
    assert decide(client, "c1")["experiment"]["id"] == "exp-home"
    assert arms.status()["running"] == ["exp-home"]


def test_an_experiment_s_dates_are_checked_at_the_decision_time(service):
    client, _, run = service
    run(start="2026-06-02T00:00:00Z", end="2026-06-09T00:00:00Z")
    assert decide(client, "c1")["experiment"] is None  # the service's clock: NOW, June 1
    pipeline = client.app.state.components.pipeline
    request = DecisionRequest("c1", "web_home")
    for day, inside in ((3, True), (9, False)):  # e.g. simulated days played through it
        (decision,) = pipeline.run([request], now=NOW.replace(day=day)).decisions()
        assert (decision.experiment_id == "exp-home") is inside
