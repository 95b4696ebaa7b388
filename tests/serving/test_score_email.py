"""`recsys score` as an email team uses it: an import-ready list, one row per recipient."""

from __future__ import annotations

import shlex

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from recsys.cli import app
from recsys.cli.score import SCORE_EXAMPLE


@pytest.fixture
def score_env(demo_env, tmp_path, monkeypatch):
    """The demo's stores and model; the catalogue with a content column (`subject`)."""
    settings = demo_env["settings"]
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    offers = yaml.safe_load((demo_env["root"] / "demo" / "offers.yaml").read_text())
    for offer in offers:
        offer["subject"] = f"Just for you: {offer['name']}"
    (catalogue / "offers.yaml").write_text(yaml.safe_dump(offers))
    (catalogue / "touchpoints.yaml").write_text(
        (demo_env["root"] / "demo" / "touchpoints.yaml").read_text()
    )
    monkeypatch.setenv("RECSYS_WAREHOUSE_PATH", str(settings.warehouse_path))
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(settings.online_sqlite_path))
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{tmp_path / 'events.sqlite'}")
    monkeypatch.setenv("RECSYS_SERVING__MODEL_DIR", str(demo_env["model_dir"]))
    monkeypatch.setenv("RECSYS_SERVING__CATALOG_SOURCE", str(catalogue))
    monkeypatch.setenv("RECSYS_LIFECYCLE__MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _decision_rows(path) -> int:
    from recsys.eventlog import SQLiteEventLog

    log = SQLiteEventLog(path)
    try:
        return log.counts()["decision_rows"]
    finally:
        log.close()


def test_score_writes_one_import_ready_row_per_recipient(score_env, demo_env):
    out = score_env / "newsletter.csv"
    result = CliRunner().invoke(
        app, ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    slot = ["id", "name", "type", "category", "subject"]
    assert list(rows.columns) == [
        "customer_id",
        "decision_id",
        *[f"offer_{k}_{f}" for k in (1, 2) for f in slot],
    ]
    assert rows.customer_id.is_unique and rows.decision_id.is_unique
    consented = {c for c, ok in demo_env["customers"].items() if ok}
    assert len(rows) > 0 and set(rows.customer_id) <= consented
    assert rows.offer_1_id.notna().all()
    assert (rows.offer_1_subject == "Just for you: " + rows.offer_1_name).all()
    assert (rows.offer_1_id != rows.offer_2_id).all()
    # the contacts are logged: one decision row per offer in the list
    logged = _decision_rows(score_env / "events.sqlite")
    assert logged == rows.offer_1_id.notna().sum() + rows.offer_2_id.notna().sum()


def test_the_per_offer_layout_stays_available_and_a_dry_run_logs_nothing(score_env):
    out = score_env / "offers.parquet"
    args = ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--layout", "offers"])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out)
    assert {"rank", "offer_id", "score", "propensity"} <= set(rows.columns)
    assert rows.groupby("customer_id").size().max() == 3  # the touchpoint's slots
    assert not (score_env / "events.sqlite").exists() or (
        _decision_rows(score_env / "events.sqlite") == 0
    )
    wrong = CliRunner().invoke(app, [*args, "--layout", "rows"])
    assert wrong.exit_code == 2 and "recipients, offers" in wrong.output


def test_the_help_example_works(score_env):
    args = shlex.split(SCORE_EXAMPLE.removeprefix("Example: "))[1:]
    assert "Example: recsys score" in CliRunner().invoke(app, ["score", "--help"]).output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(score_env / "newsletter.csv").columns) == 2 + 3 * 5


@pytest.mark.parametrize(
    ("touchpoint", "says"),
    [
        ("email", "channel 'email' has email_newsletter, email_nps_survey, email_post_purchase"),
        ("email_newsleter", "did you mean email_newsletter"),
        ("nowhere", "batch touchpoints: email_newsletter, email_nps_survey"),
    ],
)
def test_a_wrong_touchpoint_lists_those_that_exist(score_env, touchpoint, says):
    result = CliRunner().invoke(
        app, ["score", "--touchpoint", touchpoint, "--out", str(score_env / "x.csv")]
    )
    assert result.exit_code == 2
    assert says in " ".join(result.output.replace("│", " ").split())


def test_without_a_champion_score_serves_the_fallback_and_says_so(score_env, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{score_env / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_registered_models()  # an empty registry
    monkeypatch.delenv("RECSYS_SERVING__MODEL_DIR")
    monkeypatch.setenv("RECSYS_MLFLOW_TRACKING_URI", uri)
    out = score_env / "fallback.csv"
    result = CliRunner().invoke(
        app, ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "no champion model" in result.stderr and "fallback" in result.stderr
    assert pd.read_csv(out).offer_1_id.notna().all()


def test_slow_chunks_do_not_switch_a_batch_to_the_fallback(score_env, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("RECSYS_LIFECYCLE__BREAKER_SLOW_MS", "0.001")  # every scoring is slow
    out = score_env / "slow.csv"
    args = ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--dry-run"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, [*args, "--chunk", "20"])
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if "circuit breaker open" in r.getMessage()]


def test_score_explores_with_the_settings_policy_and_epsilon_selects_epsilon_greedy(
    score_env, monkeypatch
):
    out = score_env / "offers.parquet"
    args = ["score", "--touchpoint", "email_newsletter", "--out", str(out), "--limit", "2",
            "--layout", "offers", "--dry-run"]  # fmt: skip
    # softmax with floor 1 draws uniformly: propensity 1/n at rank 1, 1/(n - 1) at rank 2
    monkeypatch.setenv("RECSYS_SERVING__POLICY_PARAMS", '{"softmax": {"floor": 1.0}}')
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(out).pivot(index="decision_id", columns="rank", values="propensity")
    pairs = rows.dropna()
    assert len(pairs) > 10
    assert (1 / pairs[2]).to_numpy() == pytest.approx((1 / pairs[1] - 1).to_numpy())
    # --epsilon 0: greedy over the same settings, every propensity 1
    result = CliRunner().invoke(app, [*args, "--epsilon", "0"])
    assert result.exit_code == 0, result.output
    greedy = pd.read_parquet(out)
    assert not greedy.empty and (greedy.propensity == 1.0).all() and not greedy.explored.any()
