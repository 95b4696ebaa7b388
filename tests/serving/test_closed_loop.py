"""Closed loop: decisions served + events posted -> export -> `recsys data load` -> retrain,
and the retrained champion is what a new service instance loads from the registry."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from recsys.settings import ServingSettings
from serving.main import create_app


@pytest.fixture
def loop_env(demo_env, tmp_path):
    """A private copy of the demo warehouse (this test appends to it) and a fresh registry."""
    db = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_env["db"], db)
    settings = demo_env["settings"].model_copy(
        update={
            "warehouse_path": db,
            "event_log_url": f"sqlite:///{tmp_path / 'events.sqlite'}",
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
    )
    return settings, tmp_path


def small_config():
    from training.config import build_config

    return build_config(
        {
            "baselines": ["random"],
            "model": {"num_boost_round": 30, "early_stopping_rounds": 10},
            "evaluation": {"bootstrap_samples": 20, "max_ope_rounds": 2000},
            "mlflow": {"log_plots": False},
            # The loop, not model quality: the retrain's test period is mostly the loop's few
            # served decisions (AUC about 0.5), which the quality gate would refuse.
            "gate": {"enabled": False},
        }
    )


def test_served_decisions_and_events_feed_the_next_training(loop_env, demo_env):
    from recsys import warehouse
    from recsys.eventlog import SQLiteEventLog, export_contract
    from recsys.loading import load_directory
    from training.runner import run_training
    from training.tracking import promote

    settings, tmp = loop_env
    first = run_training(small_config(), settings, artifact_location=str(tmp / "artifacts"))
    promote(settings, first.logged.model_version, "champion")

    con = warehouse.connect(settings.warehouse_path, read_only=True)
    before = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
    con.close()

    # serve from the registry's champion; post feedback for what was shown
    rng = random.Random(5)
    customers = sorted(demo_env["customers"])
    served = []
    with TestClient(
        create_app(
            settings.model_copy(
                update={"serving": ServingSettings(policy="epsilon_greedy", epsilon=0.1)}
            )
        )
    ) as client:
        assert client.get("/readyz").json()["model"]["version"] == str(first.logged.model_version)
        for customer in rng.sample(customers, 120):
            touchpoint = rng.choice(["web_home", "web_product", "app_home", "web_cart"])
            body = client.post(
                "/v1/decisions", json={"customer_id": customer, "touchpoint": touchpoint}
            ).json()
            served.extend((body["decision_id"], o["offer_id"]) for o in body["offers"])
        now = datetime.now(UTC).isoformat()
        events = [
            {
                "event_id": f"ev-{i}",
                "decision_id": d,
                "offer_id": o,
                "type": rng.choice(["click", "accept", "dismiss"]),
                "ts": now,
            }
            for i, (d, o) in enumerate(served)
        ]
        for start in range(0, len(events), 100):
            response = client.post("/v1/events", json={"events": events[start : start + 100]})
            assert response.json()["new"] == len(events[start : start + 100])

    # export the log and load it like any other contract batch
    log = SQLiteEventLog(settings.event_log_url.removeprefix("sqlite:///"))
    con = warehouse.connect(settings.warehouse_path)
    known = {r[0] for r in con.execute("SELECT customer_id FROM customers").fetchall()}
    export_contract(log, tmp / "loop", known_customers=known)
    log.close()
    load_directory(tmp / "loop", con)
    after = con.execute("SELECT count(*) FROM decisions").fetchone()[0]
    accepted = set(
        con.execute(
            "SELECT decision_id, offer_id FROM outcomes WHERE outcome = 'accept'"
        ).fetchall()
    )
    con.close()
    assert after == before + len(served)
    posted = {(e["decision_id"], e["offer_id"]) for e in events if e["type"] == "accept"}
    assert posted and posted <= accepted

    # the next training reads the loop's decisions and registers a new version
    second = run_training(small_config(), settings, artifact_location=str(tmp / "artifacts"))
    assert (
        second.result.sizes["train"] + second.result.sizes["valid"] + second.result.sizes["test"]
        >= first.result.sizes["train"]
        + first.result.sizes["valid"]
        + first.result.sizes["test"]
        + len(served) * 0.5
    )
    assert int(second.logged.model_version) == int(first.logged.model_version) + 1
