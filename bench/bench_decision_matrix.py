"""Benchmark: ``features.matrix.decision_matrix`` per call, as serving calls it.

Builds a small real setup once (cached in ``--workdir``): demo data (``recsys.datagen``,
500 customers, 20 days, seed 1), a DuckDB warehouse, the training set and its fitted
:class:`~features.matrix.Encoding`, and the customers' vectors materialised into a SQLite
online store. Then times ``--calls`` calls of ``decision_matrix``, cycling over customers
(real vectors, some cold starts) and the demo catalogue's touchpoints (every candidate offer
of the touchpoint), twice in one run: as :class:`~features.matrix.OfferArrays` (offer columns
and statistics worked out per call) and as :class:`~features.matrix.PreparedOffers` (worked
out once per touchpoint, as ``serving`` passes them).

Prints one JSON line: microseconds per call of each (best of ``--repeats``, the two
alternating), their ratio, offers per call, columns.
Usage: python bench/bench_decision_matrix.py [--calls 5000] [--repeats 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np

from features.matrix import (
    Encoding,
    PreparedOffers,
    decision_matrix,
    fit_encoding,
    offer_arrays,
)
from features.online import SQLiteOnlineStore, materialize
from features.training_set import build_training_set
from recsys import warehouse
from recsys.catalog import load_catalog_from_warehouse
from recsys.datagen import generate_dataset
from recsys.loading import load_directory

SEED = 1


def prepare(workdir: Path) -> tuple[Path, Path, Path]:
    """Warehouse, encoding JSON and online store under ``workdir`` (built once)."""
    data, db = workdir / "data", workdir / "warehouse.duckdb"
    encoding_path, store_path = workdir / "encoding.json", workdir / "online.sqlite"
    if encoding_path.exists() and store_path.exists():
        return db, encoding_path, store_path
    generate_dataset(customers=500, days=20, seed=SEED, out=data, progress=False)
    con = warehouse.connect(db)
    load_directory(data, con)
    frame = build_training_set(con)
    encoding_path.write_text(fit_encoding(frame).to_json())
    as_of = con.execute("SELECT max(ts) FROM decisions").fetchone()[0] + timedelta(seconds=1)
    store = SQLiteOnlineStore(store_path)
    materialize(con, store, as_of=as_of)
    store.close()
    con.close()
    return db, encoding_path, store_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.gettempdir()) / "bench_decision_matrix"
    workdir.mkdir(parents=True, exist_ok=True)
    db, encoding_path, store_path = prepare(workdir)

    encoding = Encoding.from_json(encoding_path.read_text())
    catalog = load_catalog_from_warehouse(db)
    store = SQLiteOnlineStore(store_path)
    customers = [f"unknown-{i}" for i in range(10)]
    con = warehouse.connect(db, read_only=True)
    customers += [
        r[0] for r in con.execute("SELECT customer_id FROM customers LIMIT 190").fetchall()
    ]
    # A decision a day after the vectors' as-of time (the days-since features age).
    now = con.execute("SELECT max(ts) FROM decisions").fetchone()[0] + timedelta(days=1)
    now = now.replace(tzinfo=UTC)
    con.close()
    vectors = list(store.get_many(customers).values())
    store.close()
    touchpoints = []
    for tp_id, tp in sorted(catalog.touchpoints.items()):
        offers = catalog.for_touchpoint(tp_id).offers
        if not offers:
            continue
        arrays = offer_arrays(
            [
                {"offer_id": o.offer_id, "offer_type": o.offer_type, "category": o.category}
                | {"value": o.value}
                for o in offers
            ]
        )
        tp_dict = {"touchpoint_id": tp.touchpoint_id, "channel": tp.channel, "stage": tp.stage}
        touchpoints.append((arrays, PreparedOffers(arrays, encoding), tp_dict))
    contexts = [{}, {"basket": 2, "device": "mobile"}, {"device": "web"}]
    calls = [
        (vectors[i % len(vectors)], *touchpoints[i % len(touchpoints)], contexts[i % 3])
        for i in range(args.calls)
    ]

    def run(prepared: bool) -> int:
        rows = 0
        for vector, arrays, ready, tp_dict, ctx in calls:
            offers = ready if prepared else arrays
            rows += len(decision_matrix(vector, offers, tp_dict, ctx, now, encoding=encoding))
        return rows

    rows = run(False)  # warm-up (cached plans, imports)
    run(True)
    best = {False: np.inf, True: np.inf}
    for _ in range(args.repeats):
        for prepared in (False, True):
            started = time.perf_counter()
            run(prepared)
            best[prepared] = min(best[prepared], time.perf_counter() - started)
    print(
        json.dumps(
            {
                "calls": args.calls,
                "us_per_call_offer_arrays": round(best[False] / args.calls * 1e6, 1),
                "us_per_call_prepared_offers": round(best[True] / args.calls * 1e6, 1),
                "speed-up": round(best[False] / best[True], 2),
                "mean_offers_per_call": round(rows / args.calls, 1),
                "columns": len(encoding.columns),
                "touchpoints": len(touchpoints),
                "customers": len(vectors),
            }
        )
    )


if __name__ == "__main__":
    main()
