"""Browser-safe publishable keys: rate limits per visitor, events of the own customer only,
decisions without internal numbers, and a demo that never runs in production."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pytest

from recsys.errors import ConfigError
from recsys.settings import LimitSettings, SecuritySettings, Settings
from serving.credentials import ANONYMOUS, KeyScope, build_authenticator
from serving.schemas import BrowserDecisionOut

ALICE = "cust-alice-5d1e0b93"
BOB = "cust-bob-91c2e4aa"


def decide(stack, customer_id, headers):
    return stack.client.post(
        "/v1/decisions",
        json={"customer_id": customer_id, "touchpoint": "web_home"},
        headers=headers,
    )


def event(decision, type_="click", n=0, **extra):
    return {
        "event_id": f"{decision['decision_id']}-{type_}-{n}",
        "decision_id": decision["decision_id"],
        "offer_id": decision["offers"][0]["offer_id"],
        "type": type_,
        "ts": datetime.now(UTC).isoformat(),
        **extra,
    }


def post_events(stack, events, headers):
    return stack.client.post("/v1/events", json={"events": events}, headers=headers)


def test_many_visitors_under_one_publishable_key_are_not_429d_until_the_site_ceiling(
    stack_factory, keys
):
    # Rates so slow that nothing refills during the test: only the bursts count.
    limits = LimitSettings(
        rate_publishable_per_second=0.001,
        rate_publishable_burst=2,
        rate_publishable_site_per_second=0.001,
        rate_publishable_site_burst=60,
    )
    stack = stack_factory(limits=limits)
    visitors = [f"visitor-{i:03d}" for i in range(70)]
    headers = {v: keys.headers("publishable", v) for v in visitors}
    first = [decide(stack, v, headers[v]).status_code for v in visitors[:55]]
    assert first == [200] * 55  # one key, 55 browsers at once: nobody waits
    # One busy visitor hits its own limit; the others are not slowed down by it.
    assert decide(stack, visitors[0], headers[visitors[0]]).status_code == 200
    own = decide(stack, visitors[0], headers[visitors[0]])
    assert own.status_code == 429 and int(own.headers["retry-after"]) >= 1
    assert own.json()["errors"][0]["field"] == "X-Customer-Token"
    assert "per customer token" in own.json()["detail"]
    # The site-wide ceiling (60 here) still holds for the key as a whole.
    rest = [decide(stack, v, headers[v]) for v in visitors[55:]]
    assert [r.status_code for r in rest[:4]] == [200] * 4
    assert {r.status_code for r in rest[4:]} == {429}
    assert "site-wide for key 'web-shop'" in rest[4].json()["detail"]
    # A secret key has its own budget.
    assert decide(stack, BOB, keys.headers("secret")).status_code == 200


def test_a_browser_reports_impressions_clicks_and_dismissals_of_its_own_decisions(stack, keys):
    browser = keys.headers("publishable", ALICE)
    mine = decide(stack, ALICE, browser).json()
    answer = post_events(
        stack, [event(mine, "impression"), event(mine, "click"), event(mine, "dismiss")], browser
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] == 3
    assert stack.log.counts()["events"] == 3
    stored = {(r["decision_id"], r["outcome"]) for r in stack.log.outcome_rows()}
    assert {(mine["decision_id"], "click"), (mine["decision_id"], "dismiss")} <= stored


def test_a_browser_cannot_report_on_another_customers_decision(stack, keys):
    bobs = decide(stack, BOB, keys.headers("secret")).json()
    mine = decide(stack, ALICE, keys.headers("publishable", ALICE)).json()
    answer = post_events(
        stack, [event(mine, "impression"), event(bobs, "click")], keys.headers("publishable", ALICE)
    )
    assert answer.status_code == 403
    item = answer.json()["errors"][0]
    assert item["field"] == "events[1].decision_id" and item["received"] == bobs["decision_id"]
    assert "another customer" in item["message"] and BOB not in answer.text
    assert stack.log.counts()["events"] == 0  # the whole batch is refused


@pytest.mark.parametrize(
    "type_, extra, field",
    [
        ("accept", {}, "events[0].type"),
        ("convert", {"revenue": 49.0}, "events[0].type"),
        ("complaint", {}, "events[0].type"),
        ("click", {"revenue": 49.0}, "events[0].revenue"),
    ],
)
def test_accepts_conversions_and_revenue_need_a_secret_key(stack, keys, type_, extra, field):
    browser = keys.headers("publishable", ALICE)
    mine = decide(stack, ALICE, browser).json()
    refused = post_events(stack, [event(mine, type_, **extra)], browser)
    assert refused.status_code == 403
    item = refused.json()["errors"][0]
    assert item["field"] == field and "secret key" in item["message"]
    assert stack.log.counts()["events"] == 0
    # The site's server, with its secret key, reports the same event.
    served = post_events(stack, [event(mine, type_, **extra)], keys.headers("secret"))
    assert served.status_code == 200 and served.json()["new"] == 1


def test_a_browser_event_needs_the_customer_token(stack, keys):
    mine = decide(stack, ALICE, keys.headers("publishable", ALICE)).json()
    answer = post_events(stack, [event(mine)], {"X-API-Key": keys.publishable})
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["field"] == "X-Customer-Token"


def test_a_browser_gets_only_what_a_page_needs(stack_factory, keys):
    stack = stack_factory()
    browser = decide(stack, ALICE, keys.headers("publishable", ALICE)).json()
    assert set(browser) == {"decision_id", "customer_id", "touchpoint", "ts", "offers"}
    assert browser["offers"] and all(
        set(o) == {"offer_id", "name", "rank"} for o in browser["offers"]
    )
    BrowserDecisionOut.model_validate(browser)
    server = decide(stack, ALICE, keys.headers("secret")).json()
    assert {"score", "priority", "reasons"} <= set(server["offers"][0])
    # Configured otherwise, the browser gets everything.
    full = stack_factory(
        security=SecuritySettings(
            api_keys=keys.records(), token_secret=keys.token_secret, browser_full_response=True
        )
    )
    offers = decide(full, ALICE, keys.headers("publishable", ALICE)).json()["offers"]
    assert {"score", "priority", "reasons"} <= set(offers[0])


def test_the_demo_never_runs_in_production():
    security = SecuritySettings(demo_enabled=True, token_secret=secrets.token_urlsafe(48))
    with pytest.raises(ConfigError, match="demo_enabled` must be false in production"):
        build_authenticator(Settings(environment="production", security=security))
    with pytest.raises(ConfigError, match=r"needs `security\.token_secret`"):
        build_authenticator(Settings(security=SecuritySettings(demo_enabled=True)))


def test_the_demo_key_is_checked_and_calls_without_a_key_stay_open_in_development():
    security = SecuritySettings(demo_enabled=True, token_secret=secrets.token_urlsafe(48))
    authenticator = build_authenticator(Settings(environment="development", security=security))
    demo = authenticator.demo
    assert demo is not None
    # every worker process derives the same key
    again = build_authenticator(Settings(environment="development", security=security)).demo
    assert again is not None and again.publishable_key == demo.publishable_key
    principal = authenticator.principal(
        {"x-api-key": demo.publishable_key}, KeyScope.publishable, "POST /v1/decisions"
    )
    assert principal.scope == KeyScope.publishable and principal.key_id == "demo-web"
    assert authenticator.customer_id(demo.token(ALICE)) == ALICE
    assert authenticator.principal({}, KeyScope.secret, "GET /v1/offers") == ANONYMOUS
    off = build_authenticator(Settings(environment="development"))
    assert off.demo is None
