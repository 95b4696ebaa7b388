"""Training config: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from recsys.errors import ConfigError
from training.config import build_config, load_config


def test_defaults_load_and_flatten_to_mlflow_params():
    config = load_config()
    assert config.model.objective == "binary"
    assert config.data.positive_outcomes == ("accept", "convert")
    flat = config.flat()
    assert flat["model.params.learning_rate"] == "0.03"
    assert flat["baselines"] == "random,popularity,logistic_regression"
    assert config.model.kind == "lightgbm"
    assert flat["model.logistic_regression.C"] == "1.0"


def test_a_yaml_file_overrides_only_the_keys_it_names(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("seed: 11\nmodel:\n  params:\n    num_leaves: 7\n")
    config = load_config(path)
    assert config.seed == 11
    assert config.model.params["num_leaves"] == 7
    assert config.model.params["learning_rate"] == 0.03  # default kept


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": {"objectiv": "binary"}}, r"unknown config key `model\.objectiv`"),
        ({"trees": 5}, r"unknown config key `trees`"),
        (
            {"model": {"objective": "poisson"}},
            r"`model\.objective`.*'binary' or 'lambdarank'.*'poisson'",
        ),
        (
            {"data": {"positive_outcomes": ["buy"]}},
            r"`data\.positive_outcomes` must be a non-empty subset",
        ),
        (
            {"evaluation": {"k": [0, 3]}},
            r"`evaluation\.k` must be a non-empty list of integers >= 1, got \[0, 3\]",
        ),
        (
            {"split": {"valid_fraction": 0.5, "test_fraction": 0.45}},
            r"`split`: valid_fraction \+ test_fraction",
        ),
        (
            {"data": {"attribution_days": -1}},
            r"`data\.attribution_days`.*greater than or equal to 0.*-1",
        ),
        ({"seed": "abc"}, r"`seed`.*integer.*'abc'"),
        ({"baselines": ["random", "knn"]}, r"`baselines\.1`.*'knn'"),
        (
            {"model": {"kind": "popularity"}},
            r"`model\.kind`.*'lightgbm' or 'logistic_regression'.*'popularity'",
        ),
        (
            {"model": {"kind": "logistic_regression", "objective": "lambdarank"}},
            r"`model`: objective lambdarank needs kind lightgbm, got kind logistic_regression",
        ),
        (
            {"model": {"logistic_regression": {"C": 0}}},
            r"`model\.logistic_regression\.C`.*greater than 0.*0",
        ),
    ],
)
def test_a_bad_key_or_value_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(override)


def test_a_missing_or_broken_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)
