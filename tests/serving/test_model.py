"""The served model: picked by flavour; LightGBM compiled to native code scores as LightGBM."""

from __future__ import annotations

import json
import logging

import lightgbm as lgb
import numpy as np
import pytest

from recsys.errors import NotFoundError, SpecMismatchError
from recsys.scoring import LightGBMScorer, LleavesScorer
from recsys.scoring import lleaves as lleaves_flavour
from recsys.scoring.lleaves import cache_file, check_rows
from serving.model import load_model_dir


def write_model_dir(path, booster: lgb.Booster):
    path.mkdir(parents=True)
    booster.save_model(str(path / "model.txt"))
    spec = {
        "feature_spec_version": "s1",
        "columns": booster.feature_name(),
        "model_file": "model.txt",
    }
    (path / "feature_spec.json").write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def categorical_booster() -> lgb.Booster:
    """Numeric, categorical (with unseen and missing codes) and NaN inputs, as served."""
    rng = np.random.default_rng(3)
    n = 5000
    x = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 12, n).astype(float),  # categorical code
            rng.gamma(2.0, 3.0, n),
        ]
    )
    x[rng.random(n) < 0.1, 2] = np.nan
    logit = 0.8 * x[:, 0] + np.where(np.isin(x[:, 1], [2, 5, 7]), 1.5, -0.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    data = lgb.Dataset(x, label=y, feature_name=["a", "cat", "b"], categorical_feature=[1])
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": 1}
    return lgb.train(params, data, num_boost_round=40)


def test_compiled_model_scores_like_lightgbm(tmp_path, categorical_booster):
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    loaded = load_model_dir(folder, compiled_dir=tmp_path / "compiled")
    assert isinstance(loaded.scorer, LleavesScorer)
    rng = np.random.default_rng(0)
    rows = np.column_stack(
        [rng.normal(size=300), rng.integers(-1, 15, 300).astype(float), rng.gamma(2, 3, 300)]
    )
    rows[::7, 1] = np.nan
    rows[::5, 2] = np.nan
    want = categorical_booster.predict(rows)
    np.testing.assert_allclose(loaded.scorer.score(rows), want, rtol=0, atol=1e-12)
    # The decision path scores one row too.
    np.testing.assert_allclose(loaded.scorer.score(rows[:1]), want[:1], rtol=0, atol=1e-12)
    # Decision matrices are float32; a view of every other row is not contiguous.
    single = rows.astype(np.float32)
    np.testing.assert_allclose(
        loaded.scorer.score(single[::2]),
        categorical_booster.predict(single[::2].astype(np.float64)),
        rtol=0,
        atol=1e-12,
    )
    assert loaded.scorer.score(rows[:0]).shape == (0,)


def test_compiled_binary_is_cached_and_reused(tmp_path, categorical_booster):
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    cache = tmp_path / "compiled"
    first = load_model_dir(folder, compiled_dir=cache)
    binaries = sorted(p.name for p in cache.iterdir())
    assert len(binaries) == 1 and binaries[0].endswith(".so")
    second = load_model_dir(folder, compiled_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == binaries  # nothing compiled again
    rows = check_rows(categorical_booster, 64, seed=5)
    np.testing.assert_array_equal(first.scorer.score(rows), second.scorer.score(rows))


def test_a_compiled_model_that_disagrees_is_not_served(
    tmp_path, categorical_booster, monkeypatch, caplog
):
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    monkeypatch.setattr(lleaves_flavour, "COMPILED_TOLERANCE", -1.0)  # nothing can agree
    with caplog.at_level(logging.WARNING, logger="recsys.scoring.lleaves"):
        loaded = load_model_dir(folder, compiled_dir=tmp_path / "compiled")
    assert isinstance(loaded.scorer, LightGBMScorer)
    assert "compiled scoring unavailable, using LightGBM" in caplog.text
    assert "disagrees with LightGBM" in caplog.text


def test_without_a_compile_folder_lightgbm_scores(tmp_path, categorical_booster):
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    assert isinstance(load_model_dir(folder).scorer, LightGBMScorer)


def test_check_rows_cross_the_model_splits(categorical_booster):
    rows = check_rows(categorical_booster, 256)
    assert rows.shape == (256, 3)
    assert np.isnan(rows).any()
    # categorical codes from the split sets and one past them
    codes = set(np.unique(rows[~np.isnan(rows[:, 1]), 1]).tolist())
    assert len(codes) >= 3


@pytest.fixture(scope="module")
def zero_split_booster() -> lgb.Booster:
    """A feature split "at zero": LightGBM's threshold there is -1e-35 or 1e-35."""
    rng = np.random.default_rng(4)
    n = 4000
    nps = rng.integers(-3, 4, n).astype(float)  # many exact zeros, as a score delta
    other = rng.normal(size=n)
    logit = np.where(nps < 0, -1.5, np.where(nps == 0, 0.0, 1.0)) + 0.3 * other
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    data = lgb.Dataset(np.column_stack([nps, other]), label=y, feature_name=["nps", "other"])
    params = {"objective": "binary", "num_leaves": 7, "verbose": -1, "seed": 1}
    return lgb.train(params, data, num_boost_round=30)


def test_a_model_split_at_zero_is_still_served_compiled(tmp_path, zero_split_booster):
    thresholds = set()

    def walk(node):
        if "split_feature" in node:
            thresholds.add(node["threshold"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in zero_split_booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    assert any(0 < abs(t) <= 1e-34 for t in thresholds)  # the case under test is there
    folder = write_model_dir(tmp_path / "model", zero_split_booster)
    loaded = load_model_dir(folder, compiled_dir=tmp_path / "compiled")
    assert isinstance(loaded.scorer, LleavesScorer)
    rows = np.column_stack([np.arange(-3.0, 4.0).repeat(3), np.tile([-1.0, 0.0, 1.0], 7)])
    np.testing.assert_allclose(
        loaded.scorer.score(rows), zero_split_booster.predict(rows), rtol=0, atol=1e-12
    )
