"""Preview decisions (``?preview=true``): decided and traced like any other, never a contact."""

from __future__ import annotations

from datetime import timedelta

from tests.serving.factories import NOW


def post_decision(client, query="", customer="c1"):
    response = client.post(
        "/v1/decisions" + query, json={"customer_id": customer, "touchpoint": "web_home"}
    )
    assert response.status_code == 200, response.text
    return response.json()


def offer_ids(body):
    return [o["offer_id"] for o in body["offers"]]


def test_a_capped_offer_stays_servable_after_previews(client):
    log = client.app.state.components.event_log
    previews = [post_decision(client, "?preview=true") for _ in range(5)]
    assert all(p["preview"] is True for p in previews)
    # o_capped (2 contacts per 7 days) is in every preview: none of them was a contact
    assert all("o_capped" in offer_ids(p) for p in previews)
    assert log.counts() == {"decision_rows": 0, "decisions_without_offers": 0, "events": 0}
    assert log.contact_history(["c1"], NOW - timedelta(days=7)) == {}
    real = [post_decision(client) for _ in range(3)]
    assert [r["preview"] for r in real] == [False] * 3
    # real decisions are contacts: the cap removes the offer from the third one on
    assert ["o_capped" in offer_ids(r) for r in real] == [True, True, False]
    assert "o_capped" not in offer_ids(post_decision(client, "?preview=true"))


def test_a_preview_traces_and_takes_no_events(client):
    body = post_decision(client, "?preview=true&trace=true")
    assert body["preview"] is True and body["trace"]["eligible"] == len(body["trace"]["scores"])
    event = {
        "event_id": "evt-preview-1",
        "decision_id": body["decision_id"],
        "offer_id": body["offers"][0]["offer_id"],
        "type": "click",
        "ts": (NOW + timedelta(minutes=1)).isoformat(),
    }
    response = client.post("/v1/events", json={"events": [event]})
    # the decision is in no log: an event about it is refused like any unknown decision
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "events[0].decision_id"
    assert client.app.state.components.event_log.counts()["decision_rows"] == 0


def test_a_batch_preview_logs_nothing(client):
    response = client.post(
        "/v1/decisions/batch?preview=true",
        json={"touchpoint": "web_home", "customer_ids": ["c1", "c2", "c3"]},
    )
    assert response.status_code == 200, response.text
    decisions = response.json()["decisions"]
    assert [d["preview"] for d in decisions] == [True] * 3 and all(d["offers"] for d in decisions)
    assert client.app.state.components.event_log.counts()["decision_rows"] == 0
    logged = client.post(
        "/v1/decisions/batch", json={"touchpoint": "web_home", "customer_ids": ["c1"]}
    )
    assert logged.json()["decisions"][0]["preview"] is False
    assert client.app.state.components.event_log.counts()["decision_rows"] > 0
