"""Encoding and the serving matrix: the builder's rows equal the training encoding of the
same features (no training/serving skew); encodings travel as JSON."""

from __future__ import annotations

import json
from datetime import timedelta as td

import numpy as np
import pytest

from features.decision_matrix import DecisionMatrixBuilder, MatrixColumns
from features.matrix import (
    UNKNOWN_CODE,
    ColumnEncoding,
    Encoding,
    encode,
    fit_encoding,
    model_columns,
)
from features.offers import offer_arrays
from features.online import Layout, SQLiteOnlineStore, block_of, materialize
from features.online.base import AS_OF_KEY, STATS_KEY
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import cold_start_vector
from recsys.catalog import catalog_from_records
from recsys.errors import SpecMismatchError
from tests.features.conftest import T0

TOUCHPOINTS = {
    "cart": {"touchpoint_id": "cart", "channel": "web", "stage": "decision"},
    "call": {"touchpoint_id": "call", "channel": "call_center", "stage": "service"},
    "web_home": {"touchpoint_id": "web_home", "channel": "web", "stage": "consideration"},
}


def _context(w, decision_id: str, offer_id: str) -> dict:
    raw = w.con.execute(
        "SELECT context FROM decisions WHERE decision_id = ? AND offer_id = ?",
        [decision_id, offer_id],
    ).fetchone()[0]
    return json.loads(raw) if raw else {}


@pytest.fixture
def trained(logged, training_frame):
    encoding = Encoding.from_json(json.dumps(fit_encoding(training_frame).to_dict()))
    return logged, training_frame.copy(), encoding


def _rows(columns, block, offers, touchpoint, context, now, dtype=np.float32):
    """Every offer x the block's one customer."""
    m = len(offers)
    prepared = columns.prepare(offer_arrays(offers), touchpoint)
    return columns.rows(
        block, prepared, [context] * len(block), now, np.zeros(m, np.intp), np.arange(m), dtype
    )


def test_model_columns_and_encode_shapes(trained):
    _, frame, encoding = trained
    X, names, categorical = encode(frame, encoding)
    assert X.dtype == np.float32 and X.shape == (len(frame), len(names))
    assert names == model_columns(frame)
    assert names[:2] == ["offer_id", "touchpoint_id"]
    assert not {"label", "revenue", "decision_id", "customer_id", "ts", "propensity"} & set(names)
    assert [names[i] for i in categorical] == [
        "offer_id",
        "touchpoint_id",
        "purch_top_category_365d",
        "journey_stage",
        "attr_region",
        "offer_type",
        "offer_category",
        "tp_channel",
        "tp_stage",
        "ctx_device",
        "ctx_seg",
    ]
    assert encoding.context_keys == ["basket", "device", "member", "seg"]


def test_categories_use_sorted_vocabularies_and_unknown_code(trained):
    _, frame, encoding = trained
    col = encoding.column("offer_id")
    assert col.vocabulary == ("o1", "o2")
    assert col.code("o2") == 1.0 and col.code("o9") == UNKNOWN_CODE and col.code(None) == -1.0
    assert list(col.codes(np.array(["o2", "zz", None, "o1"], dtype=object))) == [1, -1, -1, 0]
    frame.loc[0, "offer_id"] = "never-seen"
    X, names, _ = encode(frame, encoding)
    assert X[0, names.index("offer_id")] == UNKNOWN_CODE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_served_rows_equal_the_training_rows(trained, tmp_path, dtype):
    """The training/serving skew guard: the features of each logged decision materialised
    as of its time, read from the online store and built into rows, equal ``encode`` of
    the training set's rows (bit for bit, as float32)."""
    w, frame, encoding = trained
    X, _, _ = encode(frame, encoding)
    columns = MatrixColumns(encoding)
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    offers = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    compared = 0
    for (decision_id, customer_id, ts, tp), rows in frame.groupby(
        ["decision_id", "customer_id", "ts", "touchpoint_id"], dropna=False
    ):
        cid = customer_id if isinstance(customer_id, str) else "anonymous"
        if isinstance(customer_id, str):
            materialize(w.con, store, as_of=ts.to_pydatetime(), customer_ids=[customer_id])
        block = store.read_block([cid])
        context = _context(w, decision_id, rows.offer_id.iloc[0])
        chosen = offers.set_index("offer_id").loc[list(rows.offer_id)].reset_index()
        served = _rows(columns, block, chosen, TOUCHPOINTS[tp], context, ts.to_pydatetime(), dtype)
        assert served.dtype == dtype
        # Slate rows of one decision may carry different contexts: compare rows whose
        # context is the one served.
        for k, i in enumerate(rows.index):
            if _context(w, decision_id, rows.loc[i, "offer_id"]) == context:
                got = served[k].astype(np.float32)
                np.testing.assert_array_equal(got.view(np.uint32), X[i].view(np.uint32))
                compared += 1
    assert compared == 4  # d1, d2/o1, anonymous d3, d4
    store.close()


def _catalog(w):
    offers = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    records = offers[["offer_id", "name", "offer_type", "category", "value"]].to_dict("records")
    return catalog_from_records(records, list(TOUCHPOINTS.values()))


def test_the_builder_port_gives_the_rows_of_its_touchpoints_candidates(trained, tmp_path):
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=6))
    block = store.read_block(["c1", "nobody", "c3", "c2"])
    catalog = _catalog(w)
    builder = DecisionMatrixBuilder(catalog, encoding)
    columns = MatrixColumns(encoding)
    contexts = [{"device": "mobile", "basket": 2}, {}, {"seg": 7, "member": True}, {"seg": "x"}]
    now = T0 + td(days=2)
    pair_customer, pair_offer = np.array([0, 0, 2, 1, 3, 3]), np.array([1, 0, 1, 0, 0, 1])
    for tp in TOUCHPOINTS:
        candidates = catalog.for_touchpoint(tp)
        X = builder.build(block, candidates, contexts, now, pair_customer, pair_offer)
        assert X.dtype == np.float64 and X.shape == (6, len(encoding.columns))
        offers = [
            {"offer_id": o.offer_id, "offer_type": o.offer_type, "category": o.category,
             "value": o.value} for o in candidates.offers
        ]  # fmt: skip
        for r, (i, j) in enumerate(zip(pair_customer, pair_offer, strict=True)):
            alone = _rows(columns, block.take([i]), offers, TOUCHPOINTS[tp], contexts[i], now)
            np.testing.assert_array_equal(X[r].astype(np.float32), alone[j])
    store.close()


def test_a_batch_gives_each_customer_the_rows_it_gets_alone(trained, tmp_path):
    """A single request is a batch of one: the rows of a customer do not depend on the
    other customers of the block, nor on which pairs are asked for."""
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=6))
    block = store.read_block(["c1", "c2", "nobody", "c3"])
    store.close()
    columns = MatrixColumns(encoding)
    offers = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    prepared = columns.prepare(offer_arrays(offers), TOUCHPOINTS["cart"])
    contexts = [{}, {"device": "mobile", "basket": 2}, {"seg": 7}, {"member": False}]
    rng = np.random.default_rng(0)
    eligible = rng.random((len(block), len(offers))) < 0.7
    eligible[0] = True
    eligible[1] = False  # a customer without a pair
    rows, cols = np.nonzero(eligible)
    now = T0 + td(days=2)
    X = columns.rows(block, prepared, contexts, now, rows, cols)
    for i in range(len(block)):
        mine = np.flatnonzero(eligible[i])
        alone = columns.rows(
            block.take([i]), prepared, [contexts[i]], now, np.zeros(len(mine), np.intp), mine
        )
        np.testing.assert_array_equal(X[rows == i].view(np.uint32), alone.view(np.uint32))


def test_days_since_features_age_between_materialisation_and_decision(trained, tmp_path):
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=12), customer_ids=["c1"])
    block = store.read_block(["c1"])
    names = encoding.names
    offer = [{"offer_id": "o1", "offer_type": "discount"}]
    later = _rows(MatrixColumns(encoding), block, offer, TOUCHPOINTS["cart"], {},
                  T0 - td(hours=12) + td(days=2))[0]  # fmt: skip
    # purchase 2 days before T0 -> 1.5 days at materialisation -> 3.5 two days later
    assert later[names.index("purch_days_since_last")] == pytest.approx(3.5)
    assert later[names.index("x_offer_days_since_shown")] == pytest.approx(11.5)
    assert later[names.index("purch_count_30d")] == 1.0  # counts are as materialised
    store.close()


def test_features_an_older_store_lacks_read_their_cold_start_values(trained):
    """A store materialised before a feature existed: the block has the feature's
    cold-start value, as if the vector carried it."""
    _, _, encoding = trained
    names = encoding.names
    dropped = ("purch_count_30d", "int_count_30d")
    vector = {"purch_count_30d": 4.0, "int_count_30d": 2.0, "purch_amount_365d": 10.0}
    full = Layout.of({**cold_start_vector(), **vector})
    older = Layout(tuple(n for n in full.numeric if n not in dropped), full.text)
    got = block_of({"c": vector}, FEATURE_SPEC_VERSION, older)
    columns = MatrixColumns(encoding)
    offer = [{"offer_id": "o1", "offer_type": "discount"}]
    row = _rows(columns, got, offer, TOUCHPOINTS["cart"], {}, T0)[0]
    cold = cold_start_vector()
    for name in dropped:
        assert row[names.index(name)] == cold[name] != vector[name]
    assert row[names.index("purch_amount_365d")] == 10.0


def test_spec_mismatch_is_refused(trained):
    _, frame, encoding = trained
    old = Encoding(spec_version="0ld5pec", columns=encoding.columns)
    with pytest.raises(SpecMismatchError, match=r"feature spec 0ld5pec.*retrain"):
        encode(frame, old)
    with pytest.raises(SpecMismatchError, match="encoding is for feature spec 0ld5pec"):
        MatrixColumns(old)
    block = block_of({"c": {}}, "0ld5pec")
    with pytest.raises(SpecMismatchError, match="materialised with feature spec 0ld5pec"):
        _rows(MatrixColumns(encoding), block, [{"offer_id": "o1"}], TOUCHPOINTS["cart"], {}, T0)


def _bad_inputs():
    n1, p2 = np.zeros(1, np.intp), np.zeros(2, np.intp)
    return [
        ({"contexts": [{}, {}]}, ValueError, r"`contexts` must have one entry per customer \(1\), got 2"),
        ({"pair_offer": p2}, ValueError, r"must have one shape \(p,\), got \(1,\) and \(2,\)"),
        ({"pair_customer": n1 + 1}, ValueError, r"`pair_customer` must be in 0..0, got 1..1"),
        ({"pair_offer": n1 + 5}, ValueError, r"`pair_offer` must be in 0..1, got 5..5"),
        ({"dtype": np.int64}, ValueError, "`dtype` must be float32 or float64, got int64"),
    ]  # fmt: skip


@pytest.mark.parametrize(("bad", "error", "message"), _bad_inputs())
def test_rows_refuse_inputs_that_do_not_fit(trained, bad, error, message):
    _, _, encoding = trained
    columns = MatrixColumns(encoding)
    prepared = columns.prepare(offer_arrays([{"offer_id": "o1"}, {"offer_id": "o2"}]),
                               TOUCHPOINTS["cart"])  # fmt: skip
    args = {"contexts": [{}], "pair_customer": np.zeros(1, np.intp),
            "pair_offer": np.zeros(1, np.intp), "dtype": np.float32, **bad}  # fmt: skip
    block = block_of({"c": {}}, FEATURE_SPEC_VERSION)
    with pytest.raises(error, match=message):
        columns.rows(block, prepared, args["contexts"], T0, args["pair_customer"],
                     args["pair_offer"], args["dtype"])  # fmt: skip


def test_encoding_round_trips_through_json(trained):
    _, _, encoding = trained
    again = Encoding.from_dict(json.loads(encoding.to_json()))
    assert again == encoding
    assert again.column("ctx_seg") == ColumnEncoding("ctx_seg", "categorical", ("7", "bags"))


def test_crosses_read_each_customers_statistics_at_the_offers_keys(trained):
    _, _, encoding = trained
    vectors = {
        "a": {"purch_amount_365d": 100.0, AS_OF_KEY: T0.isoformat(), STATS_KEY: {
            "category": {"keys": ["shoes", "bags"], "values": [[60.0, 2.0, 2.0], [40.0, 1.0, 1.0]]}}},
        "b": {"purch_amount_365d": 10.0, AS_OF_KEY: T0.isoformat(), STATS_KEY: {
            "category": {"keys": ["toys", "bags"], "values": [[1.0, 1.0, 1.0], [5.0, 3.0, 3.0]]}}},
        "cold": None,
    }  # fmt: skip
    block = block_of(vectors, FEATURE_SPEC_VERSION)
    columns = MatrixColumns(encoding)
    offers = [{"offer_id": "o2", "category": "bags"}, {"offer_id": "o1", "category": "shoes"},
              {"offer_id": "o3", "category": None}]  # fmt: skip
    prepared = columns.prepare(offer_arrays(offers), TOUCHPOINTS["cart"])
    pair_customer, pair_offer = np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)
    X = columns.rows(block, prepared, [{}] * 3, T0, pair_customer, pair_offer)
    share = X[:, encoding.names.index("x_category_spend_share_365d")].reshape(3, 3)
    count = X[:, encoding.names.index("x_category_purchases_365d")].reshape(3, 3)
    np.testing.assert_allclose(share, [[0.4, 0.6, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(count, [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_offer_keys_that_are_not_text_match_their_text(trained):
    _, _, encoding = trained
    block = block_of(
        {
            "a": {
                STATS_KEY: {
                    "category": {"keys": ["5", "x"], "values": [[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]}
                }
            }
        },
        FEATURE_SPEC_VERSION,
    )
    columns = MatrixColumns(encoding)
    row = _rows(columns, block, [{"offer_id": "o1", "category": 5}], TOUCHPOINTS["cart"], {}, T0)
    assert row[0, encoding.names.index("x_category_purchases_365d")] == 1.0


def test_the_builder_prepares_a_touchpoint_it_did_not_know(trained):
    w, _, encoding = trained
    catalog = _catalog(w)
    builder = DecisionMatrixBuilder(catalog, encoding, dtype=np.float32)
    fresh = _catalog(w).for_touchpoint("cart")  # a reloaded catalogue's candidates
    block = block_of({"c": None}, FEATURE_SPEC_VERSION)
    pairs = (np.zeros(2, np.intp), np.arange(2))
    X = builder.build(block, fresh, [{}], T0, *pairs)
    np.testing.assert_array_equal(
        X, builder.build(block, catalog.for_touchpoint("cart"), [{}], T0, *pairs)
    )
    assert X.dtype == np.float32
