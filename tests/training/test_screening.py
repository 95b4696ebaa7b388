"""What-if screening: arms valued on logged decisions through the decision pipeline."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys.arbitration import EpsilonGreedy
from recsys.catalog import Catalog
from recsys.decision import ModelInfo
from recsys.errors import DataError
from tests.training.factories import OFFER_VALUE, OFFERS, catalog, frame_encoder, make_world
from training.config import build_config
from training.pipeline import TrainingInputs, train_and_evaluate
from training.screening import Recipe, screen

CONFIG = {
    "model": {"num_boost_round": 60, "early_stopping_rounds": 10, "params": {"num_threads": 1}},
    "baselines": ["random"],
    "evaluation": {
        "bootstrap_samples": 50,
        "served_policy": "epsilon_greedy",
        "served_epsilon": 0.0,
    },
}


@pytest.fixture(scope="module")
def trained():
    world = make_world(decisions=3000, seed=3)
    offers = pd.DataFrame({"offer_id": list(OFFERS), "value": OFFER_VALUE})
    inputs = TrainingInputs(
        world.frame, frame_encoder, world.candidates, world.truth, offers, replay=world.replay
    )
    config = build_config(CONFIG)
    return inputs, config, train_and_evaluate(inputs, config)


def recipe(result, name, epsilon=0.0, catalog=None):
    info = ModelInfo("lightgbm", "1", result.encoder.spec_version)
    scorer = result.model.flavour_scorer()
    return Recipe(name, info, scorer, result.encoder, EpsilonGreedy(epsilon), catalog)


def without(offer_ids: set[str]) -> Catalog:
    """The factories' catalogue with ``offer_ids`` excluded (an arm's lever)."""
    base = catalog()
    kept = [o for o in base.offers.values() if o.offer_id not in offer_ids]
    return Catalog(kept, list(base.touchpoints.values()))


def test_each_arm_is_valued_on_the_same_rounds_with_diagnostics_and_truth(trained):
    inputs, config, result = trained
    best = result.policy.policies["served"]
    screening = screen(
        inputs,
        [recipe(result, "greedy"), recipe(result, "explore", epsilon=0.5)],
        config,
        since=result.split.test_start,
    )
    policies = screening.evaluation.policies
    assert set(policies) == {"greedy", "explore"}
    # the greedy recipe is what training's served policy (epsilon 0) is, on the test rounds
    assert policies["greedy"].true_value == pytest.approx(best.true_value)
    assert policies["explore"].true_value < policies["greedy"].true_value
    table = screening.table()
    snips = table[table["estimator"] == "snips"].set_index("arm")
    assert (snips["matched_rounds"] > 0).all() and (snips["effective_sample_size"] > 0).all()
    assert (
        snips.loc["greedy", "lower"] <= snips.loc["greedy", "value"] <= snips.loc["greedy", "upper"]
    )
    assert screening.rounds > 100 and screening.start >= result.split.test_start.floor("us")


def test_a_lever_that_excludes_the_best_offers_screens_lower(trained):
    inputs, config, result = trained
    chosen = result.served.target
    frame = pd.DataFrame({"offer_id": chosen.offer_id, "prob": chosen.prob})
    top = frame[frame["prob"] > 0]["offer_id"].value_counts().index[:2]
    screening = screen(
        inputs,
        [recipe(result, "champion"), recipe(result, "no_top", catalog=without(set(top)))],
        config,
        since=result.split.test_start,
    )
    policies = screening.evaluation.policies
    # the recipes rank by expected value (P x value x weight): judged on revenue
    assert policies["no_top"].true.revenue < policies["champion"].true.revenue
    assert policies["no_top"].chosen_offers <= len(OFFERS) - len(top)


def test_no_arm_or_no_round_is_refused_naming_why(trained):
    inputs, config, result = trained
    with pytest.raises(DataError, match="`recipes`"):
        screen(inputs, [], config)
    later = pd.Timestamp(inputs.frame["ts"].max()).floor("s") + pd.Timedelta(days=1)
    with pytest.raises(DataError, match="no logged decision"):
        screen(inputs, [recipe(result, "a")], config, since=later.to_pydatetime())
