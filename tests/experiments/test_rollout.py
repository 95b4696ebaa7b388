"""``promote``: the winning arm's model becomes the champion and its levers the default."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from experiments.definition import parse_experiment
from experiments.rollout import promote_arm
from experiments.store import open_experiment_store
from recsys.errors import ConfigError
from recsys.settings import Settings
from tests.experiments.factories import definition


@pytest.fixture
def registry(tmp_path):
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        event_log_url=f"sqlite:///{tmp_path / 'events.sqlite'}",
    )
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    client.create_registered_model(settings.model_name)
    for _ in range(2):
        (tmp_path / "model").mkdir(exist_ok=True)
        client.create_model_version(settings.model_name, str(tmp_path / "model"))
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    client.set_registered_model_alias(settings.model_name, "challenger", "2")
    store = open_experiment_store(settings.event_log_url)
    yield settings, client, store
    store.close()


def test_promote_points_the_champion_at_the_arm_s_model_and_keeps_its_levers(registry):
    settings, client, store = registry
    arms = [
        {"name": "control", "kind": "control", "share": 0.5},
        {"name": "challenger", "share": 0.5, "model": {"alias": "challenger"},
         "levers": {"excluded_offers": ["o_tv"]}},
        {"name": "random", "kind": "holdout_random", "share": 0.0001},
    ]  # fmt: skip
    arms[0]["share"] = 0.4999
    store.create(parse_experiment(definition(arms=arms)), "test")
    with pytest.raises(ConfigError, match="must be running or stopped to promote, got draft"):
        promote_arm(settings, store, "exp-home", "challenger", "cli:ana")
    store.transition("exp-home", "start", "test")
    with pytest.raises(ConfigError, match=r"`arm` must be an arm with a model recipe"):
        promote_arm(settings, store, "exp-home", "random", "cli:ana")
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"
    done = promote_arm(settings, store, "exp-home", "challenger", "cli:ana")
    assert (done.model_version, done.champion_changed) == ("2", True)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "2"
    assert store.default_levers().excluded_offers == ("o_tv",)
    stored = store.get("exp-home")
    assert stored.status == "stopped"
    assert {k: stored.history[-2][k] for k in ("action", "arm", "by", "model_version")} == {
        "action": "promote", "arm": "challenger", "by": "cli:ana", "model_version": "2",
    }  # fmt: skip
