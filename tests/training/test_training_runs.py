"""MLflow runs say what a training did and how long it took; a failed one leaves a trace;
long steps show progress."""

from __future__ import annotations

import io
import re
import time

import lightgbm as lgb
import numpy as np
import pytest
from mlflow import MlflowClient

from recsys import warehouse
from recsys.datagen.generate import generate_dataset
from recsys.loading import load_directory
from recsys.settings import Settings
from training.config import build_config
from training.progress import LightGBMProgress, progress_bar
from training.runner import run_training


@pytest.fixture(scope="module")
def small_warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    generate_dataset(customers=300, days=20, seed=11, out=root / "demo", progress=False)
    con = warehouse.connect(root / "warehouse.duckdb")
    load_directory(root / "demo", con)
    con.close()
    return root


def _settings(root, tmp_path) -> Settings:
    return Settings(
        warehouse_path=root / "warehouse.duckdb",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        environment="test",
    )


def _config(**evaluation):
    return build_config(
        {
            "baselines": ["random"],
            "model": {"num_boost_round": 30, "early_stopping_rounds": 10},
            "evaluation": {"bootstrap_samples": 20, "max_ope_rounds": 1000, **evaluation},
            "mlflow": {"log_plots": False},
            "gate": {"enabled": False},
        }
    )


def _only_run(settings):
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_the_run_is_named_after_model_and_data_and_spans_the_whole_training(
    small_warehouse, tmp_path, monkeypatch
):
    import training.warehouse_data as warehouse_data

    settings = _settings(small_warehouse, tmp_path)
    prepared: list[float] = []
    build_inputs = warehouse_data.build_inputs

    def timed_build_inputs(*args, **kwargs):
        prepared.append(time.time())  # data preparation starts
        return build_inputs(*args, **kwargs)

    monkeypatch.setattr(warehouse_data, "build_inputs", timed_build_inputs)
    outcome = run_training(_config(), settings, artifact_location=str(tmp_path / "artifacts"))
    client, run = _only_run(settings)
    result = outcome.result
    assert run.info.run_name == (
        f"lightgbm {result.data_start:%Y-%m-%d}..{result.data_end:%Y-%m-%d} "
        f"({sum(result.sizes.values()):,} rows)"
    )
    assert re.fullmatch(r"lightgbm \d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d \([\d,]+ rows\)",
                        run.info.run_name)  # fmt: skip
    assert run.info.status == "FINISHED"
    # timed over the whole training: data preparation included, registration inside
    assert run.info.start_time / 1000 <= prepared[0]
    version = client.get_model_version(settings.model_name, outcome.logged.model_version)
    assert run.info.start_time <= version.creation_timestamp <= run.info.end_time


def test_a_failed_training_leaves_a_failed_run_with_the_error(small_warehouse, tmp_path):
    settings = _settings(small_warehouse, tmp_path)
    with pytest.raises(Exception, match="logging_policy"):
        run_training(_config(logging_policy="no-such-policy"), settings,
                     artifact_location=str(tmp_path / "artifacts"))  # fmt: skip
    client, run = _only_run(settings)
    assert run.info.status == "FAILED"
    assert "logging_policy" in run.data.tags["error"] and "no-such-policy" in run.data.tags["error"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "error.txt" in artifacts


def test_lightgbm_rounds_show_as_a_progress_bar():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = (x[:, 0] + rng.normal(size=500) > 0).astype(int)
    out = io.StringIO()
    bar = progress_bar("fitting lightgbm", 25, "round", file=out)
    lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, label=y),
              num_boost_round=25, callbacks=[LightGBMProgress(bar)])  # fmt: skip
    assert bar.n == 25
    assert "fitting lightgbm" in out.getvalue() and "/25" in out.getvalue()
