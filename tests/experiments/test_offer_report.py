"""The offer report's files (CSV, self-contained HTML in headless Chromium) and its command."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from experiments.moments import open_event_log
from experiments.offer_performance import RATES, offer_performance
from experiments.offer_report import write_offer_report
from recsys.cli import app
from recsys.eventlog import SQLiteEventLog
from tests.browser import assert_offline, headless_chromium
from tests.experiments.offer_log import COUNTS, EXPECTED, T0, UNTIL, record
from tests.recsys.factories import OFFERS, TOUCHPOINTS, make_catalog


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("offer-report") / "events.sqlite"
    log = SQLiteEventLog(path)
    record(log)
    log.close()
    return path


@pytest.fixture(scope="module")
def files(log_path, tmp_path_factory) -> dict[str, Path]:
    with open_event_log(f"sqlite:///{log_path}") as source:
        report = offer_performance(source, make_catalog(), since=T0, until=UNTIL)
    return write_offer_report(report, tmp_path_factory.mktemp("out"))


def test_csv_has_one_row_per_segment_with_counts_rates_and_intervals(files):
    with files["csv"].open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames
    rates = [f"{r}{end}" for r in RATES for end in ("", "_lower", "_upper")]
    assert columns == ["dimension", "segment", "name", *COUNTS, *rates, "revenue_per_impression"]
    got = {(r["dimension"], r["segment"]): tuple(float(r[c]) for c in COUNTS) for r in rows}
    assert got == EXPECTED
    tv = next(r for r in rows if r["segment"] == "o_tv")
    assert tv["name"] == "TV deal" and float(tv["accept_rate"]) == pytest.approx(1 / 3)
    assert 0 < float(tv["accept_rate_lower"]) < 1 / 3 < float(tv["accept_rate_upper"]) < 1


def test_html_is_self_contained_with_a_section_per_breakdown(files):
    text = files["html"].read_text()
    assert not re.search(r"<script[^>]*\ssrc=", text)  # no script loaded from anywhere
    assert "plotly.js v" in text and text.count("Plotly.newPlot") == 6
    for section in ("total", "per-offer", "per-touchpoint", "per-channel", "per-stage", "per-day"):
        assert f'id="{section}"' in text
    assert "Sofa upsell" in text and "post_purchase" in text


def test_html_renders_in_headless_chromium_without_network(files):
    with headless_chromium() as driver:
        driver.get(files["html"].resolve().as_uri())
        driver.implicitly_wait(10)
        charts = driver.find_elements("css selector", "div.js-plotly-plot")
        assert len(charts) == 6  # rates per offer, revenue, touchpoint, channel, stage, day
        for chart in charts:
            assert chart.find_elements("css selector", "svg.main-svg")
        first = driver.execute_script(
            "const d = document.querySelector('div.js-plotly-plot').data;"
            "return d.map(t => [t.name, t.x.length]);"
        )
        assert first == [["click rate", 3], ["accept rate", 3], ["conversion rate", 3]]
        assert_offline(driver)


@pytest.fixture
def project(log_path, tmp_path, monkeypatch) -> Path:
    """Settings naming the event log and a catalogue folder; run from another folder."""
    for name in list(os.environ):
        if name.startswith(("RECSYS_", "MLFLOW_")):
            monkeypatch.delenv(name)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "offers.yaml").write_text(yaml.safe_dump(list(OFFERS)))
    (catalog / "touchpoints.yaml").write_text(yaml.safe_dump(list(TOUCHPOINTS)))
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{log_path}")
    monkeypatch.setenv("RECSYS_SERVING__CATALOG_SOURCE", str(catalog))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def test_the_command_writes_html_and_csv(project):
    out = project / "reports"
    result = _run(
        "report", "offers", "--since", T0.date().isoformat(), "--until", UNTIL.isoformat(),
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "7 impressions, 3 clicks, 4 accepts (57.14%), revenue 105.00" in result.stdout
    assert (out / "offers.html").is_file() and (out / "offers.csv").is_file()
    with (out / "offers.csv").open(newline="") as f:
        total = next(csv.DictReader(f))
    assert (total["dimension"], total["impressions"], total["revenue"]) == ("all", "7", "105.0")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--since", "last week"), "`--since` must be an ISO 8601 time"),
        (("--until", "2026-02-30"), "`--until` must be an ISO 8601 time"),
        (("--since", "2026-06-02", "--until", "2026-06-01"), "`until` must be a time after"),
    ],
)
def test_a_bad_window_is_one_line_naming_the_option(project, args, needle):
    result = _run("report", "offers", "--out", str(project / "reports"), *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output
