"""``recsys experiments ...`` on a real store and catalogue files."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from experiments.store import open_experiment_store
from recsys.cli import app
from tests.experiments.factories import definition
from tests.recsys.factories import OFFERS, TOUCHPOINTS


def test_create_start_stop_archive_from_the_command_line(tmp_path, monkeypatch):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "offers.yaml").write_text(yaml.safe_dump(OFFERS))
    (catalog / "touchpoints.yaml").write_text(yaml.safe_dump(TOUCHPOINTS))
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    monkeypatch.setenv("RECSYS_SERVING__CATALOG_SOURCE", str(catalog))
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", url)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["experiments", *args])

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(definition(touchpoints=["kiosk"])))
    result = run("create", str(bad))
    assert result.exit_code == 1
    assert "`touchpoints[0]`: expected a touchpoint of the catalogue, got 'kiosk'" in result.output
    good = tmp_path / "exp.yaml"
    good.write_text(yaml.safe_dump(definition(traffic=0.25)))
    assert run("create", str(good)).exit_code == 0
    result = run("start", "exp-home")
    assert result.exit_code == 0, result.output
    assert "exp-home: running (layer buckets 0-2500)" in result.output
    assert "exp-home" in run("list").output
    shown = json.loads(run("show", "exp-home").output)
    assert shown["status"] == "running"
    assert [h["action"] for h in shown["history"]] == ["create", "start"]
    result = run("archive", "exp-home")
    assert result.exit_code == 1
    assert "must be draft or stopped to archive, got running" in result.output
    assert run("stop", "exp-home").exit_code == 0
    assert run("archive", "exp-home").exit_code == 0
    store = open_experiment_store(url)
    try:
        assert store.get("exp-home").status == "archived"
    finally:
        store.close()
