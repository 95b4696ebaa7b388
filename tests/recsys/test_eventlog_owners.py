"""Whose decision is it: the customer a browser's event is checked against, both backends."""

from __future__ import annotations

from dataclasses import replace

from recsys.decision import DecisionRequest
from tests.recsys.factories import decide, make_pipeline
from tests.recsys.test_eventlog_experiments import log  # noqa: F401 (sqlite and postgresql)


def test_decision_customers_names_the_customer_of_each_served_decision(log):  # noqa: F811
    pipeline = make_pipeline(None)
    alice = decide(pipeline, DecisionRequest("alice", "web_home"))
    bob = decide(pipeline, DecisionRequest("bob", "web_home"))
    shadow = replace(bob, decision_id="s" + bob.decision_id[1:], shadow=True)
    log.record_decisions([alice, bob, shadow])
    owners = log.decision_customers(
        [alice.decision_id, bob.decision_id, shadow.decision_id, "nope"]
    )
    # shadow copies take no feedback, unknown ids are left out
    assert owners == {alice.decision_id: "alice", bob.decision_id: "bob"}
    assert log.decision_customers([]) == {}
