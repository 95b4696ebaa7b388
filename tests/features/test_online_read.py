"""Columnar reads of the online store (``get_block``): the same vectors as ``get_many``."""

from __future__ import annotations

import json
from datetime import timedelta as td

import numpy as np
import pytest

from features.matrix import (
    AS_OF_KEY,
    SPEC_KEY,
    STATS_KEY,
    Encoding,
    decision_matrix_many,
    fit_encoding,
    offer_arrays,
)
from features.online import (
    SQLiteOnlineStore,
    cold_start,
    materialize,
    resolve_names,
)
from features.spec import FEATURE_SPEC_VERSION
from recsys.errors import SpecMismatchError
from tests.features.conftest import T0, reader_expecting

TOUCHPOINT = {"touchpoint_id": "cart", "channel": "web", "stage": "decision"}
SOURCES = {"email_opt_in": ("consent_email", "attr_email_opt_in"), "region": ("attr_region",)}


def _ids(con) -> list[str]:
    known = [r[0] for r in con.execute("SELECT customer_id FROM customers ORDER BY 1").fetchall()]
    # unknown customers between known ones, and a repeated id (read once)
    return [known[0], "nobody", *known[1:], "also-unknown", known[0]]


def test_block_holds_the_vectors_get_many_gives(logged, store):
    materialize(logged.con, store, as_of=T0)
    ids = _ids(logged.con)
    vectors = store.get_many(ids)
    block = store.get_block(ids)
    assert block.ids == list(vectors) and len(block) == len(vectors)
    assert [block[i] for i in range(len(block))] == list(vectors.values())
    names = [*block.layout.numeric, *block.layout.text, AS_OF_KEY, SPEC_KEY, STATS_KEY, "nope"]
    for name in names:
        assert block.column(name, "dflt") == [v.get(name, "dflt") for v in vectors.values()], name
    assert block.cold_start.tolist() == [v[AS_OF_KEY] is None for v in vectors.values()]
    assert block.cold_start.tolist().count(True) == 2
    assert block[1] == cold_start()


def test_block_resolves_names_like_the_dicts(logged, store):
    materialize(logged.con, store, as_of=T0)
    ids = _ids(logged.con)
    vectors = store.get_many(ids)
    for vector in vectors.values():
        vector["flag"] = vector.get(AS_OF_KEY) is None
        resolve_names(vector, SOURCES)
    block = store.get_block(ids).with_names(SOURCES, "flag")
    assert [block[i] for i in range(len(block))] == list(vectors.values())
    for name in ("email_opt_in", "region", "consent_email", "flag"):
        assert block.column(name) == [v.get(name) for v in vectors.values()], name
    picked = block.take([3, 1, 3, 0])
    assert picked.ids == [block.ids[i] for i in (3, 1, 3, 0)]
    assert picked.column("email_opt_in") == [vectors[c].get("email_opt_in") for c in picked.ids]
    assert picked.cold_start.tolist() == [False, True, False, False]


def test_block_of_unknown_customers_is_all_cold_start(logged, store):
    materialize(logged.con, store, as_of=T0)
    block = store.get_block(["x1", "x2"])
    assert block.cold_start.tolist() == [True, True]
    assert block[0] == cold_start()
    assert block.column("journey_stage") == ["awareness", "awareness"]
    empty = store.get_block([])
    assert len(empty) == 0 and empty.column("journey_stage") == []


def test_block_refuses_vectors_of_another_spec(logged, store):
    materialize(logged.con, store, as_of=T0)
    reader = reader_expecting(store, "newer0spec")
    with pytest.raises(
        SpecMismatchError,
        match=f"holds vectors of feature spec {FEATURE_SPEC_VERSION}, this code "
        "expects spec newer0spec; run `recsys features materialize`",
    ):
        reader.get_block(["c1", "nobody"])
    assert reader.get_block(["nobody"]).cold_start.tolist() == [True]  # nothing stored to refuse


def test_a_store_of_plain_json_vectors_is_left_to_get_many(store):
    vector = {**cold_start(), "purch_count_30d": 5.0, AS_OF_KEY: T0.isoformat()}
    store.write([("c1", vector)], FEATURE_SPEC_VERSION)
    assert store.get_block(["c1"]) is None
    assert store.get_many(["c1"])["c1"]["purch_count_30d"] == 5.0


def test_block_refuses_entries_of_another_layout(logged, tmp_path):
    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(logged.con, store, as_of=T0)
    store._con.execute(
        "UPDATE meta SET value = ? WHERE key = 'layout'",
        [json.dumps({"numeric": ["only_one"], "text": []})],
    )
    store._con.commit()
    fresh = SQLiteOnlineStore(store.path)
    with pytest.raises(SpecMismatchError, match="vector layout does not match its entries"):
        fresh.get_block(["c1"])
    with pytest.raises(SpecMismatchError, match="vector layout does not match its entries"):
        fresh.get_many(["c1"])
    fresh.close()
    store.close()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decision_matrix_of_a_block_equals_the_dicts_matrix(logged, training_frame, store, dtype):
    encoding = Encoding.from_json(json.dumps(fit_encoding(training_frame).to_dict()))
    materialize(logged.con, store, as_of=T0 - td(hours=6))  # vectors age until the decision
    ids = _ids(logged.con)
    block = store.get_block(ids)
    vectors = list(store.get_many(ids).values())
    offers = offer_arrays(logged.con.execute("SELECT * FROM offers ORDER BY offer_id").df())
    rng = np.random.default_rng(3)
    eligible = rng.random((len(ids) - 1, len(offers))) < 0.6
    eligible[2] = False  # a customer without a pair
    rows, cols = np.nonzero(eligible)
    contexts = [{"device": "mobile"} if i % 2 else None for i in range(len(vectors))]
    now = T0 + td(days=2)
    for source in (block, block.take(np.arange(len(block))[::-1])):
        dicts = [source[i] for i in range(len(source))]
        X = decision_matrix_many(
            source, offers, TOUCHPOINT, contexts, now, encoding=encoding, customer_index=rows,
            offer_index=cols, dtype=dtype,
        )  # fmt: skip
        expected = decision_matrix_many(
            dicts, offers, TOUCHPOINT, contexts, now, encoding=encoding, customer_index=rows,
            offer_index=cols, dtype=dtype,
        )  # fmt: skip
        assert X.shape == (len(rows), len(encoding.columns))
        np.testing.assert_array_equal(X.view(np.uint8), expected.view(np.uint8))
    assert [block[i] for i in range(len(block))] == vectors


def test_prefetched_blocks_are_the_blocks_read_directly(logged, tmp_path):
    from recsys.catalog import catalog_from_records
    from serving.features_adapter import StoreFeatureSource

    store = SQLiteOnlineStore(tmp_path / "online.sqlite")
    materialize(logged.con, store, as_of=T0)
    catalog = catalog_from_records(
        [{"offer_id": "o1", "name": "o", "offer_type": "discount"}],
        [{"touchpoint_id": "email", "channel": "email", "consent_column": "email_opt_in"}],
    )
    source = StoreFeatureSource(store, catalog)
    ids = _ids(logged.con)[:-1]
    first, second = ids[:3], ids[3:]
    direct = [source.get_block(part) for part in (first, second)]
    source.prefetch(first)
    source.prefetch(second)
    for part, block in zip((first, second), direct, strict=True):
        got = source.get_block(part)
        assert got.ids == part and got is not block
        assert [got[i] for i in range(len(got))] == [block[i] for i in range(len(block))]
        assert got.column("email_opt_in") == block.column("email_opt_in")
    source.prefetch(first)  # asked for, never collected: dropped by the next read
    assert source.get_block(second).ids == second
    dicts = source.get_many(ids)
    block = source.get_block(ids)
    assert [block[i] for i in range(len(block))] == list(dicts.values())
    source.close()
