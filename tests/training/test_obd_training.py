"""Training on the Open Bandit Dataset layout, and the published sanity figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.loading import load_directory
from recsys.obd import import_obd
from recsys.warehouse import connect
from training.config import build_config
from training.ope import IPS, Rounds
from training.pipeline import train_and_evaluate
from training.warehouse_data import build_inputs

SLICE = Path(__file__).resolve().parents[1] / "data" / "obd_slice"
FULL_OBD = Path("/work/shared/data/obd")


def test_training_on_an_obd_slice_reports_value_relative_to_the_random_policy(tmp_path):
    import_obd(SLICE, tmp_path / "obd")
    con = connect(tmp_path / "warehouse.duckdb")
    load_directory(tmp_path / "obd", con)
    config = build_config(
        {
            "data": {"positive_outcomes": ["click"], "min_examples": 100, "min_positives": 5},
            "split": {"valid_fraction": 0.2, "test_fraction": 0.3},
            "model": {"num_boost_round": 20, "params": {"min_data_in_leaf": 5, "num_threads": 1}},
            "evaluation": {"logging_policy": "random", "bootstrap_samples": 50},
        }
    )
    try:
        result = train_and_evaluate(
            build_inputs(con, config, tmp_path / "warehouse.duckdb"), config
        )
    finally:
        con.close()
    assert result.policy is not None
    assert result.policy.oracle_value is None  # real data: no ground truth
    test_random = result.test.meta[(result.test.meta["policy"] == "random")]
    assert result.policy.rounds == len(test_random)
    assert result.policy.logging.value == pytest.approx(
        result.test.y[(result.test.meta["policy"] == "random").to_numpy()].mean()
    )
    for key in (
        "ips_value",
        "ips_value.lower",
        "ips_value.upper",
        "dr_value",
        "dr_value.lower",
        "dr_value.upper",
        "logging_value",
        "served.ips_value",  # the served policy, replayed on anonymous (cold-start) rounds
    ):
        assert np.isfinite(result.metrics[key]), key
    # SNIPS is undefined (NaN) when the greedy policy never agrees with the log on the slice.
    assert "snips_value" in result.metrics
    # Every one of the 80 items is a candidate of every round (anonymous, cold-start vectors).
    assert result.metrics["auc"] >= 0 and result.sizes["test"] > 0


@pytest.mark.skipif(not FULL_OBD.is_dir(), reason="the OBD sample is not on this machine")
def test_ips_of_bernoulli_ts_on_random_traffic_matches_the_published_ratio():
    """Saito et al. report BTS at about 1.2x the random policy by IPW on this sample.

    BTS's action distribution per position is estimated from the bts log (share of each item
    at each position); IPS on the uniform-random log then gives its value.
    """
    random_log = pd.read_csv(FULL_OBD / "random" / "all" / "all.csv", index_col=0)
    bts_log = pd.read_csv(FULL_OBD / "bts" / "all" / "all.csv", index_col=0)
    counts = bts_log.groupby(["position", "item_id"]).size()
    pi_bts = counts / counts.groupby(level="position").transform("sum")
    keys = pd.MultiIndex.from_arrays([random_log["position"], random_log["item_id"]])
    target = pi_bts.reindex(keys).fillna(0.0).to_numpy()
    reward = random_log["click"].to_numpy(dtype=float)
    zeros = np.zeros(len(reward))
    rounds = Rounds(reward, random_log["propensity_score"].to_numpy(), target, zeros, zeros)
    estimate = IPS().estimate(rounds, bootstrap_samples=300, seed=0)
    ratio = estimate.value / reward.mean()
    assert 1.05 < ratio < 1.5
    assert estimate.lower / reward.mean() < 1.2 < estimate.upper / reward.mean()
