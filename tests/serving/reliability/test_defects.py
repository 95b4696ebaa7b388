"""Inputs and paths that gave 500s, leaked a key or lost a row (issue 30): each is now a 4xx
naming the field, masked, or stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from recsys.eventlog import SQLiteEventLog
from recsys.eventlog_postgres import PostgresEventLog
from tests.serving.reliability.conftest import LOG_DIR

PG = "postgresql://127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[3]


def decide(stack, body=None, headers=None):
    body = body or {"customer_id": "c1", "touchpoint": "web_home"}
    return stack.client.post(
        "/v1/decisions", json=body, headers=headers or stack.keys.headers("secret")
    )


def test_a_lone_surrogate_in_customer_id_is_a_422_on_the_publishable_path(stack):
    headers = {
        **stack.keys.headers("publishable", customer_id="c1"),
        "content-type": "application/json",
        "origin": "https://shop.example.com",
    }
    raw = b'{"customer_id": "\\ud800", "touchpoint": "web_home"}'
    answer = stack.client.post("/v1/decisions", content=raw, headers=headers)
    assert answer.status_code == 422
    item = answer.json()["errors"][0]
    assert item["field"] == "customer_id"
    assert item["expected"] == "valid Unicode text"
    assert answer.headers["x-request-id"]


@pytest.fixture(params=["sqlite", "postgresql"])
def event_log(request, tmp_path):
    if request.param == "sqlite":
        log = SQLiteEventLog(tmp_path / "events.sqlite")
        yield log
        log.close()
        return
    schema = f"recsys_defects_{uuid.uuid4().hex[:10]}"
    log = PostgresEventLog.from_url(f"{PG}?schema={schema}")
    yield log
    log.close()
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_an_event_time_before_year_1_in_utc_is_a_422(stack_factory, event_log):
    stack = stack_factory(log=event_log)
    served = decide(stack).json()
    event = {
        "event_id": "e-year-0",
        "decision_id": served["decision_id"],
        "offer_id": served["offers"][0]["offer_id"],
        "type": "click",
        "ts": "0001-01-01T00:30:00+01:00",  # 23:30 on 31 Dec of year 0 in UTC
    }
    answer = stack.client.post(
        "/v1/events", json={"events": [event]}, headers=stack.keys.headers("secret")
    )
    assert answer.status_code == 422
    item = answer.json()["errors"][0]
    assert item["field"] == "events[0].ts"
    assert item["expected"] == "a time between 0001-01-01 and 9999-12-31 in UTC"
    assert item["received"] == "0001-01-01T00:30:00+01:00"
    assert event_log.counts()["events"] == 0


def test_a_key_sent_as_x_request_id_is_neither_echoed_nor_logged(stack):
    secret = stack.keys.secret
    refused = stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers={"X-API-Key": "rk_sec_not-a-real-key-at-all", "X-Request-ID": secret},
    )
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] != secret
    served = decide(stack, headers={**stack.keys.headers("secret"), "X-Request-ID": secret})
    assert served.status_code == 200 and served.headers["x-request-id"] != secret
    stack.app.state.access_log.flush()
    logged = (LOG_DIR / "in-process.jsonl").read_text()
    assert secret not in logged
    assert refused.headers["x-request-id"] in logged  # the line is there, with its own id


def test_a_plain_request_id_is_kept(stack):
    answer = decide(stack, headers={**stack.keys.headers("secret"), "X-Request-ID": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"


class BrokenLog(SQLiteEventLog):
    """A bug in the service (not a backend fault): the kind of error that ends in a 500."""

    def record_events(self, events):
        raise RuntimeError("a bug")


def test_a_500_carries_the_request_id_and_the_error_shape(stack_factory, tmp_path):
    stack = stack_factory(log=BrokenLog(tmp_path / "broken.sqlite"))
    served = decide(stack).json()
    event = {
        "event_id": "e1",
        "decision_id": served["decision_id"],
        "offer_id": served["offers"][0]["offer_id"],
        "type": "click",
        "ts": served["ts"],
    }
    answer = stack.client.post(
        "/v1/events",
        json={"events": [event]},
        headers={**stack.keys.headers("secret"), "X-Request-ID": "bug-42"},
    )
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "bug-42"
    body = answer.json()
    assert "x-request-id" in body["detail"] and "a bug" not in json.dumps(body)


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/decisions/batch", b'{"customer_ids": ["c1",], "touchpoint": "email_weekly"}',
         "customer_ids"),
        ("/v1/events", b'{"events": [{"event_id": "e1", "ts": 2026-01-01}]}', "ts"),
        ("/v1/decisions", b'{"customer_id": "c1", "touchpoint": web_home}', "touchpoint"),
    ],
)  # fmt: skip
def test_malformed_json_names_where_it_breaks(stack, path, raw, field):
    headers = {**stack.keys.headers("secret"), "content-type": "application/json"}
    answer = stack.client.post(path, content=raw, headers=headers)
    assert answer.status_code == 400
    item = answer.json()["errors"][0]
    assert item["field"] == field
    assert "line 1, column" in item["message"] and f"`{field}`" in item["message"]


def test_a_decision_with_no_offers_leaves_a_row(stack):
    # an unknown customer at a consent-gated touchpoint: consent unknown, no offer
    answer = decide(stack, {"customer_id": "nobody-known", "touchpoint": "email_weekly"})
    assert answer.status_code == 200 and answer.json()["offers"] == []
    counts = stack.log.counts()
    assert counts["decisions_without_offers"] == 1 and counts["decision_rows"] == 0


def test_a_failed_start_is_one_line_without_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"PYTHONPATH": str(ROOT), "RECSYS_WAREHOUSE_PATH": str(tmp_path / "none.duckdb"),
                "RECSYS_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'e.sqlite'}"})  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "recsys", "serve", "--port", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "the decision service cannot start: warehouse file must exist" in output
    assert "Traceback" not in output
