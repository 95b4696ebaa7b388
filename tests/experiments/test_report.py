"""The report files, the command line, MLflow, and the HTML in headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from experiments.analysis import analyse
from experiments.report import MLFLOW_EXPERIMENT_SUFFIX, write_report
from experiments.screening import parse_screening
from experiments.synthetic import DECISIONS_DDL, EVENTS_DDL
from recsys.cli import app
from tests.browser import assert_offline, headless_chromium
from tests.experiments.conftest import SPEC, plan_for


@pytest.fixture(scope="module")
def report(source, tmp_path_factory) -> dict[str, Path]:
    screening = parse_screening({"A": 0.09, "B": 0.11})  # the plain {arm: value} file
    result = analyse(source, plan_for(SPEC), as_of=SPEC.end, screening=screening)
    return write_report(result, tmp_path_factory.mktemp("report"))


def test_json_and_csv_carry_the_numbers_of_the_analysis(report, source):
    data = json.loads(report["json"].read_text())
    assert data["srm"]["alarm"] is False
    primary = next(m for m in data["metrics"] if m["role"] == "primary")
    assert primary["metric"] == "acceptance_rate" and primary["arm"] == "B"
    with report["csv"].open() as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["section"] == "primary")
    assert float(row["relative_lift"]) == pytest.approx(primary["lift"]["relative"])
    assert {r["section"] for r in rows} >= {
        "primary",
        "secondary",
        "guardrail",
        "touchpoint",
        "offer",
        "screening",
    }
    assert {arm: s["value"] for arm, s in data["screening"].items()} == {"A": 0.09, "B": 0.11}


def test_html_embeds_plotly_and_puts_the_sample_ratio_check_before_the_results(report):
    text = report["html"].read_text()
    assert not re.search(r"<script[^>]*\ssrc=", text)  # no script loaded from anywhere
    assert "plotly.js v" in text and text.count("Plotly.newPlot") == 4  # the library inside
    assert text.index('id="srm"') < text.index('id="verdict-B"') < text.index("<h2>Results")
    assert "Screening estimate" in text and "what-if" in text


def test_report_renders_in_headless_chromium_without_network(report):
    with headless_chromium() as driver:
        driver.get(report["html"].resolve().as_uri())
        driver.implicitly_wait(10)
        charts = driver.find_elements("css selector", "div.js-plotly-plot")
        assert len(charts) == 4  # timeline, per touchpoint, per offer, screening
        for chart in charts:
            assert chart.find_elements("css selector", "svg.main-svg")
        traces = driver.execute_script(
            "return Array.from(document.querySelectorAll('div.js-plotly-plot'))"
            ".map(d => d.data.length)"
        )
        assert traces[0] == 2  # the lift and its confidence sequence
        assert_offline(driver)


def _sqlite_log(duck, path: Path) -> None:
    lite = sqlite3.connect(path)
    lite.execute(DECISIONS_DDL.format(decisions="decisions"))
    lite.execute(EVENTS_DDL.format(events="events"))
    for table in ("decisions", "events"):
        rows = duck.execute(f"SELECT * FROM {table}").fetchall()
        marks = ", ".join("?" * len(rows[0]))
        lite.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    lite.commit()
    lite.close()


def test_cli_report_writes_the_files_and_logs_an_mlflow_run(duck, tmp_path, monkeypatch):
    log = tmp_path / "events.sqlite"
    _sqlite_log(duck, log)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("RECSYS_MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{log}")
    plan = tmp_path / "exp.yaml"
    plan.write_text(
        "arms: [{name: A, share: 0.5}, {name: B, share: 0.5}]\n"
        f"control: A\nstart: {SPEC.start.isoformat()}\nend: {SPEC.end.isoformat()}\npeeks: 4\n"
    )
    screening = tmp_path / "screening.json"
    screening.write_text(json.dumps({"A": 0.1, "B": 0.12}))
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app,
        ["experiments", "report", "exp", "--plan", str(plan), "--out", str(out),
         "--screening", str(screening)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "B beats A on acceptance rate per decision by +" in result.output
    assert {p.name for p in out.iterdir()} == {"exp.html", "exp.json", "exp.csv"}
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(
        experiment_names=["offer-ranker" + MLFLOW_EXPERIMENT_SUFFIX], output_format="list"
    )
    assert len(runs) == 1
    params, metrics = runs[0].data.params, runs[0].data.metrics
    assert params["arm.B.models"] == "offer-ranker:2" and params["arm.A.models"] == "offer-ranker:1"
    report = json.loads((out / "exp.json").read_text())
    primary = next(m for m in report["metrics"] if m["role"] == "primary")
    assert metrics["B.acceptance_rate.relative_lift"] == pytest.approx(primary["lift"]["relative"])
    assert metrics["B.acceptance_rate.relative_lower"] == pytest.approx(
        primary["lift"]["sequence_relative"]["lower"]
    )


def test_cli_analyse_prints_the_sample_ratio_check_first(duck, tmp_path, monkeypatch):
    log = tmp_path / "events.sqlite"
    _sqlite_log(duck, log)
    result = CliRunner().invoke(
        app,
        ["experiments", "analyse", "exp", "--arm", "A=0.5", "--arm", "B=0.5", "--control", "A",
         "--start", "2026-01-01", "--end", "2026-01-15", "--event-log-url", f"sqlite:///{log}"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert next(iter(data)) == "srm"


def test_cli_names_the_bad_field_of_the_plan(tmp_path):
    log = tmp_path / "events.sqlite"
    result = CliRunner().invoke(
        app,
        ["experiments", "analyse", "exp", "--arm", "A=0.5", "--arm", "B=0.5", "--control", "C",
         "--start", "2026-01-01", "--event-log-url", f"sqlite:///{log}"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "`control` must be one of the arms ['A', 'B'], got 'C'" in result.output
