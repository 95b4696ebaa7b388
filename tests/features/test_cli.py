"""``recsys features ...`` end to end on a small warehouse file."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from tests.features.conftest import T0, Warehouse, build_story

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = tmp_path / "warehouse.duckdb"
    w = build_story(Warehouse(str(db)))
    w.con.close()
    monkeypatch.setenv("RECSYS_ONLINE_SQLITE_PATH", str(tmp_path / "online.sqlite"))
    monkeypatch.setenv("RECSYS_ONLINE_STORE", "sqlite")
    return tmp_path, db


def test_build_materialize_get(env):
    tmp_path, db = env
    out = tmp_path / "cf.parquet"
    result = runner.invoke(
        app, ["features", "build", "--db", str(db), "--as-of", T0.isoformat(), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "3 customers" in result.output
    assert list(pd.read_parquet(out).customer_id) == ["c1", "c2", "c3"]

    result = runner.invoke(
        app, ["features", "materialize", "--db", str(db), "--as-of", T0.isoformat()]
    )
    assert result.exit_code == 0, result.output
    assert "3 vectors written" in result.output

    row = json.loads(runner.invoke(app, ["features", "get", "c1"]).stdout)
    assert row["purch_amount_30d"] == 50.0 and row["as_of"] == T0.isoformat()
    assert row["customer_id"] == "c1" and row["cold_start"] is False
    assert row["stats"]["category"] == {"bags": [30.0, 1.0, 1.0], "shoes": [50.0, 1.0, 1.0]}
    unknown_result = runner.invoke(app, ["features", "get", "nobody"])
    assert "'nobody' is not in the online store" in unknown_result.stderr
    unknown = json.loads(unknown_result.stdout)
    assert unknown["as_of"] is None and unknown["cold_start"] is True
    assert unknown["journey_stage"] == "awareness"


def test_describe_lists_every_feature_with_its_source(env):
    _, db = env
    result = runner.invoke(app, ["features", "describe", "--json", "--db", str(db)])
    assert result.exit_code == 0, result.output
    described = {f["name"]: f for f in json.loads(result.output)["features"]}
    assert described["purch_count_30d"]["source"] == "transactions"
    assert described["x_offer_response_rate"]["group"] == "cross"
    assert described["attr_region"]["source"] == "customers"


def test_bad_as_of_and_missing_warehouse_are_refused(env, tmp_path):
    _, db = env
    result = runner.invoke(app, ["features", "build", "--db", str(db), "--as-of", "yesterday"])
    assert result.exit_code != 0
    assert "--as-of" in result.output
    assert "must be an ISO 8601 timestamp, got 'yesterday'" in result.output
    result = runner.invoke(app, ["features", "build", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 1
    assert f"no warehouse at {tmp_path / 'none.duckdb'}" in result.output


def test_warehouse_connections_take_the_memory_limit_setting(env, monkeypatch):
    from pydantic import ValidationError

    from recsys.cli.features import _open_warehouse

    _, db = env
    monkeypatch.setenv("RECSYS_DUCKDB_MEMORY_LIMIT", "512MB")
    con = _open_warehouse(db)
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "488.2 MiB"
    con.close()
    monkeypatch.setenv("RECSYS_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(ValidationError, match="duckdb_memory_limit") as refused:
        _open_warehouse(db)
    assert "'lots'" in str(refused.value)
