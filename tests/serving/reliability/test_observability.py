"""Prometheus metrics, JSON logs with request ids, and no personal data or secrets in logs."""

from __future__ import annotations

import json
import logging
import os
import time

from serving.observability import (
    AccessLog,
    CustomerHasher,
    JsonLogFormatter,
    new_request_id,
    redact,
)

CAROL = "cust-carol-5d2e9a40"


def sample(stack, name, labels=None):
    return stack.metrics.registry.get_sample_value(name, labels or {})


def test_metrics_count_decisions_offers_exploration_and_latency(stack_factory, keys):
    stack = stack_factory(epsilon=0.5)
    for i in range(20):
        response = stack.client.post(
            "/v1/decisions",
            json={"customer_id": f"c{i % 3 + 1}", "touchpoint": "web_home"},
            headers=keys.headers("secret"),
        )
        assert response.status_code == 200
    stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "not-a-touchpoint"},
        headers=keys.headers("secret"),
    )
    assert (
        sample(stack, "recsys_decisions_total", {"touchpoint": "web_home", "fallback": "false"})
        == 20
    )
    served = sample(stack, "recsys_offers_served_total", {"touchpoint": "web_home"})
    explored = sample(stack, "recsys_offers_explored_total", {"touchpoint": "web_home"})
    assert served == 40 and 0 < explored < served
    labels = {"route": "/v1/decisions", "method": "POST", "status": "200", "touchpoint": "web_home"}
    assert sample(stack, "recsys_http_request_duration_seconds_count", labels) == 20
    unknown = {**labels, "status": "404", "touchpoint": "unknown"}  # bounded label values
    assert sample(stack, "recsys_http_request_duration_seconds_count", unknown) == 1
    batch = stack.client.post(
        "/v1/decisions/batch",
        json={"customer_ids": ["c1", "c2"], "touchpoint": "web_home"},
        headers=keys.headers("secret"),
    )
    assert batch.status_code == 200
    batch_labels = {**labels, "route": "/v1/decisions/batch"}
    assert sample(stack, "recsys_http_request_duration_seconds_count", batch_labels) == 1
    text = stack.client.get("/metrics").text
    assert 'recsys_model_info{name="offer-ranker",source="local",version="local"} 1.0' in text
    assert "recsys_decision_duration_seconds_bucket" in text


def test_event_ingestion_is_counted_by_result(stack, keys):
    decision = stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers=keys.headers("secret"),
    ).json()
    event = {
        "event_id": "obs-1",
        "decision_id": decision["decision_id"],
        "offer_id": decision["offers"][0]["offer_id"],
        "type": "click",
        "ts": decision["ts"],
    }
    unknown = {**event, "event_id": "obs-2", "decision_id": "nope"}
    for body in ({"events": [event, unknown]}, {"events": [event]}):
        stack.client.post("/v1/events", json=body, headers=keys.headers("secret"))
    assert sample(stack, "recsys_events_ingested_total", {"type": "click", "result": "new"}) == 1
    assert (
        sample(stack, "recsys_events_ingested_total", {"type": "click", "result": "duplicate"}) == 1
    )
    assert (
        sample(stack, "recsys_events_ingested_total", {"type": "click", "result": "rejected"}) == 1
    )


def test_every_response_carries_a_request_id_and_the_log_line_too(stack, keys, caplog):
    with caplog.at_level(logging.INFO, logger="serving.access"):
        given = stack.client.get(
            "/v1/offers", headers={**keys.headers("secret"), "X-Request-ID": "trace-abc-123"}
        )
        made = stack.client.get(
            "/v1/offers", headers={**keys.headers("secret"), "X-Request-ID": "bad id\n{injected}"}
        )
        stack.app.state.access_log.flush()  # lines are written in batches
    assert given.headers["x-request-id"] == "trace-abc-123"
    assert (
        made.headers["x-request-id"] != "bad id\n{injected}"
        and len(made.headers["x-request-id"]) == 32
    )
    lines = [
        json.loads(JsonLogFormatter().format(r))
        for r in caplog.records
        if r.name == "serving.access"
    ]
    assert lines[0]["request_id"] == "trace-abc-123" and lines[0]["key_id"] == "crm-backend"
    assert lines[0]["route"] == "/v1/offers" and lines[0]["status"] == 200
    assert "duration_ms" in lines[0]


def test_made_request_ids_are_distinct_here_and_in_a_forked_child():
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then exit without running pytest's teardown
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.waitpid(pid, 0)
    os.close(read_end)
    mine = new_request_id()
    # A child that kept the parent's prefix and counter would make the parent's next id.
    assert len(child_id) == 32 and child_id[:16] != mine[:16] and child_id not in ids


def test_browser_calls_log_a_keyed_hash_of_the_customer_never_the_id(stack, keys, caplog):
    token = keys.token(CAROL)
    with caplog.at_level(logging.INFO):
        response = stack.client.post(
            "/v1/decisions",
            json={"customer_id": CAROL, "touchpoint": "web_home"},
            headers={"X-API-Key": keys.publishable, "X-Customer-Token": token},
        )
        stack.app.state.access_log.flush()
    assert response.status_code == 200
    formatted = "\n".join(JsonLogFormatter().format(r) for r in caplog.records)
    hashed = stack.app.state.customer_hasher(CAROL)
    assert f'"customer_hash":"{hashed}"' in formatted
    assert CAROL not in formatted and token not in formatted and keys.publishable not in formatted


def test_secrets_are_masked_whoever_logs_them(keys):
    token = keys.token(CAROL)
    line = f"oops {keys.secret} and {token} in a message"
    assert redact(line) == "oops [redacted] and [redacted] in a message"
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "key=%s", (keys.admin,), None)
    assert keys.admin not in JsonLogFormatter().format(record)


def test_customer_hashes_are_stable_per_key_and_differ_between_keys():
    one, same, other = (
        CustomerHasher(b"k" * 32),
        CustomerHasher(b"k" * 32),
        CustomerHasher(b"j" * 32),
    )
    assert one(CAROL) == same(CAROL) != other(CAROL) and CAROL not in one(CAROL)


def _access_lines(caplog) -> list[dict]:
    return [
        json.loads(JsonLogFormatter().format(r))
        for r in caplog.records
        if r.name == "serving.access"
    ]


def test_access_lines_are_written_in_batches_with_the_time_and_id_of_their_request(caplog):
    access = AccessLog(flush_s=60)  # the thread would not write for a minute
    served_at = time.time() - 3.0
    with caplog.at_level(logging.INFO, logger="serving.access"):
        for i in range(3):
            extra = {"route": "/v1/offers", "status": 200, "request_id": f"req-{i}"}
            access.add(logging.INFO, served_at + i, ("GET", "/v1/offers", 200, 1.5), extra)
        assert _access_lines(caplog) == []  # queued, not yet written
        access.add(logging.WARNING, served_at, ("GET", "/v1/offers", 500, 2.0), {"status": 500})
        assert [line["status"] for line in _access_lines(caplog)] == [500]  # at once
        access.close()  # writes what is queued, in order
    lines = _access_lines(caplog)[1:]
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    written = [r for r in caplog.records if r.name == "serving.access"][1:]
    assert [r.created for r in written] == [served_at, served_at + 1, served_at + 2]
    assert lines[0]["msg"] == "GET /v1/offers 200 1.5ms"


def test_the_access_log_thread_writes_on_its_own_and_restarts_after_close(caplog):
    access = AccessLog(flush_s=0.01)
    with caplog.at_level(logging.INFO, logger="serving.access"):
        access.add(logging.INFO, time.time(), ("GET", "/healthz", 200, 0.1), {"request_id": "a"})
        deadline = time.monotonic() + 5
        while not _access_lines(caplog) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [line["request_id"] for line in _access_lines(caplog)] == ["a"]
        access.close()
        access.add(logging.INFO, time.time(), ("GET", "/healthz", 200, 0.1), {"request_id": "b"})
        access.close()
    assert [line["request_id"] for line in _access_lines(caplog)] == ["a", "b"]


def test_an_access_log_that_falls_behind_keeps_the_newest_lines_and_says_how_many_it_dropped(
    caplog,
):
    access = AccessLog(flush_s=60, max_queued=2)
    with caplog.at_level(logging.INFO):
        for i in range(5):
            access.add(logging.INFO, time.time(), ("GET", "/x", 200, 0.1), {"request_id": str(i)})
        access.close()
    assert [line["request_id"] for line in _access_lines(caplog)] == ["3", "4"]
    assert any("3 lines dropped" in r.getMessage() for r in caplog.records)


def test_access_lines_can_be_written_at_once(caplog):
    access = AccessLog(flush_s=0)
    with caplog.at_level(logging.INFO, logger="serving.access"):
        access.add(logging.INFO, time.time(), ("GET", "/x", 200, 0.1), {"request_id": "now"})
        assert [line["request_id"] for line in _access_lines(caplog)] == ["now"]
