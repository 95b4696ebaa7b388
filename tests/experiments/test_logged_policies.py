"""Two logged policies compared on the Open Bandit Dataset slice (tests/data/obd_slice)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from experiments.logged_policies import (
    compare_logged_policies,
    read_rounds,
)
from experiments.proportions import Comparison, Rate
from recsys.cli import app
from recsys.errors import ConfigError, NotFoundError
from recsys.loading import load_directory
from recsys.obd import import_obd
from recsys.warehouse import connect

SLICE = Path(__file__).resolve().parents[1] / "data" / "obd_slice"


def _source(policy: str) -> pd.DataFrame:
    return pd.read_csv(SLICE / policy / "all" / "all.csv", index_col=0)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("obd")
    import_obd(SLICE, root / "tables")
    path = root / "warehouse.duckdb"
    con = connect(path)
    load_directory(root / "tables", con)
    con.close()
    return path


@pytest.fixture(scope="module")
def comparison(warehouse):
    con = connect(warehouse, read_only=True)
    rounds = read_rounds(con, ("bts", "random"))
    con.close()
    return compare_logged_policies(rounds, "bts", "random", bootstrap_samples=100, seed=1)


def test_each_policy_has_its_rounds_clicks_and_a_wilson_interval(comparison):
    (tp,) = comparison.touchpoints
    assert tp.touchpoint_id == "zozotown_all"
    for rate, policy in ((tp.policy, "bts"), (tp.baseline, "random")):
        source = _source(policy)
        n, k = len(source), int(source["click"].sum())
        assert (rate.rounds, rate.positives) == (n, k)
        # Wilson score interval by hand.
        z, p = 1.959963984540054, k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert (rate.lower, rate.upper) == pytest.approx((centre - half, centre + half))
    assert tp.comparison.difference == pytest.approx(tp.policy.value - tp.baseline.value)
    assert tp.comparison.lift == pytest.approx(tp.policy.value / tp.baseline.value - 1)
    assert (
        tp.comparison.difference_lower < tp.comparison.difference < tp.comparison.difference_upper
    )
    assert 0 < tp.comparison.p_value <= 1


def test_bts_on_the_random_log_equals_a_hand_computed_ips_with_its_diagnostics(comparison):
    (tp,) = comparison.touchpoints
    bts_on_random = next(o for o in tp.off_policy if o.target == "bts")
    assert bts_on_random.log_of == "random"
    bts, random_log = _source("bts"), _source("random")
    shares = bts.groupby(["position", "item_id"]).size()
    shares = shares / shares.groupby(level="position").transform("sum")
    keys = pd.MultiIndex.from_arrays([random_log["position"], random_log["item_id"]])
    weight = shares.reindex(keys).fillna(0).to_numpy() / random_log["propensity_score"].to_numpy()
    click = random_log["click"].to_numpy()
    assert bts_on_random.ips.value == pytest.approx(np.mean(weight * click))
    assert bts_on_random.snips.value == pytest.approx(np.sum(weight * click) / np.sum(weight))
    assert bts_on_random.ips.lower <= bts_on_random.ips.value <= bts_on_random.ips.upper
    assert bts_on_random.max_weight == pytest.approx(weight.max())
    assert bts_on_random.effective_sample_size == pytest.approx(
        weight.sum() ** 2 / (weight**2).sum()
    )
    assert bts_on_random.matched == int((weight > 0).sum())
    assert bts_on_random.positives == int(((weight > 0) & (click == 1)).sum())
    assert bts_on_random.observed == pytest.approx(tp.policy.value)
    # And the other way round: random's value on the bts log.
    random_on_bts = next(o for o in tp.off_policy if o.target == "random")
    assert (random_on_bts.log_of, random_on_bts.rounds) == ("bts", len(bts))


def test_an_outcome_after_the_attribution_window_does_not_count(warehouse, tmp_path):
    shutil.copy(warehouse, tmp_path / "w.duckdb")
    con = connect(tmp_path / "w.duckdb")
    decision_id, offer_id = con.execute(
        "SELECT decision_id, offer_id FROM decisions d WHERE policy = 'random' AND NOT EXISTS "
        "(SELECT 1 FROM outcomes o WHERE o.decision_id = d.decision_id) LIMIT 1"
    ).fetchone()
    con.execute(
        "INSERT INTO outcomes SELECT decision_id, offer_id, ts + INTERVAL 8 DAY, 'click', NULL "
        "FROM decisions WHERE decision_id = ?",
        [decision_id],
    )
    clicks = int(_source("random")["click"].sum())
    within_7 = read_rounds(con, ("random", "bts"))
    within_9 = read_rounds(con, ("random", "bts"), attribution_days=9)
    con.close()
    assert within_7[within_7["policy"] == "random"]["reward"].sum() == clicks
    assert within_9[within_9["policy"] == "random"]["reward"].sum() == clicks + 1
    assert offer_id.startswith("all-")


def test_a_log_without_propensities_gets_rates_but_no_estimate_on_it(comparison, warehouse):
    con = connect(warehouse, read_only=True)
    rounds = read_rounds(con, ("bts", "random"))
    con.close()
    rounds.loc[rounds["policy"] == "random", "propensity"] = np.nan
    result = compare_logged_policies(rounds, "bts", "random", bootstrap_samples=50)
    (tp,) = result.touchpoints
    assert [(o.target, o.log_of) for o in tp.off_policy] == [("random", "bts")]
    assert "random logged no propensity" in tp.note
    assert tp.policy == comparison.touchpoints[0].policy


@pytest.mark.parametrize(
    ("policies", "error", "message"),
    [
        (("bts", "greedy"), NotFoundError, r"'greedy' logged no decision.*bts \(165 rows\)"),
        (("bts", "bts"), ConfigError, r"`baseline` must differ from `policy`"),
    ],
)
def test_unknown_or_equal_policies_are_refused(warehouse, policies, error, message):
    con = connect(warehouse, read_only=True)
    try:
        with pytest.raises(error, match=message):
            compare_logged_policies(read_rounds(con, policies), *policies)
    finally:
        con.close()


def test_no_positive_in_the_baseline_leaves_the_lift_undefined_but_its_interval_finite():
    result = Comparison.of(Rate.of(3, 100), Rate.of(0, 100))
    assert math.isnan(result.lift)
    assert np.isfinite([result.lift_lower, result.lift_upper]).all()
    assert result.difference_lower < 0.03 < result.difference_upper


def test_the_command_prints_the_table_and_json(warehouse):
    runner = CliRunner()
    table = runner.invoke(app, ["evaluate-logs", "bts", "random", "--db", str(warehouse)])
    assert table.exit_code == 0, table.output
    assert "zozotown_all  bts     random" in table.output  # off-policy row: bts on random's log
    assert "bts - random [95%]" in table.output
    as_json = runner.invoke(
        app, ["evaluate-logs", "bts", "random", "--db", str(warehouse), "--json"]
    )
    data = json.loads(as_json.stdout)
    (tp,) = data["touchpoints"]
    assert tp["policy"]["rounds"] == len(_source("bts"))
    assert {o["target"] for o in tp["off_policy"]} == {"bts", "random"}
    refused = runner.invoke(app, ["evaluate-logs", "bts", "greedy", "--db", str(warehouse)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: policy 'greedy' logged no decision")
