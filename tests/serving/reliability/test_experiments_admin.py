"""/admin/experiments: admin keys only; create, start, stop, archive over HTTP."""

from __future__ import annotations

import pytest

from experiments.store import open_experiment_store
from tests.experiments.factories import definition


@pytest.fixture
def admin_stack(stack_factory, tmp_path):
    return stack_factory(
        experiment_store=open_experiment_store(f"sqlite:///{tmp_path / 'experiments.sqlite'}")
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/experiments"),
        ("POST", "/admin/experiments"),
        ("GET", "/admin/experiments/exp-home"),
        ("POST", "/admin/experiments/exp-home/start"),
        ("POST", "/admin/experiments/exp-home/stop"),
        ("POST", "/admin/experiments/exp-home/archive"),
        ("GET", "/v1/experiments/exp-home/results"),
    ],
)
def test_experiments_api_requires_an_admin_key(admin_stack, keys, method, path):
    client = admin_stack.client
    body = {"json": definition()} if method == "POST" else {}
    assert client.request(method, path, **body).status_code == 401
    for scope in ("publishable", "secret"):
        response = client.request(method, path, headers=keys.headers(scope), **body)
        assert response.status_code == 403, (scope, response.text)
    assert admin_stack.client.get("/admin/experiments", headers=keys.headers("admin")).json() == []


def test_an_admin_runs_an_experiment_over_http(admin_stack, keys):
    client, admin = admin_stack.client, keys.headers("admin")
    bad = definition(arms=[{"name": "a", "share": 0.7}, {"name": "b", "share": 0.7}])
    response = client.post("/admin/experiments", json=bad, headers=admin)
    assert response.status_code == 422
    assert "sum to 1" in response.text
    unknown = definition(touchpoints=["kiosk"])
    response = client.post("/admin/experiments", json=unknown, headers=admin)
    assert response.status_code == 422
    assert "`touchpoints[0]`: expected a touchpoint of the catalogue, got 'kiosk'" in response.text
    created = client.post("/admin/experiments", json=definition(), headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    started = client.post("/admin/experiments/exp-home/start", headers=admin)
    assert started.json()["status"] == "running"
    assert started.json()["history"][-1]["by"] == "key:ops"  # the admin key's id
    assert started.json()["applied"] is True
    decision = client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers=keys.headers("secret"),
    ).json()
    assert decision["experiment"]["id"] == "exp-home"  # this worker at once
    assert client.post("/admin/experiments/exp-home/archive", headers=admin).status_code == 422
    assert client.post("/admin/experiments/exp-home/stop", headers=admin).json()["status"] == (
        "stopped"
    )
    assert client.get("/admin/experiments/nope", headers=admin).status_code == 404


def test_an_admin_reads_an_experiments_results_over_http(admin_stack, keys):
    client, admin = admin_stack.client, keys.headers("admin")
    # the stack decides at a fixed time in 2026: the experiment starts before it
    dated = definition(start="2026-05-01T00:00:00Z")
    assert client.post("/admin/experiments", json=dated, headers=admin).status_code == 201
    assert client.post("/admin/experiments/exp-home/start", headers=admin).status_code == 200
    early = client.get("/v1/experiments/exp-home/results", headers=admin)
    assert early.status_code == 422 and "exposed units" in early.text
    arms = set()
    for i in range(200):
        decision = client.post(
            "/v1/decisions",
            json={"customer_id": f"c{i}", "touchpoint": "web_home"},
            headers=keys.headers("secret"),
        ).json()
        arms.add(decision["experiment"]["arm"])
    response = client.get("/v1/experiments/exp-home/results", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body)[:2] == ["srm", "verdicts"]  # the sample-ratio check comes first
    assert sum(body["srm"]["observed"]) == 200 and {a["arm"] for a in body["arms"]} == arms
    assert client.get("/v1/experiments/nope/results", headers=admin).status_code == 404
