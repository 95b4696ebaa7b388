"""The demo data generator: determinism, the data contract, and the ground truth it promises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from recsys.contract import (
    ELIGIBILITY_OPS,
    OFFER_TYPES,
    STAGES,
    TABLES,
    ColumnType,
)
from recsys.datagen import generate_dataset
from recsys.datagen.catalog import ELIGIBILITY_FEATURES
from recsys.datagen.policy import POLICY_NAME, first_position_probabilities
from recsys.datagen.truth import load_truth, oracle_choice, oracle_value, policy_value
from recsys.errors import DataError, NotFoundError

SEED = 11
EVENT_FILES = ("customers", "transactions", "interactions", "decisions", "outcomes")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small but statistically useful dataset, generated once for the module."""
    out = tmp_path_factory.mktemp("demo")
    generate_dataset(customers=4000, days=60, seed=SEED, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def tables(demo) -> dict[str, pd.DataFrame]:
    frames = {name: pd.read_parquet(demo / f"{name}.parquet") for name in EVENT_FILES}
    frames["offers"] = pd.DataFrame(yaml.safe_load((demo / "offers.yaml").read_text()))
    frames["touchpoints"] = pd.DataFrame(yaml.safe_load((demo / "touchpoints.yaml").read_text()))
    return frames


@pytest.fixture(scope="module")
def shown(tables) -> pd.DataFrame:
    """Decision rows with accepted = an accept outcome exists."""
    out = tables["outcomes"]
    acc = out.loc[out["outcome"] == "accept", ["decision_id", "offer_id"]].assign(accepted=1)
    rows = tables["decisions"].merge(acc, on=["decision_id", "offer_id"], how="left")
    return rows.assign(accepted=rows["accepted"].fillna(0).astype(int))


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _two_proportion_z(a: pd.Series, b: pd.Series) -> float:
    pa_, pb = a.mean(), b.mean()
    pooled = (a.sum() + b.sum()) / (len(a) + len(b))
    return (pa_ - pb) / math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))


# ------------------------------------------------------------------ determinism and arguments


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_dataset(customers=300, days=10, seed=seed, out=tmp_path / name, progress=False)
    first, second, other = (_file_bytes(tmp_path / n) for n in "abc")
    assert first.keys() == second.keys()
    assert "ground_truth/truth.parquet" in first
    for name in first:
        assert first[name] == second[name], name
    assert first["decisions.parquet"] != other["decisions.parquet"]
    assert first["customers.parquet"] != other["customers.parquet"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": 0}, "`customers` must be >= 1, got 0"),
        ({"days": 0}, "`days` must be >= 1, got 0"),
        ({"file_format": "xlsx"}, "`file_format` must be one of .*got 'xlsx'"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(tmp_path, kwargs, message):
    args = {"customers": 10, "days": 2, "seed": 1, "out": tmp_path, "progress": False} | kwargs
    with pytest.raises(ValueError, match=message):
        generate_dataset(**args)


def test_summary_counts_match_the_files(tmp_path):
    summary = generate_dataset(customers=200, days=5, seed=1, out=tmp_path, progress=False)
    text = summary.format()
    decisions = pd.read_parquet(tmp_path / "decisions.parquet")
    assert summary.rows["decisions"] == len(decisions)
    assert f"{len(decisions):,}" in text
    assert "events/s" in text


def test_csv_format_holds_the_same_tables(tmp_path):
    generate_dataset(customers=150, days=5, seed=2, out=tmp_path / "p", progress=False)
    generate_dataset(
        customers=150, days=5, seed=2, out=tmp_path / "c", file_format="csv", progress=False
    )
    for name in EVENT_FILES:
        parquet = pd.read_parquet(tmp_path / "p" / f"{name}.parquet")
        csv = pd.read_csv(tmp_path / "c" / f"{name}.csv")
        assert list(csv.columns) == list(parquet.columns)
        assert len(csv) == len(parquet)
    assert (tmp_path / "c" / "ground_truth" / "truth.parquet").is_file()


# ------------------------------------------------------------------ the data contract


def test_catalogue_covers_the_business(tables):
    tps, offers = tables["touchpoints"], tables["offers"]
    assert len(tps) >= 12
    assert set(tps["stage"]) == set(STAGES)
    assert set(tps["mode"]) == {"realtime", "batch"}
    assert tps["slots"].between(1, 3).all()
    needs_consent = (tps["mode"] == "batch") | (tps["channel"] == "app")
    assert tps.loc[needs_consent, "consent_column"].notna().all()
    assert len(offers) >= 40
    assert set(offers["offer_type"]) == set(OFFER_TYPES)
    fallback = offers[offers["fallback"]]
    per_tp = fallback["touchpoints"].explode().value_counts()
    assert set(per_tp.index) == set(tps["touchpoint_id"]) and (per_tp == 1).all()
    assert offers["cap_per_customer"].notna().sum() >= 5
    assert offers["start_at"].notna().sum() >= 3
    rules = [r for rs in offers["eligibility"] for r in rs]
    assert {r["op"] for r in rules} == set(ELIGIBILITY_OPS)
    assert {r["feature"] for r in rules} <= set(ELIGIBILITY_FEATURES)


def test_every_table_follows_the_contract(tables):
    for name, frame in tables.items():
        spec = TABLES[name]
        assert set(spec.required_columns) <= set(frame.columns), name
        for col in spec.columns:
            if col.name not in frame.columns:
                continue
            values = frame[col.name]
            if not col.nullable:
                assert values.notna().all(), (name, col.name)
            present = values.dropna()
            if col.enum:
                assert set(present) <= set(col.enum), (name, col.name)
            if col.ge is not None:
                assert (present >= col.ge).all(), (name, col.name)
            if col.gt is not None:
                assert (present > col.gt).all(), (name, col.name)
            if col.le is not None:
                assert (present <= col.le).all(), (name, col.name)
            if col.type == ColumnType.TIMESTAMP and name not in ("offers",):
                assert pd.api.types.is_datetime64_dtype(values), (name, col.name)
                assert getattr(values.dtype, "tz", None) is None  # naive UTC
        if spec.key:
            assert not frame.duplicated(list(spec.key)).any(), name
        for ref in spec.references:
            target = tables[ref.target][list(ref.target_columns)].drop_duplicates()
            target.columns = list(ref.columns)
            missing = frame[list(ref.columns)].dropna().merge(target, how="left", indicator=True)
            assert (missing["_merge"] == "both").all(), (name, ref.target)
    assert tables["transactions"]["transaction_id"].is_unique
    assert tables["customers"]["customer_id"].str.fullmatch(r"C\d{7}").all()
    decisions = tables["decisions"]
    assert (decisions["policy"] == POLICY_NAME).all()
    contexts = decisions["context"].drop_duplicates().map(json.loads)
    assert all(isinstance(c, dict) for c in contexts)
    nps = tables["interactions"].query("event_type == 'nps_answer'")["value"]
    assert len(nps) > 0 and nps.between(0, 10).all()


def test_outcomes_follow_their_decision_within_days_and_some_after_a_week(tables):
    decisions = tables["decisions"][["decision_id", "offer_id", "ts"]]
    joined = tables["outcomes"].merge(
        decisions, on=["decision_id", "offer_id"], suffixes=("", "_d")
    )
    delay = joined["ts"] - joined["ts_d"]
    assert (delay > pd.Timedelta(0)).all()
    accepts = delay[joined["outcome"] == "accept"]
    late = (accepts > pd.Timedelta(days=7)).mean()
    assert 0 < late < 0.05
    assert (joined.loc[joined["outcome"] == "convert", "revenue"] > 0).all()


def test_generated_files_load_into_the_warehouse(demo):
    from recsys import warehouse
    from recsys.loading import load_directory

    con = warehouse.connect(":memory:")
    summary = load_directory(demo, con)
    loaded = {t.table: t.rows_new for t in summary.tables}
    assert loaded["decisions"] == len(pd.read_parquet(demo / "decisions.parquet"))
    assert con.execute("SELECT count(*) FROM outcomes").fetchone()[0] == loaded["outcomes"]


# ------------------------------------------------------------------ the logging policy


def test_position_one_propensity_is_the_policy_probability(tables, demo):
    truth = load_truth(demo)
    offers = tables["offers"].reset_index(names="catalogue_index")
    score = (offers["value"] * offers["weight"]).to_numpy()
    offer_index = dict(zip(offers["offer_id"], offers["catalogue_index"], strict=True))
    decision_codes, decision_ids = pd.factorize(truth["decision_id"])
    candidates = np.zeros((len(decision_ids), len(offers)), dtype=bool)
    candidates[decision_codes, truth["offer_id"].map(offer_index).to_numpy()] = True
    probs = first_position_probabilities(candidates, score, epsilon=0.3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs[candidates] > 0).all()

    first = tables["decisions"].query("position == 1")
    row = pd.Index(decision_ids).get_indexer(first["decision_id"])
    assert (row >= 0).all()
    expected = probs[row, first["offer_id"].map(offer_index).to_numpy()]
    np.testing.assert_allclose(first["propensity"].to_numpy(), expected)


def test_slates_show_distinct_candidates_in_positions_one_to_slots(tables, demo):
    decisions = tables["decisions"]
    assert not decisions.duplicated(["decision_id", "offer_id"]).any()
    slots = decisions.groupby("decision_id").agg(n=("position", "size"), top=("position", "max"))
    assert (slots["n"] == slots["top"]).all()
    truth = load_truth(demo)
    shown_pairs = decisions[["decision_id", "offer_id"]].merge(truth, how="left")
    assert shown_pairs["p_accept"].notna().all()  # every shown offer is a candidate


# ------------------------------------------------------------------ ground truth


def test_oracle_beats_the_logging_policy(tables, demo):
    truth = load_truth(demo)
    logged = tables["decisions"].query("position == 1")[["decision_id", "offer_id"]]
    logging_value = policy_value(truth, logged)
    assert oracle_value(truth) > logging_value > 0
    assert policy_value(truth, oracle_choice(truth)) == pytest.approx(oracle_value(truth))


def test_policy_value_names_an_offer_that_is_not_a_candidate(demo):
    truth = load_truth(demo)
    decision = truth["decision_id"].iloc[0]
    candidates = set(truth.loc[truth["decision_id"] == decision, "offer_id"])
    stranger = next(o for o in ("FB01", "FB11", "OF027", "OF009") if o not in candidates)
    chosen = pd.DataFrame({"decision_id": [decision], "offer_id": [stranger]})
    with pytest.raises(DataError, match=f"offer '{stranger}' chosen for decision '{decision}'"):
        policy_value(truth, chosen)


def test_load_truth_can_read_only_some_decisions(demo):
    full = load_truth(demo)
    wanted = full["decision_id"].drop_duplicates().iloc[[0, 5, -1]].tolist()
    part = load_truth(demo / "ground_truth", decision_ids=wanted)
    expected = full[full["decision_id"].isin(wanted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part.reset_index(drop=True), expected)


def test_load_truth_names_a_folder_without_truth(tmp_path):
    with pytest.raises(NotFoundError, match=r"`directory` must contain truth\.parquet"):
        load_truth(tmp_path)


def test_logged_acceptance_agrees_with_the_true_probabilities(shown, demo):
    truth = load_truth(demo)
    first = shown.query("position == 1").merge(truth, on=["decision_id", "offer_id"])
    # acceptance within the 7-day window is at most the true rate, and close to it
    assert first["accepted"].mean() == pytest.approx(first["p_accept"].mean(), rel=0.1)


# ------------------------------------------------------------------ behaviour behind the data


def test_customers_with_high_affinity_accept_that_categorys_offers_more(shown, tables, demo):
    prefs = pd.read_parquet(demo / "ground_truth" / "customer_preferences.parquet")
    offers = tables["offers"][["offer_id", "category"]]
    rows = shown.merge(offers, on="offer_id")
    taste = prefs.melt(
        id_vars="customer_id",
        value_vars=[c for c in prefs.columns if c.startswith("taste_")],
        var_name="category",
        value_name="affinity",
    )
    taste["category"] = taste["category"].str.removeprefix("taste_")
    rows = rows.merge(taste, on=["customer_id", "category"])  # product-category offers only
    high = rows.loc[rows["affinity"] >= 0.3, "accepted"]
    low = rows.loc[rows["affinity"] < 0.05, "accepted"]
    assert high.mean() > 1.5 * low.mean()
    assert _two_proportion_z(high, low) > 5


def test_purchase_history_predicts_response(shown, tables):
    """The observable signal a model can learn: past purchases in the offer's category."""
    tx = tables["transactions"]
    offers = tables["offers"][["offer_id", "category"]].dropna()
    rows = shown.query("position == 1").merge(offers, on="offer_id")
    # share of the customer's purchases before the decision day in the offer's category
    tx = tx.assign(day=tx["ts"].dt.floor("D"))
    rows = rows.assign(day=rows["ts"].dt.floor("D"))
    counts = tx.groupby(["customer_id", "category"]).size().rename("n_cat").reset_index()
    total = tx.groupby("customer_id").size().rename("n_all").reset_index()
    rows = rows.merge(counts, on=["customer_id", "category"], how="left").merge(
        total, on="customer_id", how="left"
    )
    share = rows["n_cat"].fillna(0) / rows["n_all"].fillna(0).clip(lower=1)
    bought = rows.loc[share >= 0.3, "accepted"]
    never = rows.loc[(share == 0) & (rows["n_all"].fillna(0) >= 3), "accepted"]
    assert bought.mean() > 1.5 * never.mean()
    assert _two_proportion_z(bought, never) > 5


def test_a_recent_complaint_lowers_acceptance_except_for_service_offers(shown, tables, demo):
    truth = load_truth(demo)
    complaints = tables["interactions"].query("event_type == 'complaint'")[["customer_id", "ts"]]
    rows = shown.merge(truth, on=["decision_id", "offer_id"])
    rows = rows.merge(tables["offers"][["offer_id", "offer_type"]], on="offer_id")
    merged = pd.merge_asof(
        rows.sort_values("ts"),
        complaints.sort_values("ts").rename(columns={"ts": "complaint_ts"}),
        left_on="ts",
        right_on="complaint_ts",
        by="customer_id",
        allow_exact_matches=False,
    )
    recent = (merged["ts"] - merged["complaint_ts"]) < pd.Timedelta(days=7)
    service = merged["offer_type"] == "service"
    # what was logged: fewer accepts of ordinary offers right after a complaint
    other_recent = merged.loc[recent & ~service, "accepted"]
    other_calm = merged.loc[~recent & ~service, "accepted"]
    assert len(other_recent) > 300
    assert other_recent.mean() < 0.7 * other_calm.mean()
    assert _two_proportion_z(other_calm, other_recent) > 3
    # the true probabilities: ordinary offers lose, service offers gain
    p_true = merged.groupby([recent.rename("recent"), service.rename("service")])["p_accept"].mean()
    assert p_true[(True, False)] < 0.7 * p_true[(False, False)]
    assert p_true[(True, True)] > 1.3 * p_true[(False, True)]


def test_repeated_impressions_tire_customers(demo, tables):
    truth = load_truth(demo)
    decisions = tables["decisions"].sort_values(["customer_id", "offer_id", "ts"])
    prior = decisions.groupby(["customer_id", "offer_id"]).cumcount()
    first = (
        decisions.assign(prior=prior)
        .query("position == 1")
        .merge(truth, on=["decision_id", "offer_id"])
    )
    fresh = first.loc[first["prior"] == 0, "p_accept"].mean()
    tired = first.loc[first["prior"] >= 3, "p_accept"].mean()
    assert tired < 0.85 * fresh
