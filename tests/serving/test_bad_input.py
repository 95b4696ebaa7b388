"""Every bad input gets a 4xx naming the field, the expected and the received value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

GOOD = {"customer_id": "c1", "touchpoint": "web_home"}
LONG = "x" * 129


def with_(**changes):
    body = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()

DECISION_CASES = [
    # (body, status, field, expected (substring), received)
    (with_(customer_id=123), 422, "customer_id", "a string", 123),
    (with_(customer_id=_DROP), 422, "customer_id", "required", None),
    (with_(customer_id=""), 422, "customer_id", "at least 1 characters", ""),
    (with_(customer_id=LONG), 422, "customer_id", "at most 128 characters", LONG),
    (with_(customer_id=None), 422, "customer_id", "a string", None),
    (
        with_(touchpoint="moon"),
        404,
        "touchpoint",
        "one of app_home, email_weekly, web_home",
        "moon",
    ),
    (with_(touchpoint=["web_home"]), 422, "touchpoint", "a string", "['web_home']"),
    (with_(limit=0), 422, "limit", ">= 1", 0),
    (with_(limit=-3), 422, "limit", ">= 1", -3),
    (with_(limit=10**12), 422, "limit", "<= 50", 10**12),
    (with_(limit="3"), 422, "limit", "an integer", "3"),
    (with_(limit=2.5), 422, "limit", "an integer", 2.5),
    (with_(limit=True), 422, "limit", "an integer", True),
    (with_(context=["device", "mobile"]), 422, "context", "a JSON object", "['device', 'mobile']"),
    (with_(context={"page": {"nested": 1}}), 422, "context.page", "", "{'nested': 1}"),
    (with_(context={f"k{i}": i for i in range(51)}), 422, "context", "at most 50 items", None),
    (with_(context={"page": "p" * 257}), 422, "context.page", "at most 256 characters", None),
    (with_(context={"n": 10**400}), 422, "context.n", "<= 9007199254740992", None),
    (with_(exclude_offers="o_tv"), 422, "exclude_offers", "a JSON array", "o_tv"),
    (with_(exclude_offers=[1]), 422, "exclude_offers[0]", "a string", 1),
    (with_(exclude_offers=["o"] * 201), 422, "exclude_offers", "at most 200 items", None),
    (with_(customerId="c1"), 422, "customerId", "only the fields", "c1"),
]


def check_error(response, status, field, expected, received):
    assert response.status_code == status, response.text
    body = response.json()
    item = next((e for e in body["errors"] if e["field"] == field), None)
    assert item is not None, body
    assert expected in item["expected"]
    if received is not None:
        assert item["received"] == received
    assert field in item["message"] or status == 404


@pytest.mark.parametrize(("body", "status", "field", "expected", "received"), DECISION_CASES)
def test_bad_decision_requests(client, body, status, field, expected, received):
    check_error(client.post("/v1/decisions", json=body), status, field, expected, received)
    assert client.app.state.components.event_log.counts()["decision_rows"] == 0


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b'{"customer_id": "c1", "touchpoint": ', 400, "touchpoint"),  # breaks in or after it
        (b"not json at all", 400, "body"),
        (b"", 422, "body"),
        (b'[{"customer_id": "c1"}]', 422, "body"),
        (
            b'{"customer_id": "c1", "touchpoint": "web_home", "context": {"x": NaN}}',
            422,
            "context.x",
        ),
        (b'{"customer_id": "c1\\u0000", "touchpoint": "web_home"}', 422, "customer_id"),
        (b'{"customer_id": "c1", "touchpoint": "web\\nhome"}', 422, "touchpoint"),
    ],
)
def test_malformed_bodies(client, raw, status, field):
    response = client.post(
        "/v1/decisions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["errors"][0]["field"] == field


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_decision_body_that_is_not_declared_json_is_refused(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/decisions", content=orjson.dumps(GOOD), headers=headers)
    check_error(response, 422, "body", "a JSON object", None)


@pytest.mark.parametrize(
    ("content_type", "trace"),
    [("application/json; charset=utf-8", "true"), ("application/vnd.api+json", "1")],
)
def test_json_content_types_and_flag_spellings_are_accepted(client, content_type, trace):
    response = client.post(
        f"/v1/decisions?trace={trace}",
        content=orjson.dumps(GOOD),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json()["trace"] is not None


def test_bad_query_parameter(client):
    response = client.post("/v1/decisions?trace=maybe", json=GOOD)
    check_error(response, 422, "trace", "", "maybe")


@pytest.mark.parametrize(
    ("body", "status", "field", "expected"),
    [
        (
            {"touchpoint": "email_weekly", "customer_ids": []},
            422,
            "customer_ids",
            "at least 1 items",
        ),
        (
            {"touchpoint": "email_weekly", "customer_ids": [f"c{i}" for i in range(6)]},
            422,
            "customer_ids",
            "at most 5 items",
        ),
        (
            {"touchpoint": "email_weekly", "customer_ids": ["c1", "c2", "c1"]},
            422,
            "customer_ids[2]",
            "each customer id once",
        ),
        ({"touchpoint": "sms", "customer_ids": ["c1"]}, 404, "touchpoint", "one of"),
        ({"touchpoint": "email_weekly", "customer_ids": "c1"}, 422, "customer_ids", "a JSON array"),
        (
            {"touchpoint": "email_weekly", "customer_ids": ["c1"], "limit": 51},
            422,
            "limit",
            "<= 50",
        ),
    ],
)
def test_bad_batch_requests(client_factory, body, status, field, expected):
    client = client_factory(max_batch_customers=5)
    response = client.post("/v1/decisions/batch", json=body)
    check_error(response, status, field, expected, None)
    assert client.app.state.components.event_log.counts()["decision_rows"] == 0


def _event(**changes):
    event = {
        "event_id": "e1",
        "decision_id": "d1",
        "offer_id": "o_tv",
        "type": "click",
        "ts": "2026-06-01T12:01:00+00:00",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _DROP}


FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("events", "field", "expected", "received"),
    [
        ([], "events", "at least 1 items", None),
        ([_event(event_id=f"e{i}") for i in range(6)], "events", "at most 5 items", None),
        ([_event(), _event()], "events[1].event_id", "unique within one batch", "e1"),
        (
            [_event(ts="2026-06-01T12:01:00")],
            "events[0].ts",
            "with a timezone",
            "2026-06-01T12:01:00",
        ),
        ([_event(ts=FUTURE)], "events[0].ts", "not in the future", FUTURE),
        ([_event(ts="yesterday")], "events[0].ts", "ISO 8601", "yesterday"),
        ([_event(type="purchase")], "events[0].type", "impression", "purchase"),
        ([_event(revenue=-1.0)], "events[0].revenue", ">= 0", -1.0),
        ([_event(revenue="ten")], "events[0].revenue", "a number", "ten"),
        ([_event(event_id=7)], "events[0].event_id", "a string", 7),
        ([_event(decision_id=_DROP)], "events[0].decision_id", "required", None),
    ],
)
def test_bad_event_batches_store_nothing(client_factory, events, field, expected, received):
    client = client_factory(max_events=5)
    response = client.post("/v1/events", json={"events": events})
    check_error(response, 422, field, expected, received)
    assert client.app.state.components.event_log.counts()["events"] == 0


def test_events_body_must_be_an_object_with_events(client):
    response = client.post("/v1/events", json=[_event()])
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body"


def test_bad_catalogue_query(client):
    check_error(
        client.get("/v1/offers", params={"touchpoint": "x" * 200}),
        422,
        "touchpoint",
        "at most 128 characters",
        None,
    )


def test_a_body_that_is_not_json_is_echoed_as_text_not_python_bytes(client):
    response = client.post(
        "/v1/decisions", content=b"customer_id=C1", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["received"] == "customer_id=C1"
    assert "b'" not in response.text
