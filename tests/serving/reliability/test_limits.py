"""Body size, batch size, per-key rate and request-time limits."""

from __future__ import annotations

import time

from recsys.settings import LimitSettings, ServingSettings
from serving.limits import TokenBucketLimiter
from serving.security import KeyScope, Principal


def test_a_declared_oversized_body_is_refused_before_it_is_read(stack_factory, keys):
    stack = stack_factory(limits=LimitSettings(max_body_bytes=2_048))
    response = stack.client.post(
        "/v1/events",
        content=b"{" + b" " * 10_000 + b"}",
        headers={**keys.headers("secret"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["errors"][0] == {
        "field": "body",
        "expected": "at most 2048 bytes",
        "received": None,
        "message": "request body must be at most 2048 bytes, got 10002 bytes",
    }


def test_a_streamed_body_without_length_is_cut_off_at_the_limit(stack_factory, keys):
    stack = stack_factory(limits=LimitSettings(max_body_bytes=2_048))
    sent = []

    def chunks():
        for _ in range(100):  # 100 KiB offered, chunked, no Content-Length
            sent.append(1)
            yield b" " * 1_024

    response = stack.client.post(
        "/v1/events",
        content=chunks(),
        headers={**keys.headers("secret"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "more than 2048 bytes" in response.json()["detail"]


def test_an_oversized_batch_is_refused_with_422(stack_factory, keys):
    stack = stack_factory(serving=ServingSettings(max_events=3, max_batch_customers=2))
    events = [
        {
            "event_id": f"e{i}",
            "decision_id": "d",
            "offer_id": "o",
            "type": "click",
            "ts": "2026-06-01T12:00:00Z",
        }
        for i in range(4)
    ]
    response = stack.client.post(
        "/v1/events", json={"events": events}, headers=keys.headers("secret")
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "events"
    batch = stack.client.post(
        "/v1/decisions/batch",
        json={"touchpoint": "web_home", "customer_ids": ["a", "b", "c"]},
        headers=keys.headers("secret"),
    )
    assert batch.status_code == 422 and batch.json()["errors"][0]["field"] == "customer_ids"


def test_a_key_over_its_rate_gets_429_with_retry_after(stack_factory, keys):
    stack = stack_factory(limits=LimitSettings(rate_secret_per_second=0.01, rate_secret_burst=3))
    statuses = [
        stack.client.get("/v1/offers", headers=keys.headers("secret")).status_code for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    limited = stack.client.get("/v1/offers", headers=keys.headers("secret"))
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["errors"][0]["field"] == "X-API-Key"
    # Another key has its own bucket.
    assert stack.client.get("/admin/model", headers=keys.headers("admin")).status_code == 200


def test_token_buckets_refill_at_their_rate():
    now = [0.0]
    limiter = TokenBucketLimiter(
        LimitSettings(rate_publishable_per_second=2.0, rate_publishable_burst=2),
        clock=lambda: now[0],
    )
    web = Principal("web", KeyScope.publishable, "someone")
    assert limiter.acquire(web) is None and limiter.acquire(web) is None
    wait = limiter.acquire(web)
    assert wait is not None and abs(wait.retry_after - 0.5) < 1e-9
    assert wait.limit == "per customer token"
    now[0] += 0.5
    assert limiter.acquire(web) is None
    own = Principal("vip", KeyScope.publishable, "x", rate_per_second=100.0, burst=1)
    assert limiter.acquire(own) is None and limiter.acquire(own) is not None


def test_a_request_slower_than_the_timeout_gets_a_503_json(stack_factory, keys):
    class SlowScorer:
        def __init__(self, inner):
            self.inner = inner
            self.slow = False

        def score(self, matrix):
            if self.slow:
                time.sleep(1.5)
            return self.inner.score(matrix)

    made = []

    def wrapper(inner):
        made.append(SlowScorer(inner))
        return made[-1]

    stack = stack_factory(limits=LimitSettings(request_timeout_seconds=0.3), scorer_wrapper=wrapper)
    made[-1].slow = True
    response = stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers=keys.headers("secret"),
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "did not answer within 0.3 s" in response.json()["detail"]
    made[-1].slow = False
    fine = stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers=keys.headers("secret"),
    )
    assert fine.status_code == 200
