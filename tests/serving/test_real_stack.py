"""The service on the real stack: warehouse catalogue, SQLite online store, a LightGBM on
the features' decision matrix, the SQLite event log; and `recsys score` on the same path."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from features.spec import FEATURE_SPEC_VERSION
from recsys.errors import SpecMismatchError
from recsys.settings import ServingSettings
from serving.components import build_components
from serving.main import create_app


def test_decisions_on_the_real_stack(real_client, demo_env):
    customer = sorted(demo_env["customers"])[0]
    response = real_client.post(
        "/v1/decisions?trace=true",
        json={
            "customer_id": customer,
            "touchpoint": "web_home",
            "limit": 3,
            "context": {"device": "mobile"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["cold_start"] is False and len(body["offers"]) == 3
    # the default exploration: softmax, every eligible offer at least floor / n at rank 1
    assert body["policy"] == "softmax(temperature=0.02, floor=0.01)"
    assert body["trace"]["epsilon"] == 0.01
    assert 0.01 / body["trace"]["eligible"] <= body["offers"][0]["propensity"] <= 1
    assert all(0 < o["score"] < 1 for o in body["offers"])
    assert body["trace"]["eligible"] == len(body["trace"]["scores"])
    unknown = real_client.post(
        "/v1/decisions", json={"customer_id": "nobody-knows-me", "touchpoint": "web_home"}
    )
    assert unknown.status_code == 200 and unknown.json()["cold_start"] is True
    assert unknown.json()["offers"]


def test_email_consent_on_the_real_stack(real_client, demo_env):
    opted_out = [c for c, ok in demo_env["customers"].items() if ok is False][:5]
    opted_in = [c for c, ok in demo_env["customers"].items() if ok is True][:5]
    response = real_client.post(
        "/v1/decisions/batch",
        json={"touchpoint": "email_newsletter", "customer_ids": opted_out + opted_in},
    )
    assert response.status_code == 200, response.text
    by_customer = {d["customer_id"]: d["offers"] for d in response.json()["decisions"]}
    assert all(by_customer[c] == [] for c in opted_out)
    assert any(by_customer[c] for c in opted_in)


def test_a_model_of_another_feature_spec_is_refused_with_a_clear_log(demo_env, tmp_path, caplog):
    bad = tmp_path / "model"
    bad.mkdir()
    spec = json.loads((demo_env["model_dir"] / "feature_spec.json").read_text())
    spec["feature_spec_version"] = "an-old-spec"
    (bad / "feature_spec.json").write_text(json.dumps(spec))
    (bad / "model.txt").write_bytes((demo_env["model_dir"] / "model.txt").read_bytes())
    settings = demo_env["settings"].model_copy(
        update={"event_log_url": f"sqlite:///{tmp_path / 'e.sqlite'}"}
    )
    with caplog.at_level(logging.ERROR):
        components = build_components(
            settings.model_copy(update={"serving": ServingSettings(model_dir=bad)})
        )
    try:
        served = components.holder.current  # it does not take over: last good copy or fallback
        assert served.source in ("cache", "none")
        assert served.model.info.feature_spec_version != "an-old-spec"
        refusal = [r.getMessage() for r in caplog.records if "refusing model" in r.getMessage()]
        assert refusal and "an-old-spec" in refusal[0] and FEATURE_SPEC_VERSION in refusal[0]
    finally:
        components.close()


def test_score_command_writes_top_k_per_eligible_customer(demo_env, tmp_path, monkeypatch):
    from recsys.cli import app

    settings = demo_env["settings"]
    monkeypatch.setenv("RECSYS_WAREHOUSE_PATH", str(settings.warehouse_path))
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(settings.online_sqlite_path))
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{tmp_path / 'events.sqlite'}")
    monkeypatch.setenv("RECSYS_SERVING__MODEL_DIR", str(demo_env["model_dir"]))
    out = tmp_path / "email.parquet"
    ambiguous = CliRunner().invoke(app, ["score", "--touchpoint", "email", "--out", str(out)])
    assert ambiguous.exit_code == 2 and "email_newsletter" in ambiguous.output
    result = CliRunner().invoke(
        app,
        ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--limit", "2",
         "--layout", "offers"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out)
    consented = {c for c, ok in demo_env["customers"].items() if ok}
    assert set(rows.customer_id) <= consented  # no email offers without consent
    assert rows.groupby("customer_id").size().max() <= 2
    assert (rows.touchpoint_id == "email_newsletter").all()
    # the same decisions were logged like HTTP decisions
    from recsys.eventlog import SQLiteEventLog

    log = SQLiteEventLog(tmp_path / "events.sqlite")
    assert log.counts()["decision_rows"] == len(rows)
    log.close()
    # and the CLI exports them as contract files for `recsys data load`
    exported = CliRunner().invoke(app, ["export-events", str(tmp_path / "feedback")])
    assert exported.exit_code == 0, exported.output
    decisions = pd.read_parquet(tmp_path / "feedback" / "decisions.parquet")
    both = decisions.merge(rows, on=["decision_id", "offer_id"], suffixes=("", "_scored"))
    assert len(both) == len(rows) == len(decisions)
    assert (both.propensity == both.propensity_scored).all()
    assert (both.position == both["rank"]).all()


def test_score_decides_as_of_a_given_time_without_exploring_on_request(
    demo_env, tmp_path, monkeypatch
):
    from recsys.cli import app

    settings = demo_env["settings"]
    monkeypatch.setenv("RECSYS_WAREHOUSE_PATH", str(settings.warehouse_path))
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(settings.online_sqlite_path))
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{tmp_path / 'events.sqlite'}")
    monkeypatch.setenv("RECSYS_SERVING__MODEL_DIR", str(demo_env["model_dir"]))
    monkeypatch.setenv("RECSYS_SERVING__POLICY", "epsilon_greedy")  # the flag must win over
    monkeypatch.setenv("RECSYS_SERVING__EPSILON", "1.0")  # these settings
    out = tmp_path / "email.parquet"
    args = ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--dry-run",
            "--layout", "offers"]  # fmt: skip

    result = CliRunner().invoke(app, [*args, "--as-of", "2030-01-02T03:04:05", "--epsilon", "0"])

    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out)
    assert not rows.empty and not rows.explored.any()
    assert (rows.ts == pd.Timestamp("2030-01-02T03:04:05", tz="UTC")).all()
    explored = CliRunner().invoke(app, [*args, "--as-of", "2030-01-02T03:04:05"])
    assert explored.exit_code == 0, explored.output
    assert pd.read_parquet(out).explored.mean() > 0.5  # epsilon 1 from the settings


def test_an_online_store_of_another_feature_spec_is_refused(demo_env, tmp_path, caplog):
    from features.online import SQLiteOnlineStore

    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    store.write([("C0000001", {"tenure_days": 3.0})], "yesterdays-spec", replace=True)
    store.close()
    settings = demo_env["settings"].model_copy(
        update={
            "online_sqlite_path": tmp_path / "online.sqlite",
            "event_log_url": f"sqlite:///{tmp_path / 'e.sqlite'}",
        }
    )
    with caplog.at_level(logging.ERROR), pytest.raises(SpecMismatchError, match="yesterdays-spec"):
        build_components(
            settings.model_copy(
                update={"serving": ServingSettings(model_dir=demo_env["model_dir"])}
            )
        )
    assert any("recsys features materialize" in r.getMessage() for r in caplog.records)


def test_no_champion_in_the_registry_stops_the_start_with_a_clear_line(demo_env, tmp_path, caplog):
    from recsys.errors import NotFoundError

    settings = demo_env["settings"].model_copy(
        update={
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'empty-mlflow.db'}",
            "event_log_url": f"sqlite:///{tmp_path / 'e.sqlite'}",
        }
    )
    app = create_app(settings)
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(NotFoundError, match="champion"),
        TestClient(app),
    ):
        pass
    assert any("cannot start" in r.getMessage() for r in caplog.records)


def test_served_scores_equal_lightgbm_on_the_features_matrix(demo_env, tmp_path):
    """The compiled model scores what LightGBM scores on the served features' rows."""
    import lightgbm as lgb
    import numpy as np

    from features.decision_matrix import DecisionMatrixBuilder
    from features.matrix import Encoding
    from recsys.decision import DecisionRequest

    settings = demo_env["settings"].model_copy(
        update={
            "event_log_url": f"sqlite:///{tmp_path / 'e.sqlite'}",
            "serving": ServingSettings(
                model_dir=demo_env["model_dir"], policy="epsilon_greedy", epsilon=0.0
            ),
        }
    )
    components = build_components(settings)
    try:
        spec = json.loads((demo_env["model_dir"] / "feature_spec.json").read_text())
        builder = DecisionMatrixBuilder(components.catalog, Encoding.from_dict(spec["encoding"]))
        booster = lgb.Booster(model_file=str(demo_env["model_dir"] / "model.txt"))
        offers = components.catalog.for_touchpoint("web_product")
        checked = 0
        for customer in sorted(demo_env["customers"])[:6]:
            request = DecisionRequest(customer, "web_product", context={"device": "app"})
            (d,) = components.decide([request], trace=True)
            if not d.trace.scores:
                continue
            block = components.pipeline.features.read([customer])
            columns = np.array([offers.index[s.offer_id] for s in d.trace.scores])
            x = builder.build(block, offers, [{"device": "app"}], d.ts,
                              np.zeros(len(columns), dtype=np.intp), columns)  # fmt: skip
            np.testing.assert_allclose(
                booster.predict(x), [s.p_accept for s in d.trace.scores], rtol=1e-6
            )
            checked += 1
        assert checked >= 3
    finally:
        components.close()


def test_the_service_checkpoints_its_event_log_off_the_request_path(demo_env, tmp_path):
    """The decisions reach the database file by the background checkpoints, well before
    SQLite's own 1,000-page checkpoint, which would run in a request's commit."""
    import shutil
    import sqlite3
    import time

    path = tmp_path / "events.sqlite"
    settings = demo_env["settings"].model_copy(update={"event_log_url": f"sqlite:///{path}"})
    serving = ServingSettings(model_dir=demo_env["model_dir"], event_log_checkpoint_s=0.05)
    with TestClient(create_app(settings.model_copy(update={"serving": serving}))) as client:
        served = 0
        for customer in sorted(demo_env["customers"])[:5]:
            response = client.post(
                "/v1/decisions", json={"customer_id": customer, "touchpoint": "web_home"}
            )
            assert response.status_code == 200, response.text
            served += len(response.json()["offers"])
        in_file = -1
        deadline = time.monotonic() + 10
        while in_file != served and time.monotonic() < deadline:
            time.sleep(0.1)
            copy = tmp_path / f"copy-{time.monotonic_ns()}.sqlite"
            shutil.copyfile(path, copy)  # the database file alone, without its WAL
            con = sqlite3.connect(copy)
            try:
                in_file = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
            except sqlite3.DatabaseError:  # copied halfway through a checkpoint: again
                in_file = -1
            finally:
                con.close()
    assert served > 0
    assert in_file == served


def test_the_service_starts_without_redis_and_reads_it_once_it_answers(demo_env, tmp_path):
    """The composition root with the Redis online store down at start (issue 30)."""
    import time

    from tests.serving.reliability.servers import RedisServer

    redis_server = RedisServer(tmp_path / "redis")  # not started yet
    settings = demo_env["settings"].model_copy(
        update={
            "event_log_url": f"sqlite:///{tmp_path / 'events.sqlite'}",
            "online_store": "redis",
            "redis_url": redis_server.url,
            "serving": ServingSettings(
                model_dir=demo_env["model_dir"], policy="epsilon_greedy", epsilon=0.0
            ),
        }
    )
    body = {"customer_id": sorted(demo_env["customers"])[0], "touchpoint": "web_home"}
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            down = client.post("/v1/decisions", json=body)
            assert down.status_code == 200 and down.json()["fallback"] is True
            assert client.get("/readyz").json()["status"] == "degraded"
            redis_server.start()
            deadline = time.monotonic() + 10
            while client.get("/readyz").json()["status"] != "ready":
                assert time.monotonic() < deadline, "Redis answers but is not read"
                time.sleep(0.1)
            up = client.post("/v1/decisions", json=body)
            assert up.status_code == 200 and up.json()["fallback"] is False
    finally:
        redis_server.close()
