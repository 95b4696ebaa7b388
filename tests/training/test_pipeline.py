"""Train and evaluate on a simulated world with known acceptance probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import DataError
from tests.training.factories import frame_encoder, make_world
from training.config import build_config
from training.models import MODELS, make_scorer
from training.models.base import NotFittedError
from training.pipeline import TrainingInputs, train_and_evaluate

FAST = {
    "model": {
        "num_boost_round": 150,
        "early_stopping_rounds": 15,
        "params": {"num_threads": 1},
    },
    "evaluation": {"bootstrap_samples": 100},
}


@pytest.fixture(scope="module")
def world():
    return make_world(decisions=5000, seed=0)


@pytest.fixture(scope="module")
def result(world):
    inputs = TrainingInputs(world.frame, frame_encoder, world.candidates, world.truth)
    return train_and_evaluate(inputs, build_config(FAST))


def test_lightgbm_policy_beats_popularity_and_random_in_truth(result):
    policies = result.policy.policies
    lgbm = policies["lightgbm"].true_value
    assert lgbm > 1.5 * policies["popularity"].true_value
    assert lgbm > 1.5 * policies["random"].true_value
    assert lgbm <= result.policy.oracle_value
    assert lgbm > result.policy.logging_true_value


def test_off_policy_intervals_cover_the_true_value_of_the_learned_policy(result):
    value = result.policy.policies["lightgbm"]
    for estimator in ("ips", "snips", "dr"):
        assert value.estimates[estimator].covers(value.true_value), estimator


def test_metrics_are_reported_overall_and_per_touchpoint(result):
    m = result.metrics
    for key in (
        "auc",
        "logloss",
        "ece",
        "hit_at_1",
        "ndcg_at_3",
        "auc.web_cart",
        "auc.email",
        "popularity.auc",
        "snips_value",
        "snips_value.lower",
        "dr_value.upper",
        "snips_revenue",
        "logging_value",
        "true_value",
        "oracle_value",
        "snips_value.email",
        "random.true_value",
    ):
        assert key in m, key
    assert m["auc"] > m["popularity.auc"] > 0.5
    assert 0.45 < m["random.auc"] < 0.55


def test_the_tested_model_is_refit_on_train_and_valid_with_the_early_stopping_size(world, result):
    m = result.metrics
    assert m["examples_evaluated_model"] == m["examples_train"] + m["examples_valid"]
    assert result.model.fit_summary()["num_trees"] == m["best_iteration"]
    inputs = TrainingInputs(world.frame, frame_encoder)
    config = {**FAST, "model": {**FAST["model"], "refit_before_test": False}}
    held_out = train_and_evaluate(inputs, build_config(config))
    assert held_out.metrics["examples_evaluated_model"] == m["examples_train"]
    assert held_out.metrics["auc"] != m["auc"]  # another model was tested


def test_same_data_config_and_seed_give_the_same_metrics(world, result):
    inputs = TrainingInputs(world.frame, frame_encoder, world.candidates, world.truth)
    again = train_and_evaluate(inputs, build_config(FAST))
    assert again.metrics == result.metrics


def test_lambdarank_trains_and_ranks(world):
    config = build_config({**FAST, "model": {**FAST["model"], "objective": "lambdarank"}})
    result = train_and_evaluate(TrainingInputs(world.frame, frame_encoder), config)
    assert result.metrics["auc"] > 0.6
    assert "logloss" not in result.offline["lightgbm"]  # ranking scores are no probabilities


def test_too_little_data_is_a_clear_error(world):
    small = world.frame.head(100)
    with pytest.raises(DataError, match=r"too little data: 100 labelled examples.*min_examples"):
        train_and_evaluate(TrainingInputs(small, frame_encoder), build_config(FAST))


def test_a_single_class_label_is_a_clear_error(world):
    frame = world.frame.assign(label=np.int8(0))
    with pytest.raises(
        DataError,
        match=r"every one of the \d+ examples is negative.*"
        r"positive_outcomes",
    ):
        train_and_evaluate(TrainingInputs(frame, frame_encoder), build_config(FAST))


def test_all_decisions_at_one_instant_cannot_be_split_by_time(world):
    frame = world.frame.assign(ts=world.frame["ts"].iloc[0])
    with pytest.raises(DataError, match="period of the time split is empty"):
        train_and_evaluate(TrainingInputs(frame, frame_encoder), build_config(FAST))


def test_models_come_from_a_registry_and_refuse_predict_before_fit(world):
    assert set(MODELS) == {"lightgbm", "random", "popularity", "logistic_regression"}
    with pytest.raises(ValueError, match=r"`model` must be one of .*got 'knn'"):
        make_scorer("knn")
    scorer = make_scorer("popularity")
    with pytest.raises(NotFittedError, match="must be fitted"):
        scorer.predict(np.zeros((1, 6)), world.frame.head(1))
