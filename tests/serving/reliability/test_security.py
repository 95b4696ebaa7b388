"""Keys, customer tokens and CORS: a browser cannot read another customer's offers."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from recsys.errors import ConfigError
from recsys.settings import ApiKeyRecord, SecuritySettings, Settings, hash_key
from serving.credentials import build_authenticator, load_key_records, new_key
from serving.security import check_cors, main

ALICE = "cust-alice-7f3a9c21"
BOB = "cust-bob-0be41d77"


def decide(stack, headers, customer_id=ALICE, query=""):
    return stack.client.post(
        "/v1/decisions" + query,
        json={"customer_id": customer_id, "touchpoint": "web_home"},
        headers=headers,
    )


def test_a_browser_gets_offers_for_the_customer_of_its_token(stack, keys):
    response = decide(stack, keys.headers("publishable", ALICE))
    assert response.status_code == 200, response.text
    assert response.json()["customer_id"] == ALICE


def test_another_customers_id_is_refused(stack, keys):
    response = decide(stack, keys.headers("publishable", ALICE), customer_id=BOB)
    assert response.status_code == 403
    assert response.json()["errors"][0]["field"] == "customer_id"
    assert stack.log.counts()["decision_rows"] == 0


def test_a_repeated_json_key_cannot_smuggle_another_customer(stack, keys):
    headers = {**keys.headers("publishable", ALICE), "content-type": "application/json"}
    smuggle = f'{{"customer_id": "{ALICE}", "touchpoint": "web_home", "customer_id": "{BOB}"}}'
    assert stack.client.post("/v1/decisions", content=smuggle, headers=headers).status_code == 403
    # The route reads the last value too: the one that was checked is the one served.
    fine = f'{{"customer_id": "{BOB}", "touchpoint": "web_home", "customer_id": "{ALICE}"}}'
    response = stack.client.post("/v1/decisions", content=fine, headers=headers)
    assert response.status_code == 200 and response.json()["customer_id"] == ALICE


@pytest.mark.parametrize(
    "make_token, reason",
    [
        (lambda k: k.token(ALICE, secret="an-attacker-guess-of-the-secret-0123456789"), "invalid"),
        (lambda k: k.token(ALICE, ttl=-120), "expired"),
        (lambda k: k.token(ALICE, ttl=30 * 86_400), "expire within"),
        (lambda k: jwt.encode({"sub": ALICE}, k.token_secret, algorithm="HS256"), "invalid"),
        (
            lambda k: jwt.encode(
                {"sub": ALICE, "exp": int(time.time()) + 60}, None, algorithm="none"
            ),
            "invalid",
        ),
        (lambda k: "not-a-token", "invalid"),
        (lambda k: k.token(ALICE)[:-4] + "AAAA", "invalid"),
    ],
    ids=["forged", "expired", "too-long-lived", "no-exp", "alg-none", "garbage", "tampered"],
)
def test_forged_expired_or_malformed_tokens_are_refused(stack, keys, make_token, reason):
    headers = {"X-API-Key": keys.publishable, "X-Customer-Token": make_token(keys)}
    response = decide(stack, headers)
    assert response.status_code == 401
    body = response.json()
    assert reason in body["detail"] and body["errors"][0]["field"] == "X-Customer-Token"


def test_a_publishable_key_without_token_is_refused(stack, keys):
    response = decide(stack, {"X-API-Key": keys.publishable})
    assert response.status_code == 401 and "customer token" in response.json()["detail"]


def test_no_key_or_an_unknown_key_is_refused(stack, keys):
    missing = decide(stack, {})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("ApiKey")
    assert decide(stack, {"X-API-Key": new_key("secret")}).status_code == 401
    assert decide(stack, {"X-API-Key": keys.secret + "x"}).status_code == 401


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1/decisions/batch", {"touchpoint": "email_weekly", "customer_ids": [ALICE]}),
        ("GET", "/v1/touchpoints", None),
        ("GET", "/v1/offers", None),
        ("GET", "/admin/model", None),
        ("POST", "/admin/model/reload", None),
    ],
)
def test_a_publishable_key_is_refused_on_secret_endpoints(stack, keys, method, path, body):
    response = stack.client.request(
        method, path, json=body, headers=keys.headers("publishable", ALICE)
    )
    assert response.status_code == 403, response.text


def test_the_trace_needs_a_secret_key(stack, keys):
    refused = decide(stack, keys.headers("publishable", ALICE), query="?trace=true")
    assert refused.status_code == 403 and refused.json()["errors"][0]["field"] == "trace"
    allowed = decide(stack, keys.headers("secret"), query="?trace=true")
    assert allowed.status_code == 200 and allowed.json()["trace"] is not None


def test_a_secret_key_decides_for_any_customer_but_cannot_administer(stack, keys):
    assert decide(stack, keys.headers("secret"), customer_id=BOB).status_code == 200
    assert stack.client.get("/admin/model", headers=keys.headers("secret")).status_code == 403
    admin = stack.client.get("/admin/model", headers=keys.headers("admin"))
    assert admin.status_code == 200 and admin.json()["version"] == "local"


def test_probes_and_metrics_need_no_key(stack):
    assert stack.client.get("/healthz").status_code == 200
    assert stack.client.get("/metrics").status_code == 200
    assert stack.client.get("/openapi.json").status_code == 200


def test_cors_allows_the_sites_origin_only(stack):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key,x-customer-token",
    }
    ok = stack.client.options(
        "/v1/decisions", headers={"Origin": "https://shop.example.com", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://shop.example.com"
    evil = stack.client.options(
        "/v1/decisions", headers={"Origin": "https://evil.example.net", **preflight}
    )
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
    simple = stack.client.post(
        "/v1/decisions",
        json={"customer_id": ALICE, "touchpoint": "web_home"},
        headers={"Origin": "https://evil.example.net"},
    )
    assert "access-control-allow-origin" not in simple.headers


def test_refused_calls_still_carry_cors_headers_for_the_site(stack):
    response = stack.client.post(
        "/v1/decisions",
        json={"customer_id": ALICE, "touchpoint": "web_home"},
        headers={"Origin": "https://shop.example.com"},
    )
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "https://shop.example.com"


# ------------------------------------------------------------------ start-up refusals


def test_production_without_keys_refuses_to_start():
    with pytest.raises(ConfigError, match="at least one key in production"):
        build_authenticator(Settings(environment="production", security=SecuritySettings()))


def test_publishable_keys_without_a_token_secret_refuse_to_start(keys):
    with pytest.raises(ConfigError, match="token_secret"):
        build_authenticator(
            Settings(environment="development", security=SecuritySettings(api_keys=keys.records()))
        )


def test_a_short_token_secret_refuses_to_start_in_production(keys):
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        build_authenticator(
            Settings(
                environment="production",
                security=SecuritySettings(api_keys=keys.records(), token_secret="short"),
            )
        )


def test_cors_wildcard_with_credentials_refuses_to_start():
    with pytest.raises(ConfigError, match="cors_origins"):
        check_cors(SecuritySettings(cors_origins=["*"], cors_allow_credentials=True))
    with pytest.raises(ConfigError, match="no path"):
        check_cors(SecuritySettings(cors_origins=["https://shop.example.com/page"]))


def test_development_without_keys_is_open_and_says_so(caplog):
    authenticator = build_authenticator(
        Settings(environment="development", security=SecuritySettings())
    )
    assert not authenticator.enabled
    assert any("authentication is OFF" in r.message for r in caplog.records)


def test_keys_from_a_file_and_bad_records_named(tmp_path):
    key = new_key("secret")
    good = tmp_path / "keys.json"
    good.write_text(json.dumps({"keys": [{"id": "crm", "scope": "secret", "hash": hash_key(key)}]}))
    records = load_key_records(SecuritySettings(api_keys_file=good))
    assert [r.id for r in records] == ["crm"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keys": [{"id": "crm", "scope": "secret", "hash": key}]}))
    with pytest.raises(ConfigError, match=r"keys\[0\].*sha256") as refused:
        load_key_records(SecuritySettings(api_keys_file=bad))
    assert key not in str(refused.value)  # the message never shows a raw key
    with pytest.raises(ConfigError, match="must exist"):
        load_key_records(SecuritySettings(api_keys_file=tmp_path / "missing.json"))


def test_repeated_key_ids_refuse_to_start(keys):
    record = ApiKeyRecord(id="same", scope="secret", hash=hash_key(keys.secret))
    with pytest.raises(ConfigError, match="unique"):
        build_authenticator(
            Settings(environment="test", security=SecuritySettings(api_keys=[record, record]))
        )


def test_new_key_command_prints_a_key_and_only_its_hash_as_the_record(capsys):
    assert main(["new-key", "--id", "shop-web", "--scope", "publishable"]) == 0
    out = capsys.readouterr().out
    key = out.split("it is not stored): ")[1].split()[0]
    record = json.loads(out.split("record (configure it): ")[1])
    assert key.startswith("rk_pub_") and record["hash"] == hash_key(key)
    assert key not in out.split("record (configure it): ")[1]


def test_a_key_may_come_as_a_bearer_token(stack, keys):
    response = decide(stack, {"Authorization": f"Bearer {keys.secret}"}, customer_id=BOB)
    assert response.status_code == 200


def test_tokens_of_the_previous_secret_are_accepted_during_a_rotation(stack_factory, keys):
    old = "the-secret-before-the-rotation-0123456789"
    stack = stack_factory(
        security=SecuritySettings(
            api_keys=keys.records(), token_secret=keys.token_secret, token_secret_previous=old
        )
    )
    headers = {"X-API-Key": keys.publishable, "X-Customer-Token": keys.token(ALICE, secret=old)}
    assert decide(stack, headers).status_code == 200
    other = keys.token(ALICE, secret="yet-another-secret-not-configured-0123456789")
    assert decide(stack, {**headers, "X-Customer-Token": other}).status_code == 401


def test_the_token_is_checked_before_the_body_and_the_customer_after_it(stack, keys):
    no_token = stack.client.post(
        "/v1/decisions", json={"customer_id": 5}, headers={"X-API-Key": keys.publishable}
    )
    assert no_token.status_code == 401
    invalid = stack.client.post(
        "/v1/decisions",
        json={"customer_id": BOB, "touchpoint": "web_home", "limit": 0},
        headers=keys.headers("publishable", ALICE),
    )
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "limit"
    assert stack.log.counts()["decision_rows"] == 0


def test_the_decision_route_documents_its_body_and_trace_once(stack):
    operation = stack.client.get("/openapi.json").json()["paths"]["/v1/decisions"]["post"]
    assert [p["name"] for p in operation["parameters"]] == ["trace", "preview"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/DecisionRequestBody")
    assert {"401", "403", "422"} <= set(operation["responses"])
