"""Every model ``recsys train`` can register is served: train it with the real training code,
log and register it in MLflow, load the champion with serving's loader, score through it."""

from __future__ import annotations

import typing

import mlflow
import numpy as np
import pandas as pd
import pytest

from recsys.scoring import LleavesScorer, SklearnScorer
from recsys.settings import Settings
from serving.model import load_registered_model
from tests.training.factories import frame_encoder, make_world
from training.config import ModelConfig, build_config
from training.pipeline import TrainingInputs, train_and_evaluate
from training.tracking import log_training, promote

#: Every ``model.kind`` the training config accepts, and the scorer serving must pick for it
#: (with compiled scoring on, as the service runs).
SERVED_BY = {"lightgbm": LleavesScorer, "logistic_regression": SklearnScorer}


def test_every_registrable_model_kind_has_a_served_scorer():
    kinds = set(typing.get_args(ModelConfig.model_fields["kind"].annotation))
    assert kinds == set(SERVED_BY)


@pytest.fixture(scope="module")
def world():
    return make_world(decisions=3000, seed=4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("flavours")
    settings = Settings(
        mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db", mlflow_experiment="test-flavours"
    )
    return settings, root


@pytest.mark.parametrize("kind", sorted(SERVED_BY))
def test_a_trained_model_of_each_kind_is_registered_and_served(world, store, kind):
    settings, root = store
    config = build_config(
        {
            "model": {
                "kind": kind,
                "num_boost_round": 40,
                "early_stopping_rounds": 10,
                "params": {"num_threads": 1},
            },
            "baselines": ["popularity"],
            "evaluation": {"bootstrap_samples": 20},
            "mlflow": {"log_plots": False},
            # Flavours, not model quality: the small world's linear model ranks one offer first
            # for everyone, which the quality gate refuses.
            "gate": {"enabled": False},
        }
    )
    inputs = TrainingInputs(world.frame, frame_encoder, world.candidates, world.truth)
    result = train_and_evaluate(inputs, config)
    assert set(result.scorers) == {kind, "popularity"}
    logged = log_training(result, settings, artifact_location=str(root / "artifacts"))
    assert logged.model_version is not None
    promote(settings, logged.model_version, "champion")

    loaded = load_registered_model(
        settings.mlflow_tracking_uri,
        settings.model_name,
        "champion",
        dst=root / f"download-{kind}",
        compiled_dir=root / "compiled",
    )
    assert loaded.spec["flavour"] == result.model.flavour
    assert isinstance(loaded.scorer, SERVED_BY[kind])
    assert loaded.info.version == logged.model_version

    # Serving's P(accept) is training's test score of the registered model (the one refit on
    # all data), row for row.
    expected = result.registered.scorer.predict(result.test.X, result.test.meta)
    served = loaded.scorer.score(result.test.X)
    assert served.shape == (len(result.test),) and served.dtype == np.float64
    assert ((served > 0) & (served < 1)).all()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-9)
    assert np.unique(served).size > 10  # a fitted model, not a constant
    # One decision's matrix, float32 as the service builds it.
    one = result.test.X[:5].astype(np.float32)
    np.testing.assert_allclose(loaded.scorer.score(one), expected[:5], rtol=0, atol=1e-6)

    # The registered pyfunc scores the same rows through the same scorer.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{logged.model_version}")
    frame = pd.DataFrame(result.test.X, columns=list(result.encoder.columns))
    np.testing.assert_allclose(np.asarray(pyfunc.predict(frame)), expected, rtol=0, atol=1e-9)
