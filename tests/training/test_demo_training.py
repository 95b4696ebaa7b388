"""`recsys train` end to end on seeded demo data: warehouse -> models -> OPE -> MLflow."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from recsys.cli import app
from recsys.datagen import generate_dataset
from recsys.loading import load_directory
from recsys.warehouse import connect

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate_dataset(customers=2000, days=40, seed=7, out=root / "demo")
    db = root / "warehouse.duckdb"
    con = connect(db)
    load_directory(root / "demo", con)
    con.close()
    config = root / "train.yaml"
    config.write_text(
        "model:\n  num_boost_round: 300\n  params:\n    num_threads: 1\n"
        "evaluation:\n  bootstrap_samples: 100\n  max_ope_rounds: 4000\n"
    )
    tracking = f"sqlite:///{root}/mlflow.db"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config),
            "--db",
            str(db),
            "--tracking-uri",
            tracking,
            "--promote-if-no-champion",
        ],
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("offer-ranker").experiment_id])
    return root, tracking, result.output, run


def test_lightgbm_policy_beats_popularity_and_random_in_truth(demo):
    _, _, _, run = demo
    m = run.data.metrics
    assert m["true_value"] > 1.15 * m["popularity.true_value"]
    assert m["true_value"] > 1.4 * m["random.true_value"]
    assert m["true_value"] < m["oracle_value"]


def test_off_policy_intervals_cover_the_true_values(demo):
    _, _, _, run = demo
    m = run.data.metrics
    for policy in ("", "popularity.", "random."):
        truth = m[f"{policy}true_value"]
        for estimator in ("snips", "dr"):
            lower = m[f"{policy}{estimator}_value.lower"]
            upper = m[f"{policy}{estimator}_value.upper"]
            assert lower <= truth <= upper, (policy, estimator, lower, truth, upper)


def test_the_run_is_reported_per_touchpoint_and_printed(demo):
    _, _, output, run = demo
    assert any(k.startswith("auc.") for k in run.data.metrics)
    assert any(
        (k.startswith("snips_value.") and "." in k[len("snips_value.") :])
        or (k.startswith("snips_value.") and k.count(".") == 1)
        for k in run.data.metrics
    )
    assert run.data.params["data.positive_outcomes"] == "accept,convert"
    assert "| lightgbm |" in output and "| oracle |" in output
    # the served policy, replayed through the decision pipeline: the service's, softmax
    assert "| served |" in output and "served policy (lightgbm, " in output
    assert run.data.params["evaluation.served_policy"] == "softmax"
    assert "softmax(temperature=0.02, floor=0.01)" in output
    assert "served.snips_value" in run.data.metrics and "served.dr_lift" in run.data.metrics
    assert "champion: version 1" in output
    # The demo model passes the quality gate and is registered refit on every row.
    assert "quality gate: lightgbm passed." in output
    assert run.data.tags["quality_gate"] == "passed"
    assert run.data.params["refit_on_all_data"] == "true"
    assert run.data.metrics["examples_registered_model"] == sum(
        run.data.metrics[f"examples_{part}"] for part in ("train", "valid", "test")
    )
    assert run.data.metrics["snips_value.matched"] >= run.data.metrics["snips_value.ess"] > 0


def test_models_list_and_promote(demo):
    _, tracking, _, _ = demo
    listed = runner.invoke(app, ["models", "list", "--tracking-uri", tracking])
    assert listed.exit_code == 0, listed.output
    assert "champion" in listed.output
    promoted = runner.invoke(
        app, ["models", "promote", "1", "--alias", "challenger", "--tracking-uri", tracking]
    )
    assert promoted.exit_code == 0, promoted.output
    assert "version 1 is now challenger" in promoted.output
    kept = runner.invoke(app, ["models", "promote", "--if-no-champion", "--tracking-uri", tracking])
    assert kept.exit_code == 0, kept.output
    assert "champion: version 1" in kept.output
    bad = runner.invoke(app, ["models", "promote", "7", "--tracking-uri", tracking])
    assert bad.exit_code == 1
    assert "has no version '7'" in bad.output


def test_train_refuses_a_bad_config_naming_the_key(demo, tmp_path):
    root, tracking, _, _ = demo
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  num_leaves: 8\n")
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config),
            "--db",
            str(root / "warehouse.duckdb"),
            "--tracking-uri",
            tracking,
        ],
    )
    assert result.exit_code == 1
    assert "unknown config key `model.num_leaves`" in result.output


def test_train_on_clicks_only_data_without_clicks_config_is_a_clear_error(demo, tmp_path):
    root, tracking, _, _ = demo
    config = tmp_path / "dismiss.yaml"
    config.write_text("data:\n  positive_outcomes: [dismiss]\n  min_positives: 100000\n")
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config),
            "--db",
            str(root / "warehouse.duckdb"),
            "--tracking-uri",
            tracking,
        ],
    )
    assert result.exit_code == 1
    assert "too few positives" in result.output


def test_candidate_rows_reproduce_the_training_row_of_the_shown_offer(demo):
    """Candidates are scored as serving would have at decision time; for the offer actually
    shown that must equal the training-set row."""
    import numpy as np

    from training.config import build_config
    from training.policy_eval import first_shown
    from training.warehouse_data import build_inputs

    root, _, _, _ = demo
    con = connect(root / "warehouse.duckdb", read_only=True)
    try:
        inputs = build_inputs(con, build_config(), root / "warehouse.duckdb")
        frame = inputs.frame
        encoder = inputs.encoder_factory(frame)
        logged = frame[first_shown(frame)].tail(150).reset_index(drop=True)
        candidates, X = inputs.candidates(logged, encoder)
    finally:
        con.close()
    assert len(candidates) > len(logged)  # several candidates per decision
    shown = candidates.reset_index().merge(
        logged[["decision_id", "offer_id"]].reset_index(), on=["decision_id", "offer_id"]
    )
    assert len(shown) == len(logged)
    expected = encoder.transform(logged)[shown["index_y"].to_numpy()]
    got = X[shown["index_x"].to_numpy()]
    close = np.isclose(got, expected, equal_nan=True, atol=1e-4)
    differ = [encoder.columns[j] for j in np.flatnonzero(~close.all(axis=0))]
    assert not differ, f"candidate rows differ from the training rows in {differ}"
