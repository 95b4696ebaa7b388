"""MLflow run contents, the registered model, and alias management (temporary store)."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from recsys.errors import ConfigError, NotFoundError
from recsys.settings import Settings
from tests.training.factories import frame_encoder, make_world
from training.config import build_config
from training.pipeline import TrainingInputs, train_and_evaluate
from training.tracking import (
    MODEL_PATH_IN_ARTIFACT,
    SPEC_PATH_IN_ARTIFACT,
    champion_version,
    ensure_champion,
    list_versions,
    log_training,
    promote,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db", mlflow_experiment="test-offer-ranker"
    )
    return settings, str(root / "artifacts")


@pytest.fixture(scope="module")
def trained():
    world = make_world(decisions=3000, seed=2)
    config = build_config(
        {
            "model": {
                "num_boost_round": 60,
                "early_stopping_rounds": 10,
                "params": {"num_threads": 1},
            },
            "evaluation": {"bootstrap_samples": 50},
        }
    )
    offers = pd.DataFrame({"offer_id": ["o1", "o2"], "name": ["A", "B"]})
    inputs = TrainingInputs(
        world.frame, frame_encoder, world.candidates, world.truth, offers=offers, source="factory"
    )
    return train_and_evaluate(inputs, config)


@pytest.fixture(scope="module")
def logged(store, trained):
    settings, artifacts = store
    first = log_training(trained, settings, artifact_location=artifacts)
    second = log_training(trained, settings, artifact_location=artifacts)
    return first, second


def test_run_has_the_whole_config_data_fingerprint_spec_and_code_version(store, logged, trained):
    settings, _ = store
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(logged[0].run_id)
    params = run.data.params
    for key, value in trained.config.flat().items():
        assert params[key] == value
    assert params["data.fingerprint"] == trained.fingerprint
    assert params["feature_spec_version"] == "test-1"
    assert params["code_version"]
    assert params["data.source"] == "factory"


def test_run_has_overall_and_per_touchpoint_metrics(store, logged, trained):
    settings, _ = store
    metrics = MlflowClient(settings.mlflow_tracking_uri).get_run(logged[0].run_id).data.metrics
    assert metrics["auc"] == pytest.approx(trained.metrics["auc"])
    for key in (
        "auc.web_cart",
        "auc.email",
        "ece",
        "logloss",
        "hit_at_1",
        "ndcg_at_3",
        "snips_value",
        "dr_value.lower",
        "true_value",
        "oracle_value",
        "popularity.auc",
        "snips_value.web_cart",
        "auc.lower",
        "auc.upper",
        "ips_clipped_value",
        "switch_dr_value.upper",
        "snips_value.matched",
        "snips_value.positives",
        "snips_value.ess",
        "snips_value.max_weight",
        "num_trees",
        "num_splits",
        "examples_registered_model",
    ):
        assert key in metrics, key
    assert metrics["snips_value.matched"] == trained.metrics["snips_value.matched"] > 0


def test_run_has_model_spec_catalogue_and_plots(store, logged):
    settings, _ = store
    client = MlflowClient(settings.mlflow_tracking_uri)
    run_id = logged[0].run_id

    def names(path: str) -> set[str]:
        return {Path(f.path).name for f in client.list_artifacts(run_id, path)}

    assert names("model_native") == {"model.txt", "feature_spec.json"}
    assert names("catalogue") == {"offers.json"}
    assert names("plots") == {
        "feature_importance.png",
        "calibration.png",
        "lift_per_touchpoint.png",
    }
    assert "policy_values.md" in names("evaluation")


def test_registered_model_loads_and_predicts_the_training_scores(store, logged, trained):
    """The registered model is the one refit on all data (``result.registered``)."""
    settings, _ = store
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    version = logged[0].model_version
    uri = f"models:/{settings.model_name}/{version}"
    registered = trained.registered
    assert registered.refit
    expected = registered.scorer.predict(trained.test.X, trained.test.meta)
    frame = pd.DataFrame(trained.test.X, columns=list(registered.encoder.columns))
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert np.allclose(np.asarray(pyfunc.predict(frame)), expected)
    assert pyfunc.metadata.get_input_schema().input_names() == list(registered.encoder.columns)

    # What serving does: download, read the spec, load the native booster.
    directory = Path(mlflow.artifacts.download_artifacts(uri))
    spec = json.loads((directory / SPEC_PATH_IN_ARTIFACT).read_text())
    assert spec["columns"] == list(registered.encoder.columns)
    assert spec["categorical"] == list(registered.encoder.categorical)
    assert spec["feature_spec_version"] == "test-1"
    booster = lgb.Booster(model_file=str(directory / MODEL_PATH_IN_ARTIFACT))
    assert np.allclose(booster.predict(trained.test.X), expected)


def test_versions_are_listed_newest_first_and_promoted_by_alias(store, logged):
    settings, _ = store
    first, second = logged
    versions = list_versions(settings)
    assert [v.version for v in versions][:2] == [second.model_version, first.model_version]
    assert ensure_champion(settings) == second.model_version  # newest becomes champion
    promote(settings, first.model_version, "champion")
    promote(settings, second.model_version, "challenger")
    assert ensure_champion(settings) == first.model_version  # a champion exists: unchanged
    assert champion_version(settings) == first.model_version
    by_version = {v.version: v.aliases for v in list_versions(settings)}
    assert by_version[first.model_version] == ("champion",)
    assert by_version[second.model_version] == ("challenger",)


def test_promote_refuses_an_unknown_alias_or_version(store, logged):
    settings, _ = store
    with pytest.raises(
        ConfigError, match=r"`alias` must be one of \['champion', 'challenger'\], got 'prod'"
    ):
        promote(settings, logged[0].model_version, "prod")
    with pytest.raises(NotFoundError, match="has no version '999'"):
        promote(settings, "999", "champion")


def test_ensure_champion_without_any_model_does_nothing(tmp_path):
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/empty.db", model_name="nothing-here"
    )
    assert ensure_champion(settings) is None
