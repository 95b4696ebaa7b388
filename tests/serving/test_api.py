"""The HTTP service: decisions, batch, events, catalogue, health, docs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.serving.factories import NOW


def decide(client, customer="c1", touchpoint="web_home", **extra):
    response = client.post(
        "/v1/decisions", json={"customer_id": customer, "touchpoint": touchpoint, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def ts(minutes=1):
    return (NOW + timedelta(minutes=minutes)).isoformat()


def test_decision_has_the_documented_shape(client):
    body = decide(client, limit=2, context={"device": "mobile"})
    assert set(body) >= {
        "decision_id",
        "touchpoint",
        "offers",
        "model",
        "experiment",
        "fallback",
        "cold_start",
        "policy",
    }
    assert body["model"] == {"name": "offer-ranker", "version": "local"}
    assert body["experiment"] is None and body["trace"] is None
    assert [o["rank"] for o in body["offers"]] == [1, 2]
    offer = body["offers"][0]
    assert set(offer) == {
        "offer_id",
        "name",
        "rank",
        "score",
        "priority",
        "propensity",
        "explored",
        "reasons",
    }
    assert 0 < offer["score"] < 1 and offer["reasons"]


def test_trace_query_explains_removed_offers(client):
    body = decide(client, customer="c2", limit=3)
    assert body["trace"] is None
    response = client.post(
        "/v1/decisions?trace=true", json={"customer_id": "c2", "touchpoint": "web_home"}
    )
    trace = response.json()["trace"]
    removed = {(r["check"], tuple(r["offer_ids"])) for r in trace["removed"]}
    assert ("rule", ("o_gold",)) in removed
    assert ("date_window", ("o_expired", "o_future")) in removed
    assert len(trace["scores"]) == trace["eligible"]


def test_unknown_customer_gets_cold_start_offers_not_an_error(client):
    body = decide(client, customer="brand-new-visitor")
    assert body["cold_start"] is True and body["offers"]


def test_nothing_eligible_returns_fallback_true(client):
    everything = ["o_tv", "o_dress", "o_sofa", "o_capped", "o_gold", "o_big_spender"]
    body = decide(client, exclude_offers=everything)
    assert body["fallback"] is True
    assert [o["offer_id"] for o in body["offers"]] == ["o_newsletter"]


def test_batch_and_single_http_give_the_same_offers(client_factory):
    single = client_factory("a.sqlite", epsilon=0.3)
    batch = client_factory("b.sqlite", epsilon=0.3)
    customers = ["c1", "c2", "c3", "stranger"]
    one_by_one = [decide(single, customer=c, touchpoint="web_home", limit=2) for c in customers]
    response = batch.post(
        "/v1/decisions/batch",
        json={"touchpoint": "web_home", "customer_ids": customers, "limit": 2},
    )
    assert response.status_code == 200, response.text
    together = response.json()["decisions"]
    assert [d["customer_id"] for d in together] == customers
    assert [[o["offer_id"] for o in d["offers"]] for d in one_by_one] == [
        [o["offer_id"] for o in d["offers"]] for d in together
    ]
    assert [[o["propensity"] for o in d["offers"]] for d in one_by_one] == [
        [o["propensity"] for o in d["offers"]] for d in together
    ]


def test_email_batch_respects_consent(client):
    response = client.post(
        "/v1/decisions/batch", json={"touchpoint": "email_weekly", "customer_ids": ["c1", "c2"]}
    )
    by_customer = {d["customer_id"]: d for d in response.json()["decisions"]}
    assert by_customer["c1"]["offers"]
    assert by_customer["c2"]["offers"] == []  # opted out of email


def test_events_are_idempotent_and_report_new_and_duplicates(client):
    d = decide(client)
    offer = d["offers"][0]["offer_id"]
    events = [
        {
            "event_id": "e1",
            "decision_id": d["decision_id"],
            "offer_id": offer,
            "type": "impression",
            "ts": ts(),
        },
        {
            "event_id": "e2",
            "decision_id": d["decision_id"],
            "offer_id": offer,
            "type": "click",
            "ts": ts(2),
        },
    ]
    first = client.post("/v1/events", json={"events": events})
    assert first.status_code == 200, first.text
    assert first.json() | {"errors": []} == {
        "received": 2,
        "new": 2,
        "duplicates": 0,
        "rejected": 0,
        "errors": [],
    }
    second = client.post("/v1/events", json={"events": events})
    assert (second.json()["new"], second.json()["duplicates"]) == (0, 2)


def test_events_are_durable_across_app_restarts(client_factory):
    first_app = client_factory("shared.sqlite")
    d = decide(first_app)
    event = {
        "event_id": "keep-me",
        "decision_id": d["decision_id"],
        "offer_id": d["offers"][0]["offer_id"],
        "type": "accept",
        "ts": ts(),
    }
    assert first_app.post("/v1/events", json={"events": [event]}).json()["new"] == 1
    # a new app instance (as after a restart) on the same SQLite file
    restarted = client_factory("shared.sqlite")
    again = restarted.post("/v1/events", json={"events": [event]}).json()
    assert (again["new"], again["duplicates"]) == (0, 1)
    assert "keep-me" in restarted.app.state.components.event_log.event_ids()


def test_unknown_decision_is_a_per_event_422_and_the_others_are_stored(client):
    d = decide(client)
    good = {
        "event_id": "ok",
        "decision_id": d["decision_id"],
        "offer_id": d["offers"][0]["offer_id"],
        "type": "click",
        "ts": ts(),
    }
    bad = {
        "event_id": "bad",
        "decision_id": "nope",
        "offer_id": "o_tv",
        "type": "click",
        "ts": ts(),
    }
    response = client.post("/v1/events", json={"events": [good, bad]})
    assert response.status_code == 200
    body = response.json()
    assert (body["new"], body["rejected"]) == (1, 1)
    (error,) = body["errors"]
    assert error == {
        "index": 1,
        "event_id": "bad",
        "status": 422,
        "field": "events[1].decision_id",
        "expected": "the decision_id of a decision served by this service",
        "received": "nope",
        "message": "unknown decision_id 'nope'",
    }
    only_bad = client.post("/v1/events", json={"events": [bad]})
    assert only_bad.status_code == 422
    assert only_bad.json()["errors"] == [
        {
            "field": "events[0].decision_id",
            "expected": error["expected"],
            "received": "nope",
            "message": "unknown decision_id 'nope'",
        }
    ]


def test_offers_catalogue_filtered_by_touchpoint(client):
    everything = client.get("/v1/offers").json()
    app_only = client.get("/v1/offers", params={"touchpoint": "app_home"}).json()
    assert everything["count"] == 9
    assert "o_sofa" not in {o["offer_id"] for o in app_only["offers"]}
    assert app_only["count"] == 8
    gold = next(o for o in everything["offers"] if o["offer_id"] == "o_gold")
    assert gold["eligibility"] == [
        {"feature": "loyalty_tier", "op": "in", "value": ["gold", "platinum"]}
    ]
    missing = client.get("/v1/offers", params={"touchpoint": "moon"})
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "touchpoint"


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["catalogue"] == {"offers": 9, "touchpoints": 3}


def test_openapi_documents_examples(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/decisions", "/v1/decisions/batch", "/v1/events", "/v1/offers"} <= set(
        schema["paths"]
    )
    components = schema["components"]["schemas"]
    assert components["DecisionRequestBody"]["examples"][0]["touchpoint"] == "web_home"
    assert components["EventIn"]["examples"]
    assert client.get("/docs").status_code == 200


def test_decisions_are_logged_before_the_response(client):
    d = decide(client, limit=2)
    rows = client.app.state.components.event_log.decision_rows()
    assert {r["decision_id"] for r in rows} == {d["decision_id"]}
    assert datetime.fromisoformat(d["ts"].replace("Z", "+00:00")).tzinfo is not None
    assert NOW.astimezone(UTC) == datetime.fromisoformat(d["ts"].replace("Z", "+00:00"))


def test_responses_match_their_documented_schemas(client):
    from serving.schemas import BatchDecisionOut, DecisionOut, OfferOut, TraceOut

    body = client.post(
        "/v1/decisions?trace=true", json={"customer_id": "c1", "touchpoint": "web_home", "limit": 3}
    ).json()
    DecisionOut.model_validate(body)
    assert set(body) == set(DecisionOut.model_fields)
    assert set(body["offers"][0]) == set(OfferOut.model_fields)
    assert set(body["trace"]) == set(TraceOut.model_fields)
    batch = client.post(
        "/v1/decisions/batch", json={"touchpoint": "web_home", "customer_ids": ["c2"]}
    ).json()
    BatchDecisionOut.model_validate(batch)


def test_touchpoints_are_listed_with_their_slots_and_fallbacks(client):
    body = client.get("/v1/touchpoints").json()
    assert body["count"] == 3
    email = next(t for t in body["touchpoints"] if t["touchpoint_id"] == "email_weekly")
    assert (email["channel"], email["slots"], email["mode"], email["consent_column"]) == (
        "email",
        2,
        "batch",
        "email_opt_in",
    )
    assert email["fallback_offers"] == ["o_newsletter"]
    assert email["offers"] == 8


def test_the_decision_route_takes_post_at_its_exact_path(client):
    assert client.get("/v1/decisions").status_code == 405
    slash = client.post(
        "/v1/decisions/",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        follow_redirects=False,
    )
    assert slash.status_code == 307 and slash.headers["location"].endswith("/v1/decisions")
    assert decide(client)["offers"]


def test_an_error_the_app_does_not_map_is_a_500_without_details(client, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.components.batcher, "decide", broken)
    response = client.post("/v1/decisions", json={"customer_id": "c1", "touchpoint": "web_home"})
    assert response.status_code == 500 and "secret internals" not in response.text
