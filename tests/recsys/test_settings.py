"""The one settings object: sections from the environment, the old names, a TOML file."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from recsys.arbitration import EpsilonGreedy, Softmax
from recsys.errors import ConfigError
from recsys.settings import ServingSettings, Settings, hash_key, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No RECSYS_* variable or .env file of the machine running the tests leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("RECSYS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_sections_are_read_from_nested_variable_names(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING__WORKERS", "3")
    monkeypatch.setenv("RECSYS_LIMITS__MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("RECSYS_LIFECYCLE__MODEL_POLL_SECONDS", "0")
    monkeypatch.setenv("RECSYS_SECURITY__CORS_ORIGINS", '["https://shop.example.com"]')
    settings = load_settings()
    assert settings.security.cors_origins == ["https://shop.example.com"]
    assert settings.serving.workers == 3
    assert settings.limits.max_body_bytes == 4096
    assert settings.lifecycle.model_poll_seconds == 0
    assert settings.serving.port == 8000  # the rest of the section keeps its defaults


def test_the_old_flat_names_still_work_and_the_sectioned_name_wins(monkeypatch):
    record = {"id": "crm", "scope": "secret", "hash": hash_key("rk_sec_x")}
    monkeypatch.setenv("RECSYS_SERVING_API_KEYS", json.dumps([record]))
    monkeypatch.setenv("RECSYS_SERVING_TOKEN_SECRET", "s" * 40)
    monkeypatch.setenv("RECSYS_SERVING_LOG_FORMAT", "json")
    monkeypatch.setenv("RECSYS_SERVING_POLICY", "epsilon_greedy")
    monkeypatch.setenv("RECSYS_SERVING_EPSILON", "0.2")
    monkeypatch.setenv("RECSYS_SERVING_PORT", "9002")
    monkeypatch.setenv("RECSYS_SERVING__PORT", "9001")
    settings = load_settings()
    assert [r.id for r in settings.security.api_keys] == ["crm"]
    assert settings.security.token_secret.get_secret_value() == "s" * 40
    assert settings.observability.log_format == "json"
    assert (settings.serving.epsilon, settings.serving.port) == (0.2, 9001)


def test_the_old_names_are_read_from_the_env_file_too(tmp_path):
    (tmp_path / ".env").write_text("RECSYS_SERVING_MAX_EVENTS=7\nRECSYS_SEED=11\n")
    settings = load_settings()
    assert (settings.serving.max_events, settings.seed) == (7, 11)


def test_a_toml_file_gives_defaults_under_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "recsys.toml"
    path.write_text(
        'model_alias = "challenger"\n[serving]\nworkers = 4\npolicy = "epsilon_greedy"\n'
        "epsilon = 0.1\n"
    )
    monkeypatch.setenv("RECSYS_SETTINGS_FILE", str(path))
    monkeypatch.setenv("RECSYS_SERVING__EPSILON", "0.3")
    settings = load_settings()
    assert settings.model_alias == "challenger"
    assert (settings.serving.workers, settings.serving.epsilon) == (4, 0.3)


def test_a_missing_settings_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_SETTINGS_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="RECSYS_SETTINGS_FILE"):
        load_settings()


def test_overrides_merge_into_a_section(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING__WORKERS", "2")
    settings = load_settings(serving={"policy": "epsilon_greedy", "epsilon": 0.0}, seed=None)
    assert (settings.serving.workers, settings.serving.epsilon, settings.seed) == (2, 0.0, 7)


@pytest.mark.parametrize(
    "name, value, field",
    [
        ("RECSYS_SERVING__WORKRES", "2", "workres"),  # a typo is refused, not ignored
        ("RECSYS_SERVING__WORKERS", "0", "workers"),
        ("RECSYS_LIMITS__MAX_BODY_BYTES", "a lot", "max_body_bytes"),
    ],
)
def test_bad_values_name_the_field(monkeypatch, name, value, field):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=field):
        load_settings()


def test_the_default_slate_policy_is_softmax_with_temperature_002_and_floor_001():
    serving = load_settings().serving
    assert (serving.policy, serving.policy_params) == ("softmax", {})
    assert serving.slate_policy() == Softmax(temperature=0.02, floor=0.01)
    assert ServingSettings().slate_policy() == Softmax(temperature=0.02, floor=0.01)


def test_epsilon_greedy_is_one_setting_away(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING__POLICY", "epsilon_greedy")
    assert load_settings().serving.slate_policy() == EpsilonGreedy(0.05)
    monkeypatch.setenv("RECSYS_SERVING__EPSILON", "0.1")
    assert load_settings().serving.slate_policy() == EpsilonGreedy(0.1)


@pytest.mark.parametrize("policy", [None, "softmax"])
def test_an_epsilon_beside_softmax_is_epsilon_greedy_arms_and_said_at_start(
    monkeypatch, caplog, policy
):
    if policy is not None:
        monkeypatch.setenv("RECSYS_SERVING__POLICY", policy)
    monkeypatch.setenv("RECSYS_SERVING__EPSILON", "0.1")
    with caplog.at_level("WARNING", logger="recsys.settings"):
        serving = load_settings().serving
    assert serving.slate_policy() == Softmax()
    assert serving.policy_parameters()["epsilon_greedy"] == {"epsilon": 0.1}
    assert "this service's traffic explores with softmax" in caplog.text


def test_each_kind_gets_the_services_parameters(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING__POLICY_PARAMS", '{"softmax": {"floor": 0.05}}')
    assert load_settings().serving.policy_parameters() == {
        "epsilon_greedy": {"epsilon": 0.05},
        "softmax": {"floor": 0.05},
    }


def test_the_slate_policy_is_configured_by_kind_and_parameters(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING__POLICY", "epsilon_greedy")
    assert load_settings().serving.slate_policy() == EpsilonGreedy(0.05)
    monkeypatch.setenv("RECSYS_SERVING__POLICY", "softmax")
    monkeypatch.setenv(
        "RECSYS_SERVING__POLICY_PARAMS", '{"softmax": {"temperature": 0.02, "floor": 0.02}}'
    )
    assert load_settings().serving.slate_policy() == Softmax(temperature=0.02, floor=0.02)
    # each kind's parameters are its own: `recsys score --epsilon 0` switches kind only
    greedy = {"epsilon": 0.0, "policy": "epsilon_greedy"}
    assert load_settings(serving=greedy).serving.slate_policy() == EpsilonGreedy(0.0)


@pytest.mark.parametrize(
    "policy, params, message",
    [
        ("thompson", "{}", "`policy` must be one of epsilon_greedy, softmax, got 'thompson'"),
        ("softmax", '{"softmax": {"floor": 0}}', r"`floor` must be in \(0, 1\], got 0.0"),
        ("softmax", '{"softmax": {"epsilon": 0.1}}', "policy 'softmax' got unknown parameters"),
        ("epsilon_greedy", '{"thompson": {}}', "`policy` must be one of"),
    ],
)
def test_a_bad_policy_is_refused_at_start_naming_it(monkeypatch, policy, params, message):
    monkeypatch.setenv("RECSYS_SERVING__POLICY", policy)
    monkeypatch.setenv("RECSYS_SERVING__POLICY_PARAMS", params)
    with pytest.raises(ValidationError, match=message):
        load_settings()


def test_a_bad_json_list_under_an_old_name_is_named_without_its_value(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING_API_KEYS", "rk_sec_not-json")
    with pytest.raises(ConfigError, match="RECSYS_SERVING_API_KEYS` must be JSON") as refused:
        load_settings()
    assert "rk_sec_not-json" not in str(refused.value)


def test_no_secret_has_a_default_and_secrets_stay_out_of_reprs(monkeypatch):
    settings = Settings()
    assert settings.security.api_keys == [] and settings.security.token_secret is None
    assert settings.observability.log_hash_key is None
    monkeypatch.setenv("RECSYS_SECURITY__TOKEN_SECRET", "t" * 40)
    assert "t" * 40 not in repr(load_settings())


def test_sections_are_plain_models_to_build_in_code():
    settings = Settings(serving=ServingSettings(policy="epsilon_greedy", epsilon=0.0, max_limit=5))
    assert (settings.serving.epsilon, settings.serving.max_limit) == (0.0, 5)
