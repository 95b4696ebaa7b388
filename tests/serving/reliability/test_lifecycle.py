"""Model hot swap under load, refused candidates, registry down, fallbacks, breaker, faults.

The registry is a temporary MLflow store (SQLite) holding tiny real LightGBM models in the
layout training logs them (``artifacts/model.txt`` + ``artifacts/feature_spec.json``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import mlflow
import pytest
import redis
from mlflow import MlflowClient

from recsys.eventlog import SQLiteEventLog
from recsys.settings import LifecycleSettings
from serving.model_sources import NoChampion, RegistrySource
from tests.serving.factories import DictFeatureSource, train_tiny_model, write_model_dir
from tests.serving.reliability.conftest import unreachable_registry_env

NAME = "offer-ranker"
DECIDE = {"customer_id": "c1", "touchpoint": "web_home"}


class Registry:
    def __init__(self, root: Path):
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.experiment = self.client.create_experiment(
            "reliability", artifact_location=str(root / "artifacts")
        )
        self.client.create_registered_model(NAME)

    def register(self, model_dir: Path) -> str:
        """Log ``model_dir`` as a run's ``model/artifacts`` and register it; its version."""
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(experiment_id=self.experiment) as run:
            mlflow.log_artifacts(str(model_dir), artifact_path="model/artifacts")
        version = self.client.create_model_version(
            NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        return str(version.version)

    def promote(self, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(NAME, alias, version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    v1 = reg.register(write_model_dir(root / "m1"))
    v2 = reg.register(write_model_dir(root / "m2", train_tiny_model(seed=1)))
    corrupt = write_model_dir(root / "m3")
    (corrupt / "model.txt").write_text("tree\nthis is not a LightGBM model\n")
    v3 = reg.register(corrupt)
    other_spec = write_model_dir(root / "m4")
    spec = json.loads((other_spec / "feature_spec.json").read_text())
    spec["feature_spec_version"] = "an-older-spec"
    (other_spec / "feature_spec.json").write_text(json.dumps(spec))
    v4 = reg.register(other_spec)
    reg.promote(v1)
    return reg, {"v1": v1, "v2": v2, "corrupt": v3, "other_spec": v4}


def registry_stack(stack_factory, registry, tmp_path, **kwargs):
    reg, _ = registry
    lifecycle = kwargs.pop(
        "lifecycle", LifecycleSettings(model_cache_dir=tmp_path / "cache", model_poll_seconds=0)
    )
    return stack_factory(
        source=RegistrySource(reg.uri, NAME, "champion"), lifecycle=lifecycle, **kwargs
    )


def decide(stack, body=DECIDE):
    return stack.client.post("/v1/decisions", json=body, headers=stack.keys.headers("secret"))


class SwapAnswer:
    """The outcome of an admin reload or follow, polled to the end when it answered 202."""

    def __init__(self, status_code: int, body: dict, first_status: int):
        self.status_code = status_code
        self._body = body
        self.first_status = first_status

    def json(self) -> dict:
        return self._body


def admin_swap(stack, path: str = "/admin/model/reload", body=None, timeout: float = 120.0):
    headers = stack.keys.headers("admin")
    response = stack.client.post(path, json=body, headers=headers)
    if response.status_code != 202:
        return SwapAnswer(response.status_code, response.json(), response.status_code)
    url = response.json()["status_url"]
    assert response.headers["location"] == url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.client.get(url, headers=headers).json()
        if job["state"] == "done":
            return SwapAnswer(job["status_code"], job["outcome"], 202)
        time.sleep(0.2)
    raise AssertionError(f"{path}: the swap did not finish within {timeout} s")


def test_the_service_follows_the_alias_and_names_the_version(stack_factory, registry, tmp_path):
    reg, versions = registry
    reg.promote(versions["v1"])
    stack = registry_stack(stack_factory, registry, tmp_path)
    body = decide(stack).json()
    assert body["model"] == {"name": NAME, "version": versions["v1"]} and not body["fallback"]
    pointer = json.loads((tmp_path / "cache" / NAME / "last_good.json").read_text())
    assert pointer["version"] == versions["v1"]
    info = stack.metrics.registry.get_sample_value(
        "recsys_model_info", {"name": NAME, "version": versions["v1"], "source": "registry"}
    )
    assert info == 1.0


def test_hot_swap_under_load_fails_no_request(stack_factory, registry, tmp_path):
    reg, versions = registry
    reg.promote(versions["v1"])
    stack = registry_stack(
        stack_factory,
        registry,
        tmp_path,
        lifecycle=LifecycleSettings(model_cache_dir=tmp_path / "cache", model_poll_seconds=0.2),
    )
    stack.holder.start_polling()
    stop = threading.Event()
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def stream(out: list) -> None:
        while not stop.is_set():
            response = decide(stack)
            out.append((response.status_code, response.json()["model"]["version"]))

    threads = [threading.Thread(target=stream, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    while sum(len(s) for s in seen) < 40:
        time.sleep(0.01)
    reg.promote(versions["v2"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        v == versions["v2"] for s in seen for _, v in s[-5:]
    ):
        time.sleep(0.05)
    mark = sum(len(s) for s in seen)
    while sum(len(s) for s in seen) < mark + 40:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    statuses = [status for s in seen for status, _ in s]
    assert statuses.count(200) == len(statuses) > 80
    for s in seen:
        order = [v for _, v in s]
        switch = order.index(versions["v2"])  # each client switches once, never back
        assert set(order[:switch]) == {versions["v1"]} and set(order[switch:]) == {versions["v2"]}
    info = stack.client.get("/metrics").text
    assert (
        f'recsys_model_info{{name="{NAME}",source="registry",version="{versions["v2"]}"}} 1.0'
        in info
    )
    assert f'version="{versions["v1"]}"' not in info  # one model per process


def test_a_corrupt_model_is_refused_and_the_previous_one_stays(stack_factory, registry, tmp_path):
    reg, versions = registry
    reg.promote(versions["v1"])
    stack = registry_stack(stack_factory, registry, tmp_path)
    reg.promote(versions["corrupt"])
    try:
        response = admin_swap(stack)
    finally:
        reg.promote(versions["v1"])
    assert response.status_code == 409
    body = response.json()
    assert body["result"] == "refused" and "cannot load the model files" in body["detail"]
    assert body["model"]["version"] == versions["v1"]
    assert decide(stack).json()["model"]["version"] == versions["v1"]
    refused = stack.metrics.registry.get_sample_value(
        "recsys_model_swaps_total", {"result": "refused"}
    )
    assert refused == 1.0


def test_a_model_of_another_feature_spec_is_refused(stack_factory, registry, tmp_path):
    reg, versions = registry
    reg.promote(versions["v1"])
    stack = registry_stack(stack_factory, registry, tmp_path)
    reg.promote(versions["other_spec"])
    try:
        response = admin_swap(stack)
    finally:
        reg.promote(versions["v1"])
    assert response.status_code == 409 and "feature spec" in response.json()["detail"]
    assert "an-older-spec" in response.json()["detail"]
    assert decide(stack).json()["model"]["version"] == versions["v1"]


def test_follow_another_alias(stack_factory, registry, tmp_path):
    reg, versions = registry
    reg.promote(versions["v1"])
    reg.promote(versions["v2"], alias="challenger")
    stack = registry_stack(stack_factory, registry, tmp_path)
    response = admin_swap(stack, "/admin/model/follow", {"alias": "challenger"})
    assert response.status_code == 200 and response.json()["result"] == "swapped"
    assert response.json()["model"]["alias"] == "challenger"
    assert decide(stack).json()["model"]["version"] == versions["v2"]


def test_registry_down_at_start_serves_the_last_good_local_copy(
    stack_factory, registry, tmp_path, monkeypatch
):
    reg, versions = registry
    reg.promote(versions["v2"])
    first = registry_stack(stack_factory, registry, tmp_path)
    assert decide(first).json()["model"]["version"] == versions["v2"]
    reg.promote(versions["v1"])
    unreachable_registry_env(monkeypatch)
    down = stack_factory(
        source=RegistrySource("http://127.0.0.1:9", NAME, "champion"),
        lifecycle=LifecycleSettings(model_cache_dir=tmp_path / "cache", model_poll_seconds=0),
    )
    status = down.client.get("/admin/model", headers=down.keys.headers("admin")).json()
    assert status["source"] == "cache" and status["version"] == versions["v2"]
    body = decide(down).json()
    assert body["model"]["version"] == versions["v2"] and body["fallback"] is False
    reload = admin_swap(down)
    assert reload.status_code == 503 and reload.json()["result"] == "unreachable"


def test_no_model_at_all_serves_the_fallback_with_status_200(stack_factory, tmp_path, monkeypatch):
    unreachable_registry_env(monkeypatch)
    stack = stack_factory(
        source=RegistrySource("http://127.0.0.1:9", NAME, "champion"),
        lifecycle=LifecycleSettings(model_cache_dir=tmp_path / "empty", model_poll_seconds=0),
    )
    responses = [decide(stack) for _ in range(5)]
    assert {r.status_code for r in responses} == {200}
    body = responses[0].json()
    assert body["fallback"] is True and body["model"] == {"name": "fallback", "version": "rules"}
    assert body["offers"] and all(o["score"] is not None for o in body["offers"])
    assert stack.log.counts()["decision_rows"] > 0  # fallback decisions are logged too
    reason = stack.metrics.registry.get_sample_value(
        "recsys_fallback_decisions_total", {"reason": "no_model"}
    )
    assert reason == 5.0


def test_the_circuit_breaker_serves_the_fallback_then_retries(stack_factory):
    class FlakyScorer:
        def __init__(self, inner):
            self.inner = inner
            self.failing = False

        def score(self, matrix):
            if self.failing:
                raise RuntimeError("booster crashed")
            return self.inner.score(matrix)

    made = []
    stack = stack_factory(
        lifecycle=LifecycleSettings(
            model_poll_seconds=0, breaker_failures=3, breaker_cooldown_seconds=60
        ),
        scorer_wrapper=lambda inner: made.append(FlakyScorer(inner)) or made[-1],
    )
    now = [0.0]
    stack.holder.breaker.clock = lambda: now[0]
    made[-1].failing = True
    failing = [decide(stack) for _ in range(3)]
    assert [r.status_code for r in failing] == [200, 200, 200]
    assert all(r.json()["fallback"] for r in failing)
    assert stack.holder.breaker.is_open
    made[-1].failing = False
    still_open = decide(stack).json()
    assert still_open["fallback"] is True and still_open["model"]["name"] == "fallback"
    get = stack.metrics.registry.get_sample_value
    assert get("recsys_fallback_decisions_total", {"reason": "model_error"}) == 3.0
    assert get("recsys_fallback_decisions_total", {"reason": "breaker_open"}) == 1.0
    assert get("recsys_circuit_breaker_open") == 1.0
    now[0] += 61
    recovered = decide(stack).json()
    assert recovered["fallback"] is False and recovered["model"]["version"] == "local"
    assert not stack.holder.breaker.is_open and get("recsys_circuit_breaker_open") == 0.0


class SwitchableStore(DictFeatureSource):
    """The factories' store; when down it fails the way a Redis store does."""

    down: bool = False

    def read(self, customer_ids):
        if self.down:
            redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5).get("x")
        return super().read(customer_ids)


def test_online_store_down_serves_cold_start_fallback(stack_factory):
    store = SwitchableStore()
    stack = stack_factory(features=store)
    store.down = True
    web = decide(stack)
    assert web.status_code == 200
    body = web.json()
    assert body["fallback"] is True and body["cold_start"] is True and body["offers"]
    email = decide(stack, {"customer_id": "c1", "touchpoint": "email_weekly"})
    assert email.status_code == 200 and email.json()["offers"] == []  # consent unknown
    reason = stack.metrics.registry.get_sample_value(
        "recsys_fallback_decisions_total", {"reason": "features_down"}
    )
    assert reason == 2.0
    store.down = False  # the background probe (every second) finds it answering
    deadline = time.monotonic() + 10
    while stack.client.get("/readyz").json()["status"] != "ready":
        assert time.monotonic() < deadline, "the store came back but is not read again"
        time.sleep(0.1)
    assert decide(stack).json()["fallback"] is False


def test_a_locked_event_log_gives_503_with_retry_after_not_500(stack_factory, tmp_path):
    path = tmp_path / "locked.sqlite"
    stack = stack_factory(log=SQLiteEventLog(path, busy_timeout_ms=50))
    served = decide(stack).json()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        decisions = [decide(stack) for _ in range(10)]
        events = stack.client.post(
            "/v1/events",
            json={
                "events": [
                    {
                        "event_id": "locked-1",
                        "decision_id": served["decision_id"],
                        "offer_id": served["offers"][0]["offer_id"],
                        "type": "click",
                        "ts": served["ts"],
                    }
                ]
            },
            headers=stack.keys.headers("secret"),
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert {r.status_code for r in decisions} == {503}
    assert all(r.headers["retry-after"] == "1" for r in decisions)
    assert "event log" in decisions[0].json()["detail"]
    assert events.status_code == 503
    assert decide(stack).status_code == 200  # lock gone: back to normal


def test_a_full_event_log_gives_503(stack_factory, tmp_path):
    log = SQLiteEventLog(tmp_path / "full.sqlite")
    stack = stack_factory(log=log)
    assert decide(stack).status_code == 200
    pages = log._con.execute("PRAGMA page_count").fetchone()[0]
    log._con.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    responses = [
        stack.client.post(
            "/v1/decisions",
            json={
                "customer_id": f"c{i}",
                "touchpoint": "web_home",
                "context": {f"pad{j}": "x" * 250 for j in range(20)},
            },
            headers=stack.keys.headers("secret"),
        )
        for i in range(20)
    ]
    statuses = {r.status_code for r in responses}
    assert 503 in statuses and statuses <= {200, 503}
    errors = stack.metrics.registry.get_sample_value(
        "recsys_event_log_errors_total", {"operation": "record_decisions"}
    )
    assert errors >= 1


def test_the_popularity_fallback_ranks_by_observed_acceptance(stack_factory, tmp_path, monkeypatch):
    import duckdb

    from serving.resilience import popularity_rates

    warehouse = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(warehouse))
    con.execute("CREATE TABLE decisions (decision_id TEXT, touchpoint_id TEXT, offer_id TEXT)")
    con.execute("CREATE TABLE outcomes (decision_id TEXT, offer_id TEXT, outcome TEXT)")
    shown = [(f"d{i}", "web_home", offer) for i in range(100) for offer in ("o_tv", "o_dress")]
    con.executemany("INSERT INTO decisions VALUES (?, ?, ?)", shown)
    accepted = [(f"d{i}", "o_dress", "accept") for i in range(40)]
    con.executemany("INSERT INTO outcomes VALUES (?, ?, ?)", [*accepted, ("d0", "o_tv", "click")])
    con.close()
    rates = popularity_rates(warehouse)
    assert rates[("web_home", "o_dress")] == pytest.approx(41 / 120)
    assert rates[("web_home", "o_tv")] == pytest.approx(1 / 120)
    assert popularity_rates(tmp_path / "missing.duckdb") == {}

    unreachable_registry_env(monkeypatch)
    stack = stack_factory(
        source=RegistrySource("http://127.0.0.1:9", NAME, "champion"),
        lifecycle=LifecycleSettings(model_cache_dir=tmp_path / "none", model_poll_seconds=0),
        rates=rates,
    )
    others = ["o_capped", "o_sofa", "o_gold", "o_big_spender"]  # P x value: compare two
    body = decide(
        stack,
        {"customer_id": "c2", "touchpoint": "web_home", "limit": 1, "exclude_offers": others},
    ).json()
    assert body["model"] == {"name": "fallback", "version": "popularity"}
    assert body["offers"][0]["offer_id"] == "o_dress" and body["fallback"] is True


def test_no_champion_refuses_to_start_unless_told_to_serve_the_fallback(
    stack_factory, registry, tmp_path
):
    reg, versions = registry
    source = RegistrySource(reg.uri, NAME, "no-such-alias")
    with pytest.raises(NoChampion, match="START_WITHOUT_MODEL"):
        stack_factory(
            source=source,
            lifecycle=LifecycleSettings(model_poll_seconds=0, model_cache_dir=tmp_path / "a"),
        )
    stack = stack_factory(
        source=RegistrySource(reg.uri, NAME, "no-such-alias"),
        lifecycle=LifecycleSettings(
            model_poll_seconds=0, model_cache_dir=tmp_path / "b", start_without_model=True
        ),
    )
    assert decide(stack).json()["fallback"] is True
    reg.promote(versions["v2"], alias="no-such-alias")
    try:
        reload = admin_swap(stack)
    finally:
        reg.client.delete_registered_model_alias(NAME, "no-such-alias")
    assert reload.json()["result"] == "swapped"
    body = decide(stack).json()
    assert body["fallback"] is False and body["model"]["version"] == versions["v2"]
