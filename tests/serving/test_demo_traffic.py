"""Demo traffic through the service's decision path: decided, recorded, answered."""

from __future__ import annotations

from datetime import timedelta

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
            "serving": ServingSettings(model_dir=demo_env["model_dir"], epsilon=0.1),
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
