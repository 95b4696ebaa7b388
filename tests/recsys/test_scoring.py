"""Scorers by flavour: the registry, the shape checks, the sklearn file's trust check."""

from __future__ import annotations

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from recsys.errors import SpecMismatchError
from recsys.scoring import (
    SCORERS,
    LightGBMScorer,
    LleavesScorer,
    LoadOptions,
    ModelFiles,
    SklearnScorer,
    scorer_class,
)

COLUMNS = ("a", "b", "c")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def logit(data) -> Pipeline:
    x, y = data
    return Pipeline([("scale", StandardScaler()), ("logit", LogisticRegression())]).fit(x, y)


def test_every_flavour_is_registered_under_its_name():
    assert {
        "lightgbm": LightGBMScorer,
        "lleaves": LleavesScorer,
        "sklearn": SklearnScorer,
    } == SCORERS


@pytest.mark.parametrize(
    ("flavour", "compiled", "expected"),
    [
        ("lightgbm", False, LightGBMScorer),
        ("lightgbm", True, LleavesScorer),
        ("sklearn", False, SklearnScorer),
        ("sklearn", True, SklearnScorer),  # no compiled sklearn scorer: the plain one
    ],
)
def test_the_scorer_is_picked_by_recorded_flavour(flavour, compiled, expected):
    assert scorer_class(flavour, compiled=compiled) is expected


def test_an_unknown_flavour_is_refused_with_the_known_ones():
    with pytest.raises(
        SpecMismatchError,
        match=r"model `flavour` must be one of \['lightgbm', 'sklearn'\], got 'xgboost'",
    ):
        scorer_class("xgboost")


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((4, 2)), r"must have shape \(n, 3\), got \(4, 2\)"),
        (np.zeros(3), r"must have shape \(n, 3\), got \(3,\)"),
        (np.zeros((1, 3, 1)), r"must have shape \(n, 3\), got \(1, 3, 1\)"),
    ],
)
def test_a_matrix_of_the_wrong_shape_is_refused(logit, matrix, message):
    with pytest.raises(SpecMismatchError, match=message):
        SklearnScorer(logit, COLUMNS).score(matrix)


def test_sklearn_scores_are_p_accept_of_each_row(logit, data):
    x, _ = data
    scores = SklearnScorer(logit, COLUMNS).score(x[:10].astype(np.float32))
    assert scores.dtype == np.float64 and scores.shape == (10,)
    np.testing.assert_allclose(scores, logit.predict_proba(x[:10])[:, 1], rtol=1e-6)
    assert SklearnScorer(logit, COLUMNS).score(x[:0]).shape == (0,)


def test_sklearn_file_round_trips(tmp_path, logit, data):
    x, _ = data
    path = SklearnScorer(logit, COLUMNS).save(tmp_path / "model.skops")
    loaded = SklearnScorer.load(ModelFiles(path, COLUMNS), LoadOptions())
    np.testing.assert_array_equal(loaded.score(x), logit.predict_proba(x)[:, 1])


def shift(x: np.ndarray) -> np.ndarray:
    return x + 1.0


def test_a_sklearn_file_with_untrusted_types_is_not_loaded(tmp_path, data):
    x, y = data
    # Our own function inside the pipeline: loading it would import and run arbitrary code.
    unsafe = Pipeline([("f", FunctionTransformer(shift)), ("logit", LogisticRegression())])
    unsafe.fit(x, y)
    sio.dump(unsafe, tmp_path / "model.skops")
    with pytest.raises(
        SpecMismatchError,
        match=r"must hold only scikit-learn and numpy types, got \['tests.recsys.test_scoring.shift'\]",
    ):
        SklearnScorer.load(ModelFiles(tmp_path / "model.skops", COLUMNS), LoadOptions())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda x, y: LogisticRegression(),
            r"sklearn model must be fitted, got an unfitted LogisticRegression",
        ),
        (
            lambda x, y: LinearRegression().fit(x, y),
            r"sklearn model must be a binary classifier, got a LinearRegression",
        ),
        (
            lambda x, y: LogisticRegression().fit(x, np.where(y == 1, 2, 1)),
            r"sklearn model must be a binary classifier with classes \[0, 1\], got \[1, 2\]",
        ),
        (
            lambda x, y: LogisticRegression().fit(x[:, :2], y),
            r"sklearn model reads 2 features but its feature spec lists 3 columns",
        ),
    ],
)
def test_sklearn_refuses_what_cannot_give_p_accept(data, make, message):
    x, y = data
    with pytest.raises(SpecMismatchError, match=message):
        SklearnScorer(make(x, y), COLUMNS)
