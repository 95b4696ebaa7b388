"""Encoding: training matrix and serving matrix agree; encodings travel as JSON."""

from __future__ import annotations

import json
from datetime import timedelta as td

import numpy as np
import pytest

from features.matrix import (
    UNKNOWN_CODE,
    ColumnEncoding,
    Encoding,
    decision_matrix,
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
