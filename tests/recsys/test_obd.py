"""The Open Bandit Dataset import round-trips a small slice into the data contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import ContractError
from recsys.loading import load_directory
from recsys.obd import import_obd
from recsys.warehouse import connect

SLICE = Path(__file__).resolve().parents[1] / "data" / "obd_slice"
TOUCHPOINT = "zozotown_all"


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
            got["offer_id"].to_numpy() == ("all-" + source["item_id"].astype(str)).to_numpy()
        ).all()
        assert (got["position"].to_numpy() == source["position"].to_numpy()).all()
        assert got["propensity"].to_numpy() == pytest.approx(source["propensity_score"].to_numpy())
        assert (got["policy"] == policy).all()
        assert got["customer_id"].isna().all()
        assert (got["touchpoint_id"] == TOUCHPOINT).all()
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


def test_offers_come_from_the_campaigns_item_context(warehouse):
    summary, con = warehouse
    offers = con.execute("SELECT offer_id, offer_type, value, touchpoints FROM offers").fetchdf()
    assert len(offers) == 80 == summary.offers
    assert set(offers["offer_id"]) == {f"all-{i}" for i in range(80)}
    assert all(list(t) == [TOUCHPOINT] for t in offers["touchpoints"])
    touchpoints = con.execute("SELECT touchpoint_id, channel FROM touchpoints").fetchall()
    assert touchpoints == [(TOUCHPOINT, "web")]


def _split_campaigns(root: Path) -> Path:
    """A dataset root with campaigns ``men`` (items 0-33) and ``women`` (items 34-79 of the
    slice, renumbered 0-45), so both campaigns have an item 0..33 that is not the same item."""
    for policy in ("random", "bts"):
        log = _source(policy)
        items = pd.read_csv(SLICE / policy / "all" / "item_context.csv", index_col=0)
        for campaign, keep, shift in (
            ("men", lambda i: i < 34, 0),
            ("women", lambda i: i >= 34, 34),
        ):
            folder = root / policy / campaign
            folder.mkdir(parents=True)
            rows = log[keep(log["item_id"])].assign(item_id=lambda f, s=shift: f["item_id"] - s)
            rows.to_csv(folder / f"{campaign}.csv")
            described = items[keep(items["item_id"])].assign(
                item_id=lambda f, s=shift: f["item_id"] - s
            )
            described.reset_index(drop=True).to_csv(folder / "item_context.csv")
    return root


def test_one_campaign_folder_imports_that_policy_alone(tmp_path):
    summary = import_obd(SLICE / "bts" / "all", tmp_path / "out")
    decisions = pd.read_parquet(tmp_path / "out" / "decisions.parquet")
    assert summary.campaign == "all"
    assert set(decisions["policy"]) == {"bts"} and len(decisions) == len(_source("bts"))


def test_the_chosen_campaign_keeps_its_own_catalogue_next_to_another(tmp_path):
    root = _split_campaigns(tmp_path / "obd")
    with pytest.raises(ContractError, match=r"campaigns men, women.*choose one with --campaign"):
        import_obd(root, tmp_path / "none")
    con = connect(":memory:")
    for campaign in ("men", "women"):
        import_obd(root, tmp_path / campaign, campaign=campaign)
        load_directory(tmp_path / campaign, con)
    offers = con.execute("SELECT offer_id, item_feature_0 FROM offers").fetchdf()
    assert len(offers) == 80
    assert set(offers["offer_id"]) == {f"men-{i}" for i in range(34)} | {
        f"women-{i}" for i in range(46)
    }
    # women-0 is the slice's item 34, not men's item 0.
    items = pd.read_csv(SLICE / "random" / "all" / "item_context.csv", index_col=0)
    feature = offers.set_index("offer_id")["item_feature_0"]
    assert feature["women-0"] == pytest.approx(items.loc[34, "item_feature_0"])
    assert feature["men-0"] == pytest.approx(items.loc[0, "item_feature_0"])
    shown = con.execute(
        "SELECT touchpoint_id, split_part(offer_id, '-', 1) AS campaign, count(*) FROM decisions "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    source = {p: _source(p) for p in ("random", "bts")}
    men = sum(int((f["item_id"] < 34).sum()) for f in source.values())
    women = sum(int((f["item_id"] >= 34).sum()) for f in source.values())
    assert shown == [("zozotown_men", "men", men), ("zozotown_women", "women", women)]
    con.close()


@pytest.mark.parametrize(
    ("layout", "campaign", "message"),
    [
        ("empty", None, r"expected the Open Bandit Dataset root .* found an empty folder"),
        ("csv_file", None, r"one campaign folder such as random/men .* found a file"),
        ("other_files", None, r"random/ and/or bts/.*found notes\.txt, x/"),
        ("outside_policy", None, r"inside random/ or bts/.*found it inside data/"),
        ("root", "women", r"expected campaign 'women', found only all"),
        ("root", "kids", r"`campaign` must be one of all, men, women, got 'kids'"),
        ("unknown_campaign", None, r"expected campaigns all, men, women, found kids"),
        ("no_item_context", None, r"expected item_context\.csv next to all\.csv"),
    ],
)
def test_a_folder_of_another_layout_is_refused_naming_expected_and_found(
    tmp_path, layout, campaign, message
):
    path = tmp_path / "obd"
    if layout == "root":
        path = SLICE
    elif layout == "empty":
        path.mkdir()
    elif layout == "csv_file":
        path = SLICE / "random" / "all" / "all.csv"
    elif layout == "other_files":
        (path / "x").mkdir(parents=True)
        (path / "notes.txt").write_text("")
    elif layout == "outside_policy":
        path = tmp_path / "data" / "all"
        shutil.copytree(SLICE / "random" / "all", path)
    elif layout == "unknown_campaign":
        (path / "random" / "kids").mkdir(parents=True)
        shutil.copy(SLICE / "random" / "all" / "all.csv", path / "random" / "kids" / "kids.csv")
    elif layout == "no_item_context":
        (path / "random" / "all").mkdir(parents=True)
        shutil.copy(SLICE / "random" / "all" / "all.csv", path / "random" / "all" / "all.csv")
    with pytest.raises(ContractError, match=message):
        import_obd(path, tmp_path / "out", campaign=campaign)
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_another_layout_in_one_line_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from recsys.cli import app

    result = CliRunner().invoke(app, ["data", "import-obd", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert "expected the Open Bandit Dataset root" in result.stderr
    assert "Traceback" not in result.output


def test_a_propensity_outside_0_1_is_refused_with_row_and_column(tmp_path):
    bad = tmp_path / "obd"
    shutil.copytree(SLICE / "random", bad / "random")
    log = bad / "random" / "all" / "all.csv"
    frame = pd.read_csv(log, index_col=0)
    frame.iloc[2, frame.columns.get_loc("propensity_score")] = 0.0
    frame.to_csv(log)
    with pytest.raises(ContractError, match=r"row 3, column 'propensity_score'.*got 0\.0"):
        import_obd(bad, tmp_path / "out")
