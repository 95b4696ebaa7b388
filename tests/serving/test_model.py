"""The served model: picked by flavour; LightGBM compiled to native code scores as LightGBM."""

from __future__ import annotations

import json
import logging

import lightgbm as lgb
import lleaves
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
    binary = cache_file(folder / "model.txt", cache)
    assert sorted(p.name for p in cache.iterdir()) == [binary.name, binary.name + ".sha256"]
    written = binary.stat().st_mtime_ns
    second = load_model_dir(folder, compiled_dir=cache)
    assert binary.stat().st_mtime_ns == written  # nothing compiled again
    assert len(list(cache.iterdir())) == 2
    rows = check_rows(categorical_booster, 64, seed=5)
    np.testing.assert_array_equal(first.scorer.score(rows), second.scorer.score(rows))


@pytest.mark.parametrize("damage", [b"", b"not an object file" * 50])
def test_a_damaged_cached_binary_is_compiled_again(tmp_path, categorical_booster, damage, capfd):
    """LLVM aborts the process on a damaged object file: it must never be loaded."""
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    cache = tmp_path / "compiled"
    load_model_dir(folder, compiled_dir=cache)
    binary = cache_file(folder / "model.txt", cache)
    binary.write_bytes(damage)
    capfd.readouterr()
    loaded = load_model_dir(folder, compiled_dir=cache)
    # The model check (a child process, logging to the same stderr) compiled it again.
    assert "fails its digest check: compiling again" in capfd.readouterr().err
    assert isinstance(loaded.scorer, LleavesScorer)
    rows = check_rows(categorical_booster, 64, seed=6)
    np.testing.assert_allclose(
        loaded.scorer.score(rows), categorical_booster.predict(rows), rtol=0, atol=1e-12
    )
    assert binary.stat().st_size > len(damage)  # the good binary is back in the cache


def test_a_failing_compiler_falls_back_to_lightgbm_scores(
    tmp_path, categorical_booster, monkeypatch, caplog
):
    folder = write_model_dir(tmp_path / "model", categorical_booster)

    def broken(self, *args, **kwargs):
        raise RuntimeError("LLVM ERROR: out of memory")

    monkeypatch.setattr(lleaves.Model, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="recsys.scoring.lleaves"):
        loaded = load_model_dir(folder, compiled_dir=tmp_path / "compiled")
    assert isinstance(loaded.scorer, LightGBMScorer)
    assert (
        "model file model.txt: compiled scoring unavailable, using LightGBM: RuntimeError: "
        "LLVM ERROR: out of memory" in caplog.text
    )
    rows = check_rows(categorical_booster, 64, seed=7)
    np.testing.assert_array_equal(loaded.scorer.score(rows), categorical_booster.predict(rows))


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


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            {"columns": ["a", "cat", "b"], "model_file": "model.txt", "flavour": "xgboost"},
            SpecMismatchError,
            r"model `flavour` must be one of \['lightgbm', 'sklearn'\], got 'xgboost'",
        ),
        (
            {"columns": ["a", "cat", "b"], "model_file": "other.txt"},
            NotFoundError,
            r"feature_spec.json names model_file 'other.txt', not found under",
        ),
        (
            {"columns": ["a", "cat", "b"]},
            NotFoundError,
            r"feature_spec.json must name the `model_file`, got None",
        ),
        (
            {"model_file": "model.txt"},
            SpecMismatchError,
            r"feature_spec.json must list the model's `columns`, got None",
        ),
        (
            {"columns": ["a", "b"], "model_file": "model.txt", "flavour": "lightgbm"},
            SpecMismatchError,
            r"lightgbm model reads 3 features but its feature spec lists 2 columns",
        ),
    ],
)
def test_a_model_folder_that_cannot_be_served_is_refused(
    tmp_path, categorical_booster, spec, error, message
):
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    (folder / "feature_spec.json").write_text(json.dumps(spec))
    with pytest.raises(error, match=message):
        load_model_dir(folder)


def test_a_folder_without_a_recorded_flavour_is_lightgbm(tmp_path, categorical_booster):
    """Models registered before flavours were recorded are all LightGBM."""
    folder = write_model_dir(tmp_path / "model", categorical_booster)
    spec = json.loads((folder / "feature_spec.json").read_text())
    assert "flavour" not in spec
    loaded = load_model_dir(folder)
    assert isinstance(loaded.scorer, LightGBMScorer)
    rows = check_rows(categorical_booster, 32, seed=8)
    np.testing.assert_array_equal(loaded.scorer.score(rows), categorical_booster.predict(rows))
