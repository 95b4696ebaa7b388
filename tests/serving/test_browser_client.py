"""The browser client end to end: the example page in headless Chromium against a real
``recsys serve`` with the demo on; what the page reports reaches the event log."""

from __future__ import annotations

import secrets
import sqlite3

import pytest

from tests.browser import headless_chromium
from tests.serving.services import running_service

CUSTOMER = "C0000001"  # the page's default customer
OTHER = "C0000002"


@pytest.fixture
def demo_service(demo_env, tmp_path):
    with running_service(
        demo_env,
        tmp_path,
        RECSYS_ENVIRONMENT="development",
        # what `make run` sets
        RECSYS_SECURITY__DEMO_ENABLED="true",
        RECSYS_SECURITY__TOKEN_SECRET=secrets.token_urlsafe(32),
    ) as service:
        yield service.base, tmp_path / "events.sqlite"


@pytest.fixture
def chromium():
    with headless_chromium(logs=("browser",)) as driver:
        yield driver


def page_settled(driver):
    """The page's body once it has shown offers or an error (False while loading)."""
    body = driver.find_element("tag name", "body")
    return body if body.get_attribute("data-state") in ("ready", "error") else False


def test_the_example_page_shows_offers_and_reports_impressions_and_clicks(demo_service, chromium):
    from selenium.webdriver.support.ui import WebDriverWait

    base, events = demo_service
    driver = chromium
    wait = WebDriverWait(driver, 30)
    driver.get(f"{base}/demo")
    state = wait.until(page_settled)
    status = driver.find_element("id", "status").text
    assert state.get_attribute("data-state") == "ready", (status, driver.get_log("browser"))
    offers = driver.find_elements("css selector", "#offers li[data-offer-id]")
    assert offers and CUSTOMER in status
    shown = [o.get_attribute("data-offer-id") for o in offers]
    # no internal numbers in what the page got
    assert "priority" not in driver.page_source

    offers[0].find_element("css selector", "button.click").click()
    wait.until(
        lambda d: d.find_elements(
            "css selector", "#events li[data-type=click][data-outcome=stored]"
        )
    )
    stored = driver.find_elements("css selector", "#events li[data-outcome=stored]")
    assert len(stored) == len(shown) + 1, [e.text for e in stored]

    driver.find_element("id", "other-customer").clear()
    driver.find_element("id", "other-customer").send_keys(OTHER)
    driver.find_element("id", "try-other").click()
    refused = wait.until(lambda d: d.find_element("css selector", "#refused[data-status]"))
    assert refused.get_attribute("data-status") == "403", refused.text
    assert "customer token" in refused.text

    with sqlite3.connect(events) as con:
        rows = con.execute("SELECT customer_id, offer_id, type FROM events").fetchall()
        decided = con.execute("SELECT DISTINCT customer_id FROM decisions").fetchall()
    assert sorted(r for r in rows if r[2] == "impression") == sorted(
        (CUSTOMER, offer, "impression") for offer in shown
    )
    assert [r for r in rows if r[2] == "click"] == [(CUSTOMER, shown[0], "click")]
    assert decided == [(CUSTOMER,)]  # the other customer got no decision


def test_the_demo_is_off_unless_enabled_and_the_client_is_served(tmp_path):
    from tests.serving.conftest import make_client

    client = make_client(tmp_path / "events.sqlite")
    with client:
        module = client.get("/client/recsys.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert "export class RecsysClient" in module.text
        types = client.get("/client/recsys.d.ts")
        assert types.status_code == 200 and "BrowserDecision" in types.text
        off = client.get("/demo")
        assert off.status_code == 404 and "demo_enabled" in off.text.lower()
        assert client.post("/demo/token", json={"customer_id": CUSTOMER}).status_code == 404
    client.app.state.components.event_log.close()
