"""serving.main wires the production layers into every app it builds."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from recsys.errors import ConfigError
from recsys.eventlog import SQLiteEventLog
from recsys.settings import Settings
from serving.main import create_app
from serving.security import ApiKeyRecord, hash_key, new_key
from tests.serving.factories import make_components


def test_production_without_keys_refuses_to_build_the_app():
    with pytest.raises(ConfigError, match="at least one key in production"):
        create_app(Settings(environment="production"))


def test_the_default_app_checks_keys_and_has_metrics_and_request_ids(tmp_path, monkeypatch):
    key = new_key("secret")
    record = ApiKeyRecord(id="crm", scope="secret", hash=hash_key(key)).model_dump()
    monkeypatch.setenv("RECSYS_SERVING_API_KEYS", json.dumps([record]))
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    app = create_app(
        Settings(environment="production"),
        components=make_components(log),
    )
    body = {"customer_id": "c1", "touchpoint": "web_home"}
    with TestClient(app) as client:
        assert client.post("/v1/decisions", json=body).status_code == 401
        ok = client.post("/v1/decisions", json=body, headers={"X-API-Key": key})
        assert ok.status_code == 200 and ok.headers["x-request-id"]
        metrics = client.get("/metrics").text
        assert 'recsys_http_request_duration_seconds_count{method="POST"' in metrics
        assert client.get("/admin/model", headers={"X-API-Key": key}).status_code == 403
    log.close()
