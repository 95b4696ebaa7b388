"""Demo traffic through the service's decision path: decided, recorded, answered."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from recsys.catalog import now_utc
from recsys.datagen.customers import DemoCustomers
from recsys.settings import ServingSettings
from serving.components import build_components
from serving.demo_traffic import drive_demo_traffic


@pytest.fixture
def components(demo_env, tmp_path):
    settings = demo_env["settings"].model_copy(
        update={
            "event_log_url": f"sqlite:///{tmp_path / 'events.sqlite'}",
            "serving": ServingSettings(
                model_dir=demo_env["model_dir"], policy="epsilon_greedy", epsilon=0.1
            ),
        }
    )
    built = build_components(settings)
    yield built
    built.close()


def test_every_visit_is_decided_logged_and_answered_before_the_end(components, demo_env):
    customers = DemoCustomers.from_dataset(demo_env["root"] / "demo")
    end = now_utc()
    summary = drive_demo_traffic(components, customers, 3, end, seed=2, chunk=16, progress=False)

    assert summary.visits == summary.decisions > 20
    decisions = components.event_log.decision_rows()
    assert len(decisions) == summary.offers_shown
    today = end.replace(hour=0, minute=0, second=0, microsecond=0)
    assert all(today - timedelta(days=3) <= d["ts"] < today for d in decisions)
    outcomes = components.event_log.outcome_rows()
    assert len(outcomes) == sum(summary.events.values()) > 0
    shown = {(d["decision_id"], d["offer_id"]): d for d in decisions}
    for o in outcomes:  # every response is to an offer shown, after it and before the end
        assert shown[(o["decision_id"], o["offer_id"])]["ts"] <= o["ts"] < end
    assert summary.by_arm == {"champion": summary.decisions}
    assert "decisions" in summary.format()


def test_a_live_demo_experiment_from_the_command_line(demo_env, tmp_path, monkeypatch):
    """create --start, start, simulate (days before the start go to the champion), report
    from the store: what `make run` does."""
    from typer.testing import CliRunner

    from recsys.cli import app

    settings = demo_env["settings"]
    for name, value in {
        "RECSYS_WAREHOUSE_PATH": settings.warehouse_path,
        "RECSYS_ONLINE_SQLITE_PATH": settings.online_sqlite_path,
        "RECSYS_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.sqlite'}",
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "RECSYS_SERVING__MODEL_DIR": demo_env["model_dir"],
    }.items():
        monkeypatch.setenv(name, str(value))
    start = (now_utc() - timedelta(days=2)).strftime("%Y-%m-%d")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["experiments", *args])
        assert result.exit_code == 0, result.output
        return result.output

    definition = Path(__file__).parents[2] / "examples" / "experiments" / "demo-live.yaml"
    run("create", str(definition), "--start", start)
    draft = runner.invoke(app, ["experiments", "simulate", "demo-live", "--days", "1"])
    assert draft.exit_code == 1 and "must be running" in draft.output
    run("start", "demo-live")
    out = run("simulate", "demo-live", "--dataset", str(demo_env["root"] / "demo"), "--days", "4")
    summary = next(line for line in out.splitlines() if "4 days: " in line)
    for arm in ("champion", "control", "greedy"):  # the days before the start: the champion
        assert f"{arm}: " in summary
    assert "too few customers yet for a verdict on greedy against control" in out
    run("report", "demo-live", "--out", str(tmp_path / "reports"), "--no-mlflow")
    report = json.loads((tmp_path / "reports" / "demo-live.json").read_text())
    assert {a["name"] for a in report["plan"]["arms"]} == {
        "control", "greedy", "popularity", "random"
    }  # fmt: skip
    assert (tmp_path / "reports" / "demo-live.html").stat().st_size > 100_000
