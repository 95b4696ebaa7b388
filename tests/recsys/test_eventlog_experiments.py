"""The experiment columns of the decisions table on both backends; shadow rows are no
contacts, refuse no decision for a cap and take no feedback."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from recsys.decision import DecisionRequest
from recsys.eventlog import Event, EventType, SQLiteEventLog
from recsys.eventlog_postgres import PostgresEventLog
from tests.recsys.factories import NOW, decide, make_pipeline

PG = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request, tmp_path):
    if request.param == "sqlite":
        opened = SQLiteEventLog(tmp_path / "events.sqlite")
        yield opened
        opened.close()
        return
    schema = f"recsys_expcol_{uuid.uuid4().hex[:10]}"
    opened = PostgresEventLog.from_url(f"{PG}?schema={schema}")
    yield opened
    opened.close()
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_arm_experiment_unit_and_shadow_are_logged(log):
    decision = decide(make_pipeline(None), DecisionRequest("c1", "web_home", unit_id="cookie-9"))
    served = replace(decision, experiment_id="exp-1", arm="treatment")
    shadow = replace(decision, decision_id="s" + decision.decision_id[1:], arm="greedy",
                     experiment_id="exp-1", shadow=True)  # fmt: skip
    caps = {o.offer_id: (1, 7) for o in decision.offers}  # every served offer capped at 1
    # the shadow copy serves the same offers: as a contact it would break the caps
    assert log.record_decisions_within_caps([served, shadow], caps) == set()
    rows = {(r["decision_id"], r["offer_id"]): r for r in log.decision_rows()}
    offer = decision.offers[0].offer_id
    assert {k: rows[(served.decision_id, offer)][k] for k in
            ("experiment_id", "arm", "unit_id", "shadow")} == {
        "experiment_id": "exp-1", "arm": "treatment", "unit_id": "cookie-9", "shadow": False
    }  # fmt: skip
    assert rows[(shadow.decision_id, offer)]["shadow"] is True
    contacts = log.contact_history(["c1"], NOW - timedelta(days=1))["c1"].contacts
    assert {o: len(t) for o, t in contacts.items()} == {o.offer_id: 1 for o in decision.offers}
    result = log.record_events(
        [
            Event("e1", served.decision_id, offer, EventType.ACCEPT, NOW),
            Event("e2", shadow.decision_id, offer, EventType.ACCEPT, NOW),
        ]
    )
    assert result.new == ("e1",)
    assert [(r.event_id, r.field) for r in result.rejected] == [("e2", "decision_id")]
