"""Benchmark: the request matrix (``features.decision_matrix``) as the pipeline builds it.

Builds a small real setup once (cached in ``--workdir``): demo data (``recsys.datagen``,
500 customers, 20 days, seed 1), a DuckDB warehouse, the training set and its fitted
:class:`~features.matrix.Encoding`, and the customers' features materialised into a SQLite
online store. Then times, over the demo catalogue's touchpoints (every candidate offer of
the touchpoint) and customers read from the store (real ones, some cold starts):

- ``--calls`` requests of one customer (a batch of one: the block read, then
  :meth:`~features.decision_matrix.DecisionMatrixBuilder.build`);
- batches of ``--batch`` customers (one read, one build per batch).

Prints one JSON line: microseconds per request / per customer of a batch (best of
``--repeats``), split into read and build, rows per call, columns.
Usage: python bench/bench_decision_matrix.py [--calls 2000] [--batch 200] [--repeats 5]
       [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np

from features.decision_matrix import DecisionMatrixBuilder
from features.matrix import Encoding, fit_encoding
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
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
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
    # A decision a day after the features' as-of time (the days-since features age).
    now = con.execute("SELECT max(ts) FROM decisions").fetchone()[0] + timedelta(days=1)
    now = now.replace(tzinfo=UTC)
    con.close()
    builder = DecisionMatrixBuilder(catalog, encoding)
    touchpoints = [
        catalog.for_touchpoint(tp_id)
        for tp_id in sorted(catalog.touchpoints)
        if catalog.for_touchpoint(tp_id).offers
    ]
    contexts = [{}, {"basket": 2, "device": "mobile"}, {"device": "web"}]
    timings = {"read": 0.0, "build": 0.0}

    def decide(ids: list[str], offers, context) -> int:
        started = time.perf_counter()
        block = store.read_block(ids)
        built = time.perf_counter()
        m = len(offers.offers)
        pair_customer = np.repeat(np.arange(len(ids)), m)
        pair_offer = np.tile(np.arange(m), len(ids))
        X = builder.build(block, offers, [context] * len(ids), now, pair_customer, pair_offer)
        timings["read"] += built - started
        timings["build"] += time.perf_counter() - built
        return len(X)

    def singles() -> int:
        return sum(
            decide([customers[i % len(customers)]], touchpoints[i % len(touchpoints)],
                   contexts[i % 3])
            for i in range(args.calls)
        )  # fmt: skip

    def batches() -> int:
        ids = (customers * (args.batch // len(customers) + 1))[: args.batch]
        ids = list(dict.fromkeys(ids))
        return sum(decide(ids, tp, contexts[1]) for tp in touchpoints) // len(touchpoints)

    rows = {"single": singles(), "batch": batches()}  # warm-up
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, run in (("single", singles), ("batch", batches)):
            timings.update(read=0.0, build=0.0)
            run()
            if name not in best or sum(timings.values()) < sum(best[name].values()):
                best[name] = dict(timings)
    batch_customers = len(set((customers * (args.batch // len(customers) + 1))[: args.batch]))
    per = {"single": args.calls, "batch": batch_customers * len(touchpoints)}
    print(
        json.dumps(
            {
                "calls": args.calls,
                "batch_customers": batch_customers,
                **{
                    f"us_{part}_per_{'request' if name == 'single' else 'batch_customer'}": round(
                        best[name][part] / per[name] * 1e6, 1
                    )
                    for name in best
                    for part in ("read", "build")
                },
                "rows_per_request": round(rows["single"] / args.calls, 1),
                "columns": len(encoding.columns),
                "touchpoints": len(touchpoints),
            }
        )
    )


if __name__ == "__main__":
    main()
