"""Encoding: training matrix and serving matrix agree; encodings travel as JSON."""

from __future__ import annotations

import json
from datetime import timedelta as td

import numpy as np
import pytest

import features.matrix as matrix_module
from features.matrix import (
    UNKNOWN_CODE,
    ColumnEncoding,
    Encoding,
    PreparedOffers,
    decision_matrix,
    decision_matrix_many,
    encode,
    fit_encoding,
    model_columns,
    offer_arrays,
)
from features.online import SQLiteOnlineStore, materialize
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


def test_decision_matrix_equals_the_training_rows(trained, tmp_path):
    w, frame, encoding = trained
    X, _, _ = encode(frame, encoding)
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    offers = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    compared = 0
    for (decision_id, customer_id, ts, tp), rows in frame.groupby(
        ["decision_id", "customer_id", "ts", "touchpoint_id"], dropna=False
    ):
        vector = None
        if isinstance(customer_id, str):
            materialize(w.con, store, as_of=ts.to_pydatetime(), customer_ids=[customer_id])
            vector = store.get_many([customer_id])[customer_id]
        context = _context(w, decision_id, rows.offer_id.iloc[0])
        chosen = offers.set_index("offer_id").loc[list(rows.offer_id)].reset_index()
        served = decision_matrix(
            vector, chosen, TOUCHPOINTS[tp], context, ts.to_pydatetime(), encoding=encoding
        )
        # Slate rows of one decision may carry different contexts: compare rows whose
        # context is the one served.
        for k, i in enumerate(rows.index):
            if _context(w, decision_id, rows.loc[i, "offer_id"]) == context:
                np.testing.assert_array_equal(served[k], X[i], err_msg=decision_id)
                compared += 1
    assert compared == 4  # d1, d2/o1, anonymous d3, d4
    store.close()


def test_decision_matrix_accepts_lists_arrow_and_prepared_offers(trained):
    w, _, encoding = trained
    frame = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    records = [
        {"offer_id": "o1", "offer_type": "discount", "category": "shoes", "value": 1.0},
        {"offer_id": "o2", "offer_type": "upsell", "category": "bags", "value": 3.0},
    ]
    arrow = w.con.sql("SELECT * FROM offers ORDER BY offer_id").to_arrow_table()
    results = [
        decision_matrix(None, o, TOUCHPOINTS["cart"], {"basket": 2}, T0, encoding=encoding)
        for o in (frame, records, arrow, offer_arrays(records))
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    assert results[0].shape == (2, len(encoding.columns))


def test_days_since_features_age_between_materialisation_and_decision(trained, tmp_path):
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=12), customer_ids=["c1"])
    vector = store.get_many(["c1"])["c1"]
    names = encoding.names
    later = decision_matrix(
        vector,
        [{"offer_id": "o1", "offer_type": "discount"}],
        TOUCHPOINTS["cart"],
        {},
        T0 - td(hours=12) + td(days=2),
        encoding=encoding,
    )[0]
    # purchase 2 days before T0 -> 1.5 days at materialisation -> 3.5 two days later
    assert later[names.index("purch_days_since_last")] == pytest.approx(3.5)
    assert later[names.index("x_offer_days_since_shown")] == pytest.approx(11.5)
    assert later[names.index("purch_count_30d")] == 1.0  # counts are as materialised
    store.close()


def test_a_vector_without_some_features_gets_their_cold_start_values(trained, tmp_path):
    """A vector from an older store may lack a feature: the column is the feature's
    cold-start value, as if the vector carried it."""
    from features.training_set import cold_start_vector

    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0, customer_ids=["c1"])
    vector = store.get_many(["c1"])["c1"]
    store.close()
    offers = [{"offer_id": "o1", "offer_type": "discount"}]
    names = encoding.names
    dropped = [n for n in ("purch_count_30d", "int_count_30d") if n in vector and n in names]
    assert dropped
    partial = {k: v for k, v in vector.items() if k not in dropped}
    filled = {**vector, **{n: cold_start_vector()[n] for n in dropped}}
    got = decision_matrix(partial, offers, TOUCHPOINTS["cart"], {}, T0, encoding=encoding)
    want = decision_matrix(filled, offers, TOUCHPOINTS["cart"], {}, T0, encoding=encoding)
    np.testing.assert_array_equal(got, want)
    full = decision_matrix(vector, offers, TOUCHPOINTS["cart"], {}, T0, encoding=encoding)
    assert full[0, names.index("purch_count_30d")] == 1.0
    assert got[0, names.index("purch_count_30d")] != 1.0


def test_spec_mismatch_is_refused(trained):
    _, frame, encoding = trained
    old = Encoding(spec_version="0ld5pec", columns=encoding.columns)
    with pytest.raises(SpecMismatchError, match=r"feature spec 0ld5pec.*retrain"):
        encode(frame, old)
    with pytest.raises(SpecMismatchError, match="encoding is for feature spec 0ld5pec"):
        decision_matrix(None, [{"offer_id": "o1"}], TOUCHPOINTS["cart"], {}, T0, encoding=old)
    vector = {"__spec_version": "0ld5pec"}
    with pytest.raises(SpecMismatchError, match="materialised with feature spec 0ld5pec"):
        decision_matrix(
            vector, [{"offer_id": "o1"}], TOUCHPOINTS["cart"], {}, T0, encoding=encoding
        )


def test_encoding_round_trips_through_json(trained):
    _, _, encoding = trained
    again = Encoding.from_dict(json.loads(encoding.to_json()))
    assert again == encoding
    assert again.column("ctx_seg") == ColumnEncoding("ctx_seg", "categorical", ("7", "gold"))


def test_crosses_read_key_maps_in_any_order(trained):
    _, _, encoding = trained
    vector = {
        "purch_amount_365d": 100.0,
        "__stats": {"category": {"keys": ["shoes", "bags"], "values": [[60.0, 2.0], [40.0, 1.0]]}},
    }
    offers = [{"offer_id": "o2", "category": "bags"}, {"offer_id": "o1", "category": "shoes"}]
    X = decision_matrix(vector, offers, TOUCHPOINTS["cart"], {}, T0, encoding=encoding)
    share = X[:, encoding.names.index("x_category_spend_share_365d")]
    count = X[:, encoding.names.index("x_category_purchases_365d")]
    np.testing.assert_allclose(share, [0.4, 0.6])
    np.testing.assert_allclose(count, [1.0, 2.0])


# --- many customers at once -------------------------------------------------------------------


def _odd_vectors(vector: dict) -> list[dict]:
    """Real vectors bent the ways a store entry can be: text numbers, nested values, gaps."""
    numeric = [c.name for c in vector_columns(vector) if isinstance(vector[c.name], float)]
    text = dict(vector, **{numeric[0]: "3.5", "purch_days_since_last": "1.5"})
    nested = dict(vector, **{numeric[1]: {"a": 1}})
    missing = {k: v for k, v in vector.items() if k not in numeric[:5]}
    stats = dict(vector)
    stats["__stats"] = {
        "category": {
            "keys": ["bags", "bags", "shoes", "toys"],
            "values": [[5, 1], [9, 9], [2, 2], [1, 1]],
        },
        "offer": {"keys": ["o2"], "values": [[1.0, 2.0, 1.0, 3600.0, 99.0]]},  # extra column
        "offer_type": {"keys": [], "values": []},
        "touchpoint_offers": {"keys": ["cart"], "values": [1.0, 2.0]},  # flat values
        # a repeated key: its first row wins, on every path
        "touchpoint_interactions": {
            "keys": [7, "cart", "call", "cart"],
            "values": [[3.0], [4.0], [5.0], [6.0]],
        },
    }
    none_values = dict(vector, **dict.fromkeys(numeric[2:4]), journey_stage=None)
    return [text, nested, missing, stats, none_values]


def vector_columns(vector: dict):
    return [ColumnEncoding(k, "numeric") for k in vector if not k.startswith("__")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dense_cells", [None, 0])  # key maps by table, or binary search
def test_many_customers_matrix_equals_each_customers_matrix(
    trained, tmp_path, dtype, dense_cells, monkeypatch
):
    if dense_cells is not None:
        monkeypatch.setattr(matrix_module, "DENSE_CELLS", dense_cells)
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=6))
    known = store.get_many(["c1", "c2", "c3"])
    vectors = [*known.values(), None, *_odd_vectors(known["c1"]), *known.values()]
    contexts = [{}, {"device": "mobile", "basket": 2}, None, {"seg": 7}] * 3
    contexts = contexts[: len(vectors)]
    offers = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df()
    arrays = offer_arrays(offers)
    rng = np.random.default_rng(0)
    eligible = rng.random((len(vectors), len(arrays))) < 0.7
    eligible[0] = True
    rows, cols = np.nonzero(eligible)
    now = T0 + td(days=2)
    for tp in TOUCHPOINTS.values():
        X = decision_matrix_many(
            vectors, arrays, tp, contexts, now, encoding=encoding, customer_index=rows,
            offer_index=cols, dtype=dtype,
        )  # fmt: skip
        assert X.dtype == dtype and X.shape == (len(rows), len(encoding.columns))
        for i, vector in enumerate(vectors):
            alone = decision_matrix(
                vector, offers.iloc[np.flatnonzero(eligible[i])], tp, contexts[i], now,
                encoding=encoding,
            )  # fmt: skip
            got = X[rows == i].astype(np.float32)
            np.testing.assert_array_equal(got.view(np.uint32), alone.view(np.uint32))
    store.close()


def test_prepared_offers_give_the_plain_offers_matrix(trained, tmp_path):
    w, _, encoding = trained
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(w.con, store, as_of=T0 - td(hours=6))
    known = store.get_many(["c1", "c2", "c3"])
    vectors = [*known.values(), None, {}, *_odd_vectors(known["c1"])]
    store.close()
    catalogue = w.con.execute("SELECT * FROM offers ORDER BY offer_id").df().to_dict("records")
    # two offers share a category, one has none; the same key read from several rows
    extra = [
        {"offer_id": "o9", "offer_type": "discount", "category": "bags", "value": 2.0},
        {"offer_id": "o10", "offer_type": None, "category": None, "value": None},
    ]
    numeric_category = [{"offer_id": "o1", "category": 5}, {"offer_id": "o2", "category": None}]
    now = T0 + td(days=2)
    for offers in (catalogue + extra, numeric_category):
        prepared = PreparedOffers(offers, encoding)
        for tp in TOUCHPOINTS.values():
            for vector, context in zip(vectors, [{}, {"seg": 7}, None] * 4, strict=False):
                plain = decision_matrix(vector, offers, tp, context, now, encoding=encoding)
                fast = decision_matrix(vector, prepared, tp, context, now, encoding=encoding)
                np.testing.assert_array_equal(fast.view(np.uint32), plain.view(np.uint32))
    assert PreparedOffers(catalogue + extra, encoding).rows_of["offer_category"] is not None
    assert PreparedOffers(numeric_category, encoding).rows_of["offer_category"] is None
    # prepared for another encoding: still the plain matrix of this one
    other = Encoding(encoding.spec_version, encoding.columns[::-1])
    vector = vectors[4 + 3]  # the one with every kind of key map
    np.testing.assert_array_equal(
        decision_matrix(vector, PreparedOffers(catalogue, other), TOUCHPOINTS["cart"], {}, now,
                        encoding=encoding),
        decision_matrix(vector, catalogue, TOUCHPOINTS["cart"], {}, now, encoding=encoding),
    )  # fmt: skip


def test_many_customers_matrix_defaults_to_every_pair(trained):
    _, _, encoding = trained
    offers = [{"offer_id": "o1", "category": "shoes"}, {"offer_id": "o2", "category": "bags"}]
    X = decision_matrix_many([None, {}], offers, TOUCHPOINTS["cart"], None, T0, encoding=encoding)
    assert X.shape == (4, len(encoding.columns))
    np.testing.assert_array_equal(X[:2], X[2:])
    many = decision_matrix_many(
        [None] * 9, offers, TOUCHPOINTS["cart"], None, T0, encoding=encoding
    )
    np.testing.assert_array_equal(many, np.tile(X[:2], (9, 1)))
    empty = decision_matrix_many([], offers, TOUCHPOINTS["cart"], None, T0, encoding=encoding)
    assert empty.shape == (0, len(encoding.columns))
    # offer keys that are not text (a numeric category) are looked up customer by customer;
    # offers without a key (no category) read the defaults
    vector = {"__stats": {"category": {"keys": ["5", "x"], "values": [[2.0, 1.0], [1.0, 1.0]]}}}
    vectors = [vector, None, {}] * 3
    for odd in (
        [{"offer_id": "o1", "category": 5}, {"offer_id": "o2", "category": None}],
        [{"offer_id": "o1", "category": None}, {"offer_id": "o2", "category": None}],
    ):
        X = decision_matrix_many(vectors, odd, TOUCHPOINTS["cart"], None, T0, encoding=encoding)
        for i, v in enumerate(vectors):
            alone = decision_matrix(v, odd, TOUCHPOINTS["cart"], {}, T0, encoding=encoding)
            np.testing.assert_array_equal(X[2 * i : 2 * i + 2], alone)


def test_many_customers_matrix_refuses_other_specs(trained):
    _, _, encoding = trained
    offers = [{"offer_id": "o1"}]
    with pytest.raises(SpecMismatchError, match="materialised with feature spec 0ld5pec"):
        decision_matrix_many(
            [{}, {"__spec_version": "0ld5pec"}], offers, TOUCHPOINTS["cart"], None, T0,
            encoding=encoding,
        )  # fmt: skip
    with pytest.raises(ValueError, match="`dtype` must be float32 or float64, got int64"):
        decision_matrix_many(
            [{}], offers, TOUCHPOINTS["cart"], None, T0, encoding=encoding, dtype=np.int64
        )
