"""The command line as people who know git, pip and mlflow expect it: standard variables,
the project's stores from any folder, every problem at once, one-line errors, examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from recsys.cli import app
from recsys.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No RECSYS_* / MLFLOW_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith(("RECSYS_", "MLFLOW_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    from recsys.datagen.generate import generate_dataset

    root = tmp_path_factory.mktemp("cli-demo")
    generate_dataset(customers=150, days=8, seed=3, out=root / "demo", progress=False)
    return root / "demo"


@pytest.fixture
def project(tmp_path, monkeypatch, demo_dir) -> Path:
    """A project root with a loaded warehouse; the commands run from another folder."""
    root = tmp_path / "project"
    root.mkdir()
    result = CliRunner().invoke(
        app, ["data", "load", str(demo_dir), "--db", str(root / "data" / "warehouse.duckdb")]
    )
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(root))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})  # no folded messages


# ---------------------------------------------------------------- settings and stores


def test_mlflow_tracking_uri_is_honoured_and_the_recsys_setting_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert load_settings().mlflow_tracking_uri == "http://mlflow.internal:5000"
    monkeypatch.setenv("RECSYS_MLFLOW_TRACKING_URI", "http://recsys-mlflow:5000")
    assert load_settings().mlflow_tracking_uri == "http://recsys-mlflow:5000"


def test_relative_store_paths_are_under_the_project_root_not_the_current_folder(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(tmp_path / "proj"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.warehouse_path == tmp_path / "proj" / "data" / "warehouse.duckdb"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'proj' / 'mlflow.db'}"
    assert settings.event_log_url == f"sqlite:///{tmp_path / 'proj' / 'data' / 'events.sqlite'}"
    # a path typed on the command line is the user's: relative to the current folder
    assert load_settings(warehouse_path=Path("w.duckdb")).warehouse_path == tmp_path / "w.duckdb"


def test_the_project_env_file_is_read_from_another_folder(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / ".env").write_text("RECSYS_MODEL_NAME=from-project-env\n")
    monkeypatch.setenv("RECSYS_PROJECT_ROOT", str(tmp_path / "proj"))
    monkeypatch.chdir(tmp_path)
    assert load_settings().model_name == "from-project-env"
    (tmp_path / ".env").write_text("RECSYS_MODEL_NAME=from-here\n")
    assert load_settings().model_name == "from-here"


def test_models_list_from_another_folder_says_there_is_no_registry_and_creates_none(project):
    result = run("models", "list")
    assert result.exit_code == 1
    assert "no MLflow tracking database at" in result.stderr
    assert str(project / "mlflow.db") in result.stderr
    assert not (project / "mlflow.db").exists() and not Path("mlflow.db").exists()


def test_features_get_without_a_store_fails_instead_of_answering_a_cold_start(project):
    result = run("features", "get", "C0000001")
    assert result.exit_code == 1 and "no online feature store" in result.stderr
    assert "cold_start" not in result.stdout
    assert not (project / "data" / "online_features.sqlite").exists()


def test_commands_read_the_project_stores_from_another_folder(project):
    assert run("features", "materialize", "--as-of", "latest").exit_code == 0
    result = run("features", "get", "C0000001")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cold_start"] is False
    assert (project / "data" / "online_features.sqlite").exists()


# ---------------------------------------------------------------- data validate


def test_validate_checks_against_the_warehouse(project, demo_dir, tmp_path):
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    for name in ("offers.yaml", "touchpoints.yaml"):
        shutil.copy(demo_dir / name, catalogue / name)
    shutil.copy(demo_dir / "decisions.parquet", catalogue / "decisions.parquet")
    result = run("data", "validate", str(catalogue))
    assert result.exit_code == 0, result.output  # the customers are in the warehouse
    assert "valid" in result.stdout


def test_validate_reports_every_problem_at_once(project, demo_dir, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    offers = yaml.safe_load((demo_dir / "offers.yaml").read_text())
    offers[0]["offer_type"] = "freebie"
    (batch / "offers.yaml").write_text(yaml.safe_dump(offers))
    (batch / "outcomes.csv").write_text(
        "decision_id,offer_id,ts,outcome\nno-such-decision,OF001,2026-01-05T10:00:00,click\n"
    )
    result = run("data", "validate", str(batch))
    assert result.exit_code == 1
    assert "2 problem(s)" in result.stderr
    assert "freebie" in result.stderr and "no-such-decision" in result.stderr


def test_a_misspelled_rule_feature_is_refused_naming_rule_offer_and_closest_names(
    project, demo_dir, tmp_path
):
    batch = tmp_path / "typo"
    batch.mkdir()
    offers = yaml.safe_load((demo_dir / "offers.yaml").read_text())
    ruled = next(o for o in offers if any(r["feature"] == "loyalty_tier" for r in o["eligibility"]))
    for rule in ruled["eligibility"]:
        if rule["feature"] == "loyalty_tier":
            rule["feature"] = "loyalty_teir"
    (batch / "offers.yaml").write_text(yaml.safe_dump(offers))
    shutil.copy(demo_dir / "touchpoints.yaml", batch / "touchpoints.yaml")
    for command in ("validate", "load"):
        result = run("data", command, str(batch))
        assert result.exit_code == 1, result.output
        assert f"offer '{ruled['offer_id']}'" in result.stderr
        assert "loyalty_teir in" in result.stderr and "closest: loyalty_tier" in result.stderr
    assert run("data", "validate", str(demo_dir)).exit_code == 0  # the right name passes


# ---------------------------------------------------------------- one-line errors


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_bad_date_in_offers_yaml_is_one_line_naming_file_line_and_value(
    project, tmp_path, demo_dir
):
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (demo_dir / "offers.yaml").read_text()
    (bad / "offers.yaml").write_text(text.replace("end_at: null", "end_at: 2026-13-45", 1))
    shutil.copy(demo_dir / "touchpoints.yaml", bad / "touchpoints.yaml")
    _one_line_error(run("data", "validate", str(bad)), "offers.yaml, line", "'2026-13-45'")


def test_an_unwritable_out_is_one_line(project):
    _one_line_error(
        run("features", "build", "--as-of", "latest", "--out", "/proc/no/such/f.parquet"),
        "`--out` must be a writable file",
        "/proc/no/such/f.parquet",
    )


def test_import_obd_on_another_layout_is_one_line(demo_dir, tmp_path):
    _one_line_error(
        run("data", "import-obd", str(demo_dir), str(tmp_path / "out")), "Open Bandit Dataset"
    )


def test_score_without_a_registry_is_one_line(project, tmp_path):
    assert run("features", "materialize", "--as-of", "latest").exit_code == 0
    _one_line_error(
        run("score", "--touchpoint", "email_newsletter", "--out", str(tmp_path / "x.csv")),
        "no MLflow tracking database",
    )


def test_a_port_in_use_is_one_line_before_anything_starts():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port))
    _one_line_error(result, f"got {port}, which is in use")
    assert "recsys decision service on" not in result.output


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(app, ["--debug", "models", "list", "--tracking-uri",
                                      "sqlite:////proc/none/mlflow.db"])  # fmt: skip
    assert result.exit_code == 1
    assert result.exception is not None and "no MLflow tracking database" in str(result.exception)


# ---------------------------------------------------------------- keys and help


def test_keys_new_hash_and_list(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys.json"
    made = run("keys", "new", "--scope", "secret", "--id", "crm", "--file", str(keys_file))
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("rk_sec_")
    hashed = CliRunner().invoke(app, ["keys", "hash"], input=key)
    stored = json.loads(keys_file.read_text())["keys"]
    assert stored == [{"id": "crm", "scope": "secret", "hash": hashed.stdout.strip()}]
    again = run("keys", "new", "--scope", "secret", "--id", "crm", "--file", str(keys_file))
    assert again.exit_code == 2 and "already has 'crm'" in again.output
    monkeypatch.setenv("RECSYS_SECURITY__API_KEYS_FILE", str(keys_file))
    listed = run("keys", "list")
    assert "crm" in listed.stdout and "secret" in listed.stdout and key not in listed.stdout


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("command", sorted(_commands(get_command(app))), ids=" ".join)
def test_every_command_has_an_example_in_its_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert re.search(r"Example: .*recsys ", result.stdout), result.stdout
