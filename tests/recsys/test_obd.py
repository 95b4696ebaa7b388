"""The Open Bandit Dataset import round-trips a small slice into the data contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import ContractError
from recsys.loading import load_directory
from recsys.obd import TOUCHPOINT_ID, import_obd
from recsys.warehouse import connect

SLICE = Path(__file__).resolve().parents[1] / "data" / "obd_slice"


def _source(policy: str) -> pd.DataFrame:
    return pd.read_csv(SLICE / policy / "all" / "all.csv", index_col=0)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    out = tmp_path_factory.mktemp("obd")
    summary = import_obd(SLICE, out)
    con = connect(":memory:")
    load_directory(out, con)
    yield summary, con
    con.close()


def test_every_logged_row_becomes_a_decision_with_its_position_and_propensity(warehouse):
    summary, con = warehouse
    decisions = con.execute("SELECT * FROM decisions").fetchdf().set_index("decision_id")
    for policy in ("random", "bts"):
        source = _source(policy)
        ids = [f"{policy}-all-{i}" for i in source.index]
        got = decisions.loc[ids]
        assert (
            got["offer_id"].to_numpy() == ("item_" + source["item_id"].astype(str)).to_numpy()
        ).all()
        assert (got["position"].to_numpy() == source["position"].to_numpy()).all()
        assert got["propensity"].to_numpy() == pytest.approx(source["propensity_score"].to_numpy())
        assert (got["policy"] == policy).all()
        assert got["customer_id"].isna().all()
        assert (got["touchpoint_id"] == TOUCHPOINT_ID).all()
        expected_ts = pd.to_datetime(source["timestamp"], utc=True).dt.tz_localize(None)
        assert (pd.to_datetime(got["ts"]).to_numpy() == expected_ts.to_numpy()).all()
    assert summary.decisions == len(decisions) == len(_source("random")) + len(_source("bts"))


def test_context_holds_user_features_and_nonzero_affinities(warehouse):
    _, con = warehouse
    source = _source("random")
    row_index = source.index[0]
    (text,) = con.execute(
        "SELECT context FROM decisions WHERE decision_id = ?", [f"random-all-{row_index}"]
    ).fetchone()
    context = json.loads(text)
    for i in range(4):
        assert context[f"user_feature_{i}"] == source.loc[row_index, f"user_feature_{i}"]
    affinity = source.loc[row_index].filter(like="user-item_affinity_")
    nonzero = {
        f"user_item_affinity_{k.rsplit('_', 1)[1]}": float(v) for k, v in affinity.items() if v != 0
    }
    assert {k: v for k, v in context.items() if k.startswith("user_item_")} == nonzero


def test_clicks_become_click_outcomes_after_the_decision(warehouse):
    summary, con = warehouse
    outcomes = con.execute(
        "SELECT o.decision_id, o.outcome, o.ts > d.ts AS after FROM outcomes o "
        "JOIN decisions d USING (decision_id, offer_id)"
    ).fetchdf()
    clicks = sum(int(_source(p)["click"].sum()) for p in ("random", "bts"))
    assert len(outcomes) == clicks == summary.outcomes
    assert (outcomes["outcome"] == "click").all() and outcomes["after"].all()


def test_offers_come_from_the_item_context(warehouse):
    _, con = warehouse
    offers = con.execute("SELECT offer_id, offer_type, value FROM offers").fetchdf()
    assert len(offers) == 80
    assert set(offers["offer_id"]) == {f"item_{i}" for i in range(80)}
    touchpoints = con.execute("SELECT touchpoint_id, channel FROM touchpoints").fetchall()
    assert touchpoints == [(TOUCHPOINT_ID, "web")]


def test_a_folder_without_the_obd_layout_is_refused(tmp_path):
    with pytest.raises(ContractError, match=r"random/<campaign>/<campaign>\.csv"):
        import_obd(tmp_path, tmp_path / "out")


def test_a_propensity_outside_0_1_is_refused_with_row_and_column(tmp_path):
    bad = tmp_path / "obd"
    shutil.copytree(SLICE / "random", bad / "random")
    log = bad / "random" / "all" / "all.csv"
    frame = pd.read_csv(log, index_col=0)
    frame.iloc[2, frame.columns.get_loc("propensity_score")] = 0.0
    frame.to_csv(log)
    with pytest.raises(ContractError, match=r"row 3, column 'propensity_score'.*got 0\.0"):
        import_obd(bad, tmp_path / "out")
