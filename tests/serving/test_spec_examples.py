"""The request examples of the OpenAPI spec work against a service on the demo data (the
ids are the demo's, so "Try it out" on ``make run``'s service gets offers, not errors)."""

from __future__ import annotations

from datetime import UTC, datetime


def request_examples(spec):
    """(method, path, example body) of every operation whose body has an example."""
    for path, item in spec["paths"].items():
        for method, op in item.items():
            media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in media:
                yield method, path, media["example"]


def test_the_specs_examples_run_on_demo_data(real_client, demo_env):
    spec = real_client.get("/openapi.json").json()
    examples = {(m, p): body for m, p, body in request_examples(spec)}
    assert {
        ("post", "/v1/decisions"),
        ("post", "/v1/decisions/batch"),
        ("post", "/v1/events"),
    } <= set(examples)
    catalogue = real_client.get("/v1/offers").json()["offers"]
    offer_ids = {o["offer_id"] for o in catalogue}

    single = examples["post", "/v1/decisions"]
    assert single["customer_id"] in demo_env["customers"]
    assert set(single["exclude_offers"]) <= offer_ids
    decided = real_client.post("/v1/decisions", json=single)
    assert decided.status_code == 200, decided.text
    decision = decided.json()
    assert decision["cold_start"] is False and decision["offers"]
    assert not {o["offer_id"] for o in decision["offers"]} & set(single["exclude_offers"])

    batch = examples["post", "/v1/decisions/batch"]
    assert set(batch["customer_ids"]) <= set(demo_env["customers"])
    answered = real_client.post("/v1/decisions/batch", json=batch)
    assert answered.status_code == 200, answered.text
    assert all(d["cold_start"] is False for d in answered.json()["decisions"])

    # An event names a decision the caller got: the example's offer, with this decision's id
    # (the example's own id is no decision of a new service), stamped now.
    (event,) = examples["post", "/v1/events"]["events"]
    assert event["offer_id"] in offer_ids
    served = decision["offers"][0]["offer_id"]
    sent = {
        **event,
        "decision_id": decision["decision_id"],
        "offer_id": served,
        "ts": datetime.now(UTC).isoformat(),
    }
    stored = real_client.post("/v1/events", json={"events": [sent]})
    assert stored.status_code == 200 and stored.json()["new"] == 1, stored.text


def test_the_response_examples_name_demo_offers(real_client):
    spec = real_client.get("/openapi.json").json()
    offer_ids = {o["offer_id"] for o in real_client.get("/v1/offers").json()["offers"]}
    decision = spec["components"]["schemas"]["DecisionOut"]["examples"][0]
    assert {o["offer_id"] for o in decision["offers"]} <= offer_ids
    names = {o["offer_id"]: o["name"] for o in real_client.get("/v1/offers").json()["offers"]}
    assert all(names[o["offer_id"]] == o["name"] for o in decision["offers"])
