"""Benchmark: feature build, training-set join and materialisation (DuckDB), and Spark.

For each size: generate demo data (``recsys.datagen``), load it into a DuckDB warehouse, then
run each step in its own Python process so its peak RSS is its own:

- build: every customer's features as of the end of the data (``customer_features``);
- training: ``build_training_set`` over all logged decisions;
- materialize: all customers into a SQLite online store;
- spark: the same build and training set on local Spark (``--spark-customers``, smaller).

Prints one JSON line per step (seconds, peak MB, rows, events, events/s, ns per event), a
summary table and, over several sizes, each step's cost per event relative to the smallest.
Usage: python bench/bench_features.py [--sizes 10000,100000] [--days 90] [--workdir DIR]
       [--spark-customers 5000] [--no-spark] [--training-decisions N | --training-share S]
       [--steps build,training,training_file,materialize] [--memory-limit 6GB] [--threads N]
       [--chunk-rows N] [--range-customers N] [--fast-load]
The issue's scale (1M customers, 56M events, 5M training rows):
  --sizes 1000000 --days 70 --fast-load --training-decisions 5000000 --no-spark
      --steps build,training_file,materialize
Cost per event across sizes (the same share of decisions in every training set):
  --sizes 20000,200000,1000000 --days 70 --fast-load --training-share 0.2096 --no-spark
      --steps build,training_file,materialize
Every run on this shared machine: flock /tmp/bench.lock flock -s /tmp/quiet.lock <command>.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys, time
from datetime import timedelta
from pathlib import Path
kind, arg = sys.argv[1], json.loads(sys.argv[2])
from recsys import warehouse
if kind == "prepare":
    import shutil
    from recsys.datagen import generate_dataset
    from recsys.loading import load_directory
    started = time.perf_counter()
    data = Path(arg["data"])
    if not (data / "decisions.parquet").exists():
        generate_dataset(customers=arg["customers"], days=arg["days"], seed=7, out=data,
                         progress=False)
    generated = time.perf_counter() - started
    con = warehouse.connect(arg["db"])
    if arg["fast_load"]:
        # Generated data is valid by construction: validate and load the dimensions, copy
        # the event tables straight in (the loader's own benchmark is bench_data.py).
        dims = data / "dimensions"
        dims.mkdir(exist_ok=True)
        for name in ("customers.parquet", "offers.yaml", "touchpoints.yaml"):
            shutil.copy(data / name, dims / name)
        load_directory(dims, con)
        from recsys.contract import TABLES
        for table in ("transactions", "interactions", "decisions", "outcomes"):
            cols = ", ".join(f'"{c.name}"' for c in TABLES[table].columns)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM "
                        f"read_parquet('{data / (table + '.parquet')}')")
    else:
        load_directory(data, con)
    con.close()
    print(json.dumps({"seconds": time.perf_counter() - started, "generate_seconds": generated}))
    sys.exit(0)
# Imported before the clock starts: the steps time the pipelines, not module imports.
from features.online import SQLiteOnlineStore, materialize
from features.pipeline import customer_features
from features.training_set import build_training_set, write_training_set
con = warehouse.connect(arg["db"], read_only=True)
con.execute("SET enable_progress_bar = false")  # it writes to stdout, which carries the result
if arg.get("threads"):
    con.execute(f"SET threads = {int(arg['threads'])}")
if arg.get("memory_limit"):
    # DuckDB spills to disk beyond this (Python-side Arrow/pandas memory is not limited).
    con.execute(f"SET memory_limit = '{arg['memory_limit']}'")
    con.execute(f"SET temp_directory = '{arg['temp_directory']}'")
counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
          for t in ("customers", "transactions", "interactions", "decisions", "outcomes")}
events = sum(v for k, v in counts.items() if k != "customers")
as_of = con.execute("SELECT max(ts) FROM decisions").fetchone()[0] + timedelta(seconds=1)
def cpu_seconds():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
started, cpu_started = time.perf_counter(), cpu_seconds()
if kind == "build":
    rows = len(customer_features(con, as_of))
elif kind in ("training", "training_file"):
    start = None
    wanted = arg.get("training_decisions") or 0
    if arg.get("training_share"):  # the same share of every size (cost per event comparable)
        wanted = max(1, round(counts["decisions"] * arg["training_share"]))
    if wanted:
        # the last N decisions rows (by time): the training-set size the goal names
        start = con.execute("SELECT ts FROM decisions ORDER BY ts DESC LIMIT 1 OFFSET ?",
                            [wanted - 1]).fetchone()
        start = start[0] if start else None
    slicing = {"chunk_rows": arg["chunk_rows"]} if arg.get("chunk_rows") else {}
    if kind == "training":  # a pandas frame in memory
        rows = len(build_training_set(con, start=start, **slicing))
    else:  # streamed to Parquet by DuckDB
        rows = write_training_set(con, arg["training_file"], start=start, **slicing)
elif kind == "materialize":
    store = SQLiteOnlineStore(arg["store"])
    ranges = {"range_customers": arg["range_customers"]} if arg.get("range_customers") else {}
    rows = materialize(con, store, as_of=as_of, **ranges)
    store.close()
elif kind == "spark":
    from features.engines import ibis_backend, spark_session
    session = spark_session()
    session.sparkContext.setLogLevel("ERROR")
    backend = ibis_backend(con, "spark", spark=session)
    t0 = time.perf_counter()
    rows = len(customer_features(backend, as_of, engine="spark"))
    build_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    decision_rows = len(build_training_set(backend, engine="spark"))
    training_seconds = time.perf_counter() - t0
seconds = time.perf_counter() - started
# CPU time (all threads) next to wall time: on a shared machine wall time also measures the
# neighbours, CPU time mostly this step.
cpu = cpu_seconds() - cpu_started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# Spark's JVM is a child process: report the larger of the two peaks.
peak_mb = max(peak_mb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
out = {"step": kind, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 1), "peak_mb": round(peak_mb), "rows": rows,
       "customers": counts["customers"], "decisions": counts["decisions"], "events": events,
       "events_per_s": round(events / seconds), "rows_per_s": round(rows / seconds),
       "ns_per_event": round(seconds / events * 1e9, 1)}
if kind == "spark":
    out.update(build_seconds=round(build_seconds, 2), training_seconds=round(training_seconds, 2),
               training_rows=decision_rows)
print(json.dumps(out))
"""


def run_step(kind: str, arg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STEP, kind, json.dumps(arg)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"step {kind} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"step {kind} printed no result")
    return json.loads(lines[-1])


def prepare(workdir: Path, customers: int, days: int, fast_load: bool) -> Path:
    db = workdir / f"warehouse_{customers}_{days}d.duckdb"
    if not db.exists():
        data = workdir / f"data_{customers}_{days}d"
        result = run_step(
            "prepare",
            {
                "customers": customers,
                "days": days,
                "data": str(data),
                "db": str(db),
                "fast_load": fast_load,
            },
        )
        print(
            f"# prepared {customers:,} customers x {days} days in {result['seconds']:.0f} s",
            flush=True,
        )
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="customers per run")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--spark-customers", type=int, default=5000)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument(
        "--steps",
        default="build,training,materialize",
        help="of build, training (pandas), training_file (Parquet, streamed), materialize",
    )
    parser.add_argument(
        "--training-decisions",
        type=int,
        default=0,
        help="build the training set on the last N decisions rows (0 = all)",
    )
    parser.add_argument(
        "--training-share",
        type=float,
        default=0.0,
        help="instead of --training-decisions: the last share (0-1] of each size's decisions",
    )
    parser.add_argument(
        "--chunk-rows", type=int, default=0, help="decisions rows per training-set time slice"
    )
    parser.add_argument(
        "--memory-limit",
        default="6GB",
        help='DuckDB memory_limit (spills to --workdir/duckdb_tmp beyond it); "" = DuckDB default',
    )
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (0 = cores)")
    parser.add_argument(
        "--range-customers",
        type=int,
        default=0,
        help="materialise: customers per id range (0 = features.online.RANGE_CUSTOMERS)",
    )
    parser.add_argument(
        "--fast-load",
        action="store_true",
        help="copy generated event tables straight into the warehouse (no validation)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-features-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for size in [int(s) for s in args.sizes.split(",") if s]:
        db = prepare(workdir, size, args.days, args.fast_load)
        for step in args.steps.split(","):
            arg = {
                "db": str(db),
                "store": str(workdir / f"online_{size}.db"),
                "training_decisions": args.training_decisions,
                "training_share": args.training_share,
                "chunk_rows": args.chunk_rows,
                "training_file": str(workdir / f"training_{size}.parquet"),
                "memory_limit": args.memory_limit,
                "threads": args.threads,
                "range_customers": args.range_customers,
                "temp_directory": str(workdir / "duckdb_tmp"),
            }
            result = run_step(step, arg)
            print(json.dumps(result), flush=True)
            results.append(result)
    if not args.no_spark:
        db = prepare(workdir, args.spark_customers, args.days, args.fast_load)
        result = run_step("spark", {"db": str(db)})
        print(json.dumps(result), flush=True)
        results.append(result)
    print(
        f"\n{'step':<14}{'customers':>11}{'events':>13}{'decisions':>12}{'seconds':>9}{'cpu s':>8}"
        f"{'peak MB':>9}{'events/s':>12}{'ns/event':>10}{'rows':>11}{'rows/s':>10}"
        f"  (workdir {workdir})"
    )
    for r in results:
        print(
            f"{r['step']:<14}{r['customers']:>11,}{r['events']:>13,}{r['decisions']:>12,}"
            f"{r['seconds']:>9.1f}{r.get('cpu_seconds', 0):>8.1f}{r['peak_mb']:>9,}"
            f"{r['events_per_s']:>12,}"
            f"{r['ns_per_event']:>10,.1f}{r['rows']:>11,}{r['rows_per_s']:>10,}"
        )
    print_scaling(results)


def print_scaling(results: list[dict]) -> None:
    """Per step, the cost per event at each size relative to the smallest (flat = 1.0)."""
    steps = dict.fromkeys(r["step"] for r in results if r["step"] != "spark")
    for step in steps:
        runs = sorted((r for r in results if r["step"] == step), key=lambda r: r["events"])
        if len(runs) < 2:
            continue
        base = runs[0]["ns_per_event"]
        cells = ", ".join(
            f"{r['events'] / 1e6:.1f}M events {r['ns_per_event']:.0f} ns ({r['ns_per_event'] / base:.2f}x)"
            for r in runs
        )
        print(f"cost per event, {step}: {cells}")


if __name__ == "__main__":
    main()
