"""A hung or absent Redis online store: one bounded wait, then cold starts from memory.

Against a real redis-server of the test's own (stopped, started, paused with CLIENT PAUSE).
"""

from __future__ import annotations

import time

import pytest

from tests.serving.factories import RedisBackedFeatures
from tests.serving.reliability.servers import RedisServer

DECIDE = {"customer_id": "c1", "touchpoint": "web_home"}


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.close()


def decide(stack):
    return stack.client.post("/v1/decisions", json=DECIDE, headers=stack.keys.headers("secret"))


def wait_ready(stack, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = stack.client.get("/readyz").json()
        if body["status"] == "ready" or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_starts_without_redis_and_switches_to_it_when_it_answers(stack_factory, redis_server):
    store = RedisBackedFeatures(redis_server.url)  # nothing listens there yet
    stack = stack_factory(features=store)
    served = decide(stack)
    assert served.status_code == 200
    assert served.json()["fallback"] is True and served.json()["cold_start"] is True
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert "online store down" in ready.json()["degraded"][0]
    redis_server.start()
    assert wait_ready(stack)["status"] == "ready"
    again = decide(stack).json()
    assert again["fallback"] is False and again["cold_start"] is False


def test_a_hung_redis_costs_one_timeout_then_no_request_waits_on_it(stack_factory, redis_server):
    redis_server.start()
    store = RedisBackedFeatures(redis_server.url, timeout_s=0.25)
    stack = stack_factory(features=store)
    assert decide(stack).json()["fallback"] is False
    redis_server.pause(4)
    first = decide(stack)  # waits the one timeout, then cold starts
    assert first.status_code == 200 and first.json()["fallback"] is True
    reads = store.reads
    during = [decide(stack) for _ in range(20)]
    assert all(r.status_code == 200 and r.json()["fallback"] for r in during)
    assert store.reads == reads  # the failed store is not asked again by requests
    assert wait_ready(stack, timeout=10)["status"] == "ready"
    assert decide(stack).json()["fallback"] is False


def test_redis_stopped_under_load_serves_cold_starts_then_recovers(stack_factory, redis_server):
    redis_server.start()
    store = RedisBackedFeatures(redis_server.url)
    stack = stack_factory(features=store)
    assert decide(stack).json()["fallback"] is False
    redis_server.stop()
    answers = [decide(stack) for _ in range(10)]
    assert [r.status_code for r in answers] == [200] * 10
    assert all(r.json()["fallback"] for r in answers)
    redis_server.start()
    assert wait_ready(stack)["status"] == "ready"
    assert decide(stack).json()["fallback"] is False
