"""The demo's customers answering live: the generator's hidden model for new decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from recsys.datagen.customers import DemoCustomers
from recsys.datagen.generate import generate_dataset
from recsys.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("live") / "demo"
    generate_dataset(customers=400, days=15, seed=5, out=out, progress=False)
    return out


def test_the_true_acceptance_of_a_logged_decision_is_the_generators(dataset):
    """A customer's first decision, before any complaint or fatigue, has exactly the truth's
    p_accept for every candidate offer."""
    customers = DemoCustomers.from_dataset(dataset)
    decisions = pd.read_parquet(dataset / "decisions.parquet").sort_values("ts")
    complaints = pd.read_parquet(dataset / "interactions.parquet").query(
        "event_type == 'complaint'"
    )
    first = decisions.drop_duplicates("customer_id")
    first = first[~first["customer_id"].isin(complaints["customer_id"])]
    truth = pd.read_parquet(dataset / "ground_truth" / "truth.parquet").merge(
        first[["decision_id", "customer_id", "touchpoint_id", "context"]], on="decision_id"
    )
    assert len(truth) > 1000
    pages = [json.loads(c).get("page_category") for c in truth["context"]]
    p = customers.p_accept(
        list(truth["customer_id"]), list(truth["offer_id"]), list(truth["touchpoint_id"]), pages
    )
    np.testing.assert_allclose(p, truth["p_accept"].to_numpy(), rtol=1e-5)


def test_responses_follow_the_true_acceptance_and_tire_the_customer(dataset):
    customers = DemoCustomers.from_dataset(dataset)
    ids = customers.customer_ids
    n = 2 * len(ids)
    rng = np.random.default_rng(0)
    offers = [o.offer_id for o in customers.catalog.offers]
    appeal = [
        customers.p_accept(ids, [o] * len(ids), ["web_home"] * len(ids)).mean() for o in offers
    ]
    offer = offers[int(np.argmax(appeal))]
    shown = pd.DataFrame(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            "customer_id": [ids[i % len(ids)] for i in range(n)],
            "offer_id": offer,
            "touchpoint_id": "web_home",
            "position": 1,
            "ts": datetime(2026, 3, 1, 12, tzinfo=UTC),
        }
    )
    before = customers.p_accept(list(shown["customer_id"]), [offer] * n, ["web_home"] * n)
    events = customers.respond(shown, rng)
    accepts = events[events["type"] == "accept"]
    expected, sd = before.sum(), np.sqrt((before * (1 - before)).sum())
    assert abs(len(accepts) - expected) < 4 * sd
    assert set(events["type"]) <= {"click", "accept", "convert", "dismiss"}
    assert (events["ts"] > shown["ts"].iloc[0]).all()
    converted = events[events["type"] == "convert"]
    assert (
        converted["revenue"].notna().all()
        and events.loc[events["type"] != "convert", "revenue"].isna().all()
    )
    after = customers.p_accept(list(shown["customer_id"]), [offer] * n, ["web_home"] * n)
    assert (after < before).all()  # shown twice each: fatigue
    customers.end_day()
    rested = customers.p_accept(list(shown["customer_id"]), [offer] * n, ["web_home"] * n)
    assert (rested > after).all()


def test_visits_are_realtime_touchpoints_of_the_day_in_time_order(dataset):
    customers = DemoCustomers.from_dataset(dataset)
    day = datetime(2026, 4, 2, tzinfo=UTC)
    visits = customers.visits_on(day, np.random.default_rng(1))
    assert len(visits) > 10
    realtime = {t.touchpoint_id for t in customers.catalog.touchpoints if t.mode == "realtime"}
    assert {v.touchpoint_id for v in visits} <= realtime
    assert all(day <= v.ts < day.replace(day=3) for v in visits)
    assert [v.ts for v in visits] == sorted(v.ts for v in visits)


def test_an_unknown_customer_or_offer_is_named(dataset):
    customers = DemoCustomers.from_dataset(dataset)
    with pytest.raises(DataError, match=r"`customer_id`.*C9999999"):
        customers.p_accept(["C9999999"], ["OF001"], ["web_home"])
    with pytest.raises(DataError, match=r"`offer_id`.*NOPE"):
        customers.p_accept([customers.customer_ids[0]], ["NOPE"], ["web_home"])


def test_a_folder_without_ground_truth_is_refused(tmp_path):
    from recsys.errors import NotFoundError

    with pytest.raises(NotFoundError, match=r"params\.json"):
        DemoCustomers.from_dataset(tmp_path)
