"""The quality gate before the registry, ``--force``, and the refit on all data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from recsys.cli import app
from recsys.loading import load_directory
from recsys.obd import import_obd
from recsys.scoring.digest import MODEL_DIGEST_TAG
from recsys.settings import Settings
from recsys.warehouse import connect
from serving.model import read_model_dir
from tests.training.factories import frame_encoder, make_world
from training.config import build_config
from training.gate import quality_gate
from training.ope import Diagnostics, Estimate
from training.pipeline import TrainingInputs, train_and_evaluate
from training.tracking import log_training

SLICE = Path(__file__).resolve().parents[1] / "data" / "obd_slice"
FAST = {
    "model": {"num_boost_round": 60, "early_stopping_rounds": 10, "params": {"num_threads": 1}},
    "evaluation": {"bootstrap_samples": 50},
    "mlflow": {"log_plots": False},
}
#: No leaf can hold this many rows: LightGBM grows no split, every score is the same.
NO_SPLIT = {"model": {**FAST["model"], "params": {"num_threads": 1, "min_data_in_leaf": 10**6}}}


def _noise_world():
    """The factory world with labels drawn independently of every feature."""
    world = make_world(decisions=2000, seed=5)
    frame = world.frame.copy()
    frame["label"] = (np.random.default_rng(0).random(len(frame)) < 0.15).astype(np.int8)
    frame["revenue"] = frame["label"] * 10.0
    return TrainingInputs(frame, frame_encoder, world.candidates, world.truth)


@pytest.fixture(scope="module")
def noise():
    return train_and_evaluate(_noise_world(), build_config(FAST))


@pytest.fixture(scope="module")
def constant():
    return train_and_evaluate(_noise_world(), build_config({**FAST, **NO_SPLIT}))


@pytest.fixture(scope="module")
def good():
    world = make_world(decisions=3000, seed=2)
    inputs = TrainingInputs(world.frame, frame_encoder, world.candidates, world.truth)
    return train_and_evaluate(inputs, build_config(FAST))


@pytest.fixture
def settings(tmp_path):
    return Settings(mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", mlflow_experiment="gate")


def test_a_model_learnt_from_labels_that_ignore_the_features_is_refused(noise):
    verdict = quality_gate(noise)
    assert verdict.status == "refused" and not verdict.allows_registration
    assert any("LightGBM stopped at 1 tree" in r for r in verdict.reasons)
    assert any(r.startswith("its test AUC") and "is not above 0.5" in r for r in verdict.reasons)
    message = verdict.message()
    assert message.startswith("quality gate: lightgbm was NOT registered because")
    assert "`recsys train --force`" in message


def test_a_constant_model_is_refused_for_its_scores_its_policy_and_its_trees(constant):
    verdict = quality_gate(constant)
    assert verdict.status == "refused"
    reasons = " | ".join(verdict.reasons)
    assert "for every one of" in reasons  # the same score for every test row
    assert "chooses the same offer in every one of" in reasons
    assert "LightGBM has no split" in reasons
    assert "its test AUC 0.500 [0.500, 0.500] is not above 0.5" in reasons


def test_force_turns_a_refusal_into_forced_and_a_good_model_passes(constant, good):
    forced = quality_gate(constant, force=True)
    assert forced.status == "forced" and forced.allows_registration
    assert forced.reasons == quality_gate(constant).reasons
    assert "registered anyway because of --force" in forced.message()
    assert quality_gate(good).status == "passed"
    disabled = dataclasses.replace(
        constant, config=build_config({**FAST, **NO_SPLIT, "gate": {"enabled": False}})
    )
    assert quality_gate(disabled).status == "disabled"


def _with_lightgbm_estimate(result, value: float, lower: float, upper: float, lift_upper: float):
    """``result`` with the model's SNIPS estimate replaced by one resting on plenty."""
    enough = Diagnostics(rounds=5000, matched=2000, positives=300, effective_sample_size=1500,
                         max_weight=6.0)  # fmt: skip
    estimate = Estimate("snips", value, lower, upper, enough)
    lift = Estimate("snips_lift", 0.5, 0.3, lift_upper, enough)
    mine = result.policy.policies["lightgbm"]
    mine = dataclasses.replace(
        mine,
        estimates={**mine.estimates, "snips": estimate, "ips": estimate},
        lifts={**mine.lifts, "snips": lift},
    )
    policies = {**result.policy.policies, "lightgbm": mine}
    # Popularity's own estimates count whatever they rest on.
    lenient = {"min_matched_rounds": 0, "min_positives": 0, "min_effective_sample_size": 0}
    return dataclasses.replace(
        result,
        policy=dataclasses.replace(result.policy, policies=policies),
        config=build_config({**FAST, "evaluation": {**FAST["evaluation"], **lenient}}),
    )


def test_a_model_losing_to_the_logging_policy_or_to_popularity_by_ope_is_refused(good):
    popularity = good.policy.policies["popularity"].estimates["snips"].value
    losing = _with_lightgbm_estimate(good, 0.01, 0.005, popularity / 2, lift_upper=0.9)
    reasons = quality_gate(losing).reasons
    assert any("the logging policy's observed" in r and "below it" in r for r in reasons)
    assert any(f"lies below popularity's {popularity:.4g}" in r for r in reasons)
    # An upper bound above both: not refused by OPE.
    close = _with_lightgbm_estimate(good, 0.01, 0.005, popularity * 2, lift_upper=1.1)
    assert quality_gate(close).status == "passed"


def test_ope_comparisons_resting_on_too_little_refuse_nothing_and_are_noted(good):
    strict = build_config({**FAST, "evaluation": {"min_matched_rounds": 10**6}})
    verdict = quality_gate(dataclasses.replace(good, config=strict))
    assert verdict.status == "passed"
    assert any(n.startswith("SNIPS against the logging policy") for n in verdict.notes)
    assert "Not checked: SNIPS against the logging policy" in verdict.message()


def test_refused_models_are_logged_not_registered_and_forced_ones_are(constant, settings):
    client = MlflowClient(settings.mlflow_tracking_uri)
    refused = log_training(constant, settings)
    assert refused.model_version is None and refused.gate.status == "refused"
    tags = client.get_run(refused.run_id).data.tags
    assert tags["quality_gate"] == "refused"
    assert "LightGBM has no split" in tags["quality_gate.reasons"]
    assert "lightgbm policy's estimates rest on too little" in tags["ope_warnings"]

    forced = log_training(constant, settings, force=True)
    assert forced.model_version is not None
    assert client.get_run(forced.run_id).data.tags["quality_gate"] == "forced"
    # The registered version carries the checksum serving verifies its download against.
    version = client.get_model_version(settings.model_name, forced.model_version)
    local = mlflow.artifacts.download_artifacts(
        f"models:/{settings.model_name}/{forced.model_version}"
    )
    assert version.tags[MODEL_DIGEST_TAG] == read_model_dir(local).digest()


def test_the_registered_model_is_refit_on_every_row_and_the_run_says_so(good, settings):
    registered = good.registered
    assert registered.refit
    assert (
        registered.rows
        == sum(good.sizes.values())
        == len(good.test.y) + good.sizes["train"] + (good.sizes["valid"])
    )
    # As many trees as early stopping chose on the held-out fit, fitted on more rows.
    assert (
        registered.scorer.fit_summary()["num_trees"] == good.model.fit_summary()["best_iteration"]
    )
    assert registered.scorer is not good.model
    held_out = good.test_scores["lightgbm"]
    refit = registered.scorer.predict(good.test.X, good.test.meta)
    assert not np.allclose(refit, held_out)
    logged = log_training(good, settings)
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(logged.run_id)
    assert run.data.params["refit_on_all_data"] == "true"
    assert run.data.metrics["examples_registered_model"] == registered.rows
    # The evaluation stays the held-out model's.
    assert run.data.metrics["auc"] == pytest.approx(good.offline["lightgbm"]["auc"])


def test_without_refit_the_held_out_model_is_registered(good):
    config = build_config({**FAST, "model": {**FAST["model"], "refit_on_all_data": False}})
    world = make_world(decisions=3000, seed=2)
    inputs = TrainingInputs(world.frame, frame_encoder, world.candidates, world.truth)
    result = train_and_evaluate(inputs, config)
    assert not result.registered.refit
    assert result.registered.scorer is result.model
    assert result.registered.rows == result.sizes["train"] + result.sizes["valid"]


def test_recsys_train_refuses_a_constant_model_and_force_registers_it(tmp_path):
    import_obd(SLICE, tmp_path / "obd")
    con = connect(tmp_path / "warehouse.duckdb")
    load_directory(tmp_path / "obd", con)
    con.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"positive_outcomes": ["click"], "min_examples": 100, "min_positives": 5},
                "split": {"valid_fraction": 0.2, "test_fraction": 0.3},
                "model": {"num_boost_round": 20, "params": {"num_threads": 1,
                                                             "min_data_in_leaf": 10**6}},
                "evaluation": {"logging_policy": "random", "bootstrap_samples": 50,
                               "served_policy": "epsilon_greedy", "served_epsilon": 0.0},
                "mlflow": {"log_plots": False},
            }
        )
    )  # fmt: skip
    args = [
        "train",
        "--db",
        str(tmp_path / "warehouse.duckdb"),
        "--config",
        str(config),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]
    runner = CliRunner()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1, refused.output
    assert "quality gate: lightgbm was NOT registered because" in refused.output
    assert "LightGBM has no split" in refused.output
    assert "registered model version" not in refused.output
    assert "warning: lightgbm policy's estimates rest on too little" in refused.output

    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "registered anyway because of --force" in forced.output
    assert "registered model version 1" in forced.output
