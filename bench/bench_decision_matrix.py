"""Benchmark: the feature read and the request matrix (``features.decision_matrix``) as the
pipeline runs them.

Builds a small real setup once (cached in ``--workdir``): demo data (``recsys.datagen``,
500 customers, 20 days, seed 1), a DuckDB warehouse, the training set and its fitted
:class:`~features.matrix.Encoding`, and the customers' features materialised into a SQLite
online store; plus a large SQLite store of 20,000 customers (the 500 stored vectors, each
under 40 ids). Then times, over the demo catalogue's touchpoints (every candidate offer of
the touchpoint) and customers read from the store (real ones, some cold starts):

- ``--calls`` requests of one customer (a batch of one: the block read through
  :class:`~features.online.StoreFeatureSource`, then
  :meth:`~features.decision_matrix.DecisionMatrixBuilder.build`);
- batches of ``--batch`` customers (one read, one build per batch);
- CPU per read (``StoreFeatureSource.read``, the large store, ids in a shuffled order) of 1
  and of 32 customers, and per customer of reads of 5,000 and 20,000 (batch scoring);
- CPU per build for 1 customer x a touchpoint's candidates.

Prints one JSON line: microseconds (best of ``--repeats``), then ``RESULT {json}``.
``--baseline REF`` runs this script (this checkout's copy: it uses only the stores', the
source's and the builder's public API) once with commit REF's code and once with this
checkout's, alternating for ``--rounds`` rounds on the same data, and prints the medians
side by side (``bench/baseline.py``).

Usage: python bench/bench_decision_matrix.py [--calls 2000] [--batch 200] [--repeats 3]
       [--workdir DIR] [--baseline REF [--rounds 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path

import baseline
import numpy as np

from features.decision_matrix import DecisionMatrixBuilder
from features.matrix import Encoding, fit_encoding
from features.online import SQLiteOnlineStore, StoreFeatureSource, materialize
from features.training_set import build_training_set
from recsys import warehouse
from recsys.catalog import load_catalog_from_warehouse
from recsys.datagen import generate_dataset
from recsys.loading import load_directory

SEED = 1
COPIES = 40  # the large store: each stored vector under this many ids
LARGE_READS = (5_000, 20_000)

METRICS = (
    baseline.Metric("read_1_us", "CPU per read of 1 customer", "us"),
    baseline.Metric("read_32_us", "CPU per read of 32 customers", "us"),
    *(
        baseline.Metric(
            f"read_{n}_us_per_customer",
            f"CPU per customer, reads of {n:,}",
            "us",
            baseline.Guard.ratio_at_most(1.05),
        )
        for n in LARGE_READS
    ),
    baseline.Metric("build_1_us", "CPU per build, 1 customer x candidates", "us"),
    baseline.Metric("us_read_per_request", "request of 1: read (wall)", "us"),
    baseline.Metric("us_build_per_request", "request of 1: build (wall)", "us"),
    baseline.Metric("us_read_per_batch_customer", "batch of 200: read a customer (wall)", "us"),
    baseline.Metric("us_build_per_batch_customer", "batch of 200: build a customer (wall)", "us"),
)


def prepare(workdir: Path) -> tuple[Path, Path, Path, Path]:
    """Warehouse, encoding JSON, online store and large store under ``workdir`` (built
    once)."""
    data, db = workdir / "data", workdir / "warehouse.duckdb"
    encoding_path, store_path = workdir / "encoding.json", workdir / "online.sqlite"
    large_path = workdir / "online_large.sqlite"
    if not (encoding_path.exists() and store_path.exists()):
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
    if not large_path.exists():
        small = SQLiteOnlineStore(store_path)
        stored = small._con.execute(
            "SELECT customer_id, vector FROM vectors ORDER BY customer_id"
        ).fetchall()
        large = SQLiteOnlineStore(large_path)
        large.write(
            [(f"{cid}~{k}", raw) for k in range(COPIES) for cid, raw in stored],
            small.spec_version() or "",
            replace=True,
            layout=small.layout(),
        )
        large.close()
        small.close()
    return db, encoding_path, store_path, large_path


def cpu_us(run: Callable[[], object], calls: int, repeats: int) -> float:
    """CPU microseconds per call of ``run`` (this process), best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            run()
        best = min(best, time.process_time() - started)
    return best / calls * 1e6


def measure(args: argparse.Namespace) -> dict:
    db, encoding_path, store_path, large_path = prepare(args.workdir)
    encoding = Encoding.from_json(encoding_path.read_text())
    catalog = load_catalog_from_warehouse(db)
    source = StoreFeatureSource(SQLiteOnlineStore(store_path), catalog)
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

    def pairs(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        return np.repeat(np.arange(n), m), np.tile(np.arange(m), n)

    def decide(ids: list[str], offers, context) -> int:
        started = time.perf_counter()
        block = source.read(ids)
        built = time.perf_counter()
        pair_customer, pair_offer = pairs(len(ids), len(offers.offers))
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
    result = {
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

    # CPU per read of the large store, ids in a shuffled order
    large = StoreFeatureSource(SQLiteOnlineStore(large_path), catalog)
    ids = [r[0] for r in large.store._con.execute("SELECT customer_id FROM vectors")]
    random.Random(SEED).shuffle(ids)
    turn = iter(range(1 << 62))

    def read(n: int) -> Callable[[], object]:
        return lambda: large.read(ids[(k := next(turn) * n % len(ids)) : k + n])

    read(1)()  # warm-up
    result["read_1_us"] = round(cpu_us(read(1), args.calls, args.repeats), 1)
    result["read_32_us"] = round(cpu_us(read(32), max(args.calls // 10, 1), args.repeats), 1)
    for n in LARGE_READS:
        result[f"read_{n}_us_per_customer"] = round(cpu_us(read(n), 1, args.repeats) / n, 2)
    # CPU per build: 1 customer (a known one) x each touchpoint's candidates in turn
    one = source.read([customers[10]])

    def build() -> None:
        offers = touchpoints[next(turn) % len(touchpoints)]
        pair_customer, pair_offer = pairs(1, len(offers.offers))
        builder.build(one, offers, [contexts[1]], now, pair_customer, pair_offer)

    result["build_1_us"] = round(cpu_us(build, args.calls, args.repeats), 1)
    return result


def side_sample(side: baseline.Side, args: argparse.Namespace) -> baseline.Sample:
    """The numbers of this script run with ``side``'s code (its checkout on PYTHONPATH)."""
    cmd = [
        sys.executable, __file__, "--workdir", str(args.workdir), "--calls", str(args.calls),
        "--batch", str(args.batch), "--repeats", str(args.repeats),
    ]  # fmt: skip
    done = subprocess.run(cmd, **side.process(os.environ), capture_output=True, text=True)
    result = baseline.parse_result(done.stdout)
    if done.returncode != 0 or result is None:
        raise RuntimeError(
            f"{side.name} ({side.commit}): {' '.join(cmd)} exited with {done.returncode}:\n"
            + done.stderr[-3000:]
        )
    return {k: float(v) for k, v in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    baseline.add_arguments(parser)
    args = parser.parse_args()
    args.workdir = (args.workdir or Path(tempfile.gettempdir()) / "bench_decision_matrix").resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        prepare(args.workdir)  # the same data for both sides
        baseline.compare(
            args.baseline,
            args.rounds,
            lambda side: side_sample(side, args),
            METRICS,
            args.workdir / "baseline_decision_matrix.json",
        )
        return
    result = measure(args)
    print(json.dumps(result))
    baseline.emit_result(result)


if __name__ == "__main__":
    main()
