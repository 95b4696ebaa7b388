"""The API docs on the hardened service: offline pages, and a spec that says who may call
what and every error a caller can get. Also: a preview needs a secret key."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest

from serving.credentials import KEY_HEADER, TOKEN_HEADER
from tests.browser import headless_chromium
from tests.serving.reliability.test_security import ALICE, decide


class _Assets(HTMLParser):
    """Every URL a page loads: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {("script", "src"), ("link", "href"), ("img", "src")}:
                self.urls.append(value)


def page_assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_the_services_own_files(stack, page):
    response = stack.client.get(page)  # no key: the docs are public
    assert response.status_code == 200
    html = response.text
    assert re.findall(r"https?://", html) == []  # nothing from a CDN (or anywhere else)
    assets = page_assets(html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        got = stack.client.get(urljoin(f"http://testserver{page}", asset))
        assert got.status_code == 200, (asset, got.status_code)
        assert len(got.content) > 1000, asset
    assert stack.client.get("/openapi.json").status_code == 200


def test_the_docs_files_are_public_but_nothing_else_is(stack):
    assert stack.client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert stack.client.get("/docs-assets/../v1/offers").status_code == 401
    assert stack.client.get("/docs-assetsx/v1").status_code == 401


def test_the_spec_has_the_key_and_token_schemes(stack):
    spec = stack.client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"]["in"] == "header" and schemes["ApiKey"]["name"].lower() == KEY_HEADER
    assert schemes["CustomerToken"]["name"].lower() == TOKEN_HEADER
    paths = spec["paths"]
    # a browser's publishable key with its customer token, or a secret key alone
    for path in ("/v1/decisions", "/v1/events"):  # the browser's calls
        assert {"ApiKey": [], "CustomerToken": []} in paths[path]["post"]["security"]
        assert {"ApiKey": []} in paths[path]["post"]["security"]
    assert paths["/v1/decisions/batch"]["post"]["security"] == [{"ApiKey": []}]
    assert paths["/healthz"]["get"]["security"] == []


def test_every_route_documents_its_errors_with_the_error_body(stack, keys):
    spec = stack.client.get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorOut"
    operations = [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if path not in {"/healthz", "/readyz"}
    ]
    assert len(operations) >= 10
    for path, method, op in operations:
        statuses = {401, 403, 429, 503}
        if method == "post":
            statuses |= {408, 413, 422}
        if "requestBody" in op:
            statuses.add(400)
        if "{" in path:
            statuses.add(404)
        responses = op["responses"]
        missing = {s for s in statuses if str(s) not in responses}
        assert not missing, f"{method.upper()} {path} does not document {sorted(missing)}"
        for status in statuses:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
            assert error_ref in refs, (method, path, status, schema)
    decisions = spec["paths"]["/v1/decisions"]["post"]["responses"]
    assert "404" in decisions and "Retry-After" in decisions["429"]["headers"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # not what we send
    # the documented body is what the layers before the routes answer with
    no_key = stack.client.post("/v1/events", json={"events": []})
    assert no_key.status_code == 401 and set(no_key.json()) == {"detail", "errors"}
    too_big = stack.client.post(
        "/v1/events", content=b"x" * (1 << 21), headers=keys.headers("secret")
    )
    assert too_big.status_code == 413 and set(too_big.json()) == {"detail", "errors"}


def test_a_publishable_key_cannot_preview(stack, keys):
    refused = decide(stack, keys.headers("publishable", ALICE), query="?preview=true")
    assert refused.status_code == 403
    error = refused.json()["errors"][0]
    assert error["field"] == "preview" and "secret" in error["message"]
    assert stack.log.counts()["decision_rows"] == 0
    for scope in ("secret", "admin"):
        allowed = decide(stack, keys.headers(scope), query="?preview=true&trace=true")
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["preview"] is True and allowed.json()["trace"] is not None
    assert stack.log.counts()["decision_rows"] == 0
    assert decisions_counted(stack) == 0  # nor in the served-decision metrics
    assert decide(stack, keys.headers("secret")).status_code == 200
    assert decisions_counted(stack) == 1


def decisions_counted(stack) -> float:
    metrics = stack.client.get("/metrics").text.splitlines()
    return sum(
        float(m.rsplit(" ", 1)[1]) for m in metrics if m.startswith("recsys_decisions_total{")
    )


@pytest.fixture
def served(stack):
    """The hardened stack's app on a real port (uvicorn in a thread), for a browser."""
    import threading
    import time

    import uvicorn

    from tests.serving.reliability.servers import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(stack.app, host="127.0.0.1", port=port, lifespan="off", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_docs_render_in_headless_chromium_without_internet(served):
    from selenium.webdriver.support.ui import WebDriverWait

    # no name resolves but the service's address: a CDN would fail to load
    with headless_chromium("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1") as driver:
        wait = WebDriverWait(driver, 20)
        driver.get(f"{served}/docs")
        title = wait.until(lambda d: d.find_elements("css selector", ".swagger-ui .info .title"))
        assert "recsys decision service" in title[0].text
        assert driver.find_elements("css selector", ".swagger-ui button.authorize")
        operations = driver.find_elements("css selector", ".swagger-ui .opblock")
        assert len(operations) >= 10
        driver.get(f"{served}/redoc")
        heading = wait.until(lambda d: d.find_elements("css selector", ".api-content h1"))
        assert "recsys decision service" in heading[0].text
