"""Batch scoring benchmark: ``recsys score`` of an email touchpoint for every customer.

Steps (data under ``--work``, default ``data/bench_score/``; built once, reused):

1. demo data for ``--customers`` (default 1,000,000) customers, ``--days`` (7) days, seed 7,
   with the catalogue extended to ``--offers`` (200) offers as ``bench_serving.py`` does (the
   ``email_newsletter`` touchpoint then has 81 candidates, ~59 inside their date window, ~50
   eligible per consenting customer); loaded into a warehouse; features materialised to a
   SQLite online store;
2. the champion model of ``--model-db`` (default ``data/bench_serving/mlflow.db``: trained by
   ``bench_serving.py`` on 5,000 customers of the same extended catalogue and feature spec);
3. ``score_customers`` (what ``recsys score`` runs) in this process, with every part of the
   decision path timed: feature lookup (online store), contact history, eligibility,
   decision matrix, predict, priority + policy + batch columns, the rest of the pipeline
   (eligibility, grouping), and writing Parquet. Each chunk is one pipeline run; the
   feature lookup reads the chunk as one columnar block;
4. ``recsys score --touchpoint email_newsletter --dry-run`` end to end (a subprocess; wall
   time includes start-up: model load, customer ids) unless ``--skip-cli``; with
   ``--record`` also a run that logs every decision to a fresh SQLite event log.

``--compare-layouts`` instead runs ``recsys score --dry-run`` end to end with ``--layout
offers`` (one row per offer) and ``--layout recipients`` (one row per recipient, the email
list), alternating, ``--rounds`` times each on the same data and model, and prints both
medians and recipients/offers.

``--baseline REF`` instead alternates REF (a temporary git worktree) and this checkout,
``recsys score`` end to end on the same data and model (``--record`` adds the logged run),
and prints both sides' medians and new/old (``bench/baseline.py``).

Heavy: run it under the shared lock, ``flock /tmp/bench.lock python bench/bench_score.py``.
Prints one table; numbers also go to ``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import baseline
from workload import BIN, ROOT, data_env, extend_catalogue, forget_event_log, model_cache_env

TOUCHPOINT = "email_newsletter"
PREDICT = "predict"


def run(cmd: list[str], process: dict) -> float:
    """Run ``cmd`` (``process``: the environment and folder of the code); wall seconds."""
    print("$", " ".join(cmd), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, **process, check=True)
    return time.perf_counter() - started


def prepare(work: Path, customers: int, offers: int, days: int, seed: int, process: dict) -> None:
    demo = work / "demo"
    recsys = str(BIN / "recsys")
    if not (demo / "decisions.parquet").exists():
        run(
            [recsys, "data", "generate", "--customers", str(customers), "--days", str(days),
             "--seed", str(seed), "--out", str(demo)],
            process,
        )  # fmt: skip
        extend_catalogue(demo / "offers.yaml", offers, seed)
    if not (work / "warehouse.duckdb").exists():
        run([recsys, "data", "load", str(demo), "--db", str(work / "warehouse.duckdb")], process)
    if not (work / "online.sqlite").exists():
        run([recsys, "features", "materialize", "--store", "sqlite"], process)


class Timer:
    """Seconds spent in wrapped callables, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        return timed


def in_process(env: dict[str, str], n_customers: int | None, chunk: int, out: Path) -> dict:
    """``score_customers`` with every part of the decision path timed."""
    os.environ.update(env)
    import duckdb
    import numpy as np

    import recsys.cli.score as cli
    from recsys.settings import load_settings
    from serving.components import build_components

    settings = load_settings()
    started = time.perf_counter()
    components = build_components(settings)
    startup = time.perf_counter() - started
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    query = "SELECT customer_id FROM customers ORDER BY customer_id"
    if n_customers:
        query += f" LIMIT {int(n_customers)}"
    customer_ids = [r[0] for r in con.execute(query).fetchall()]
    con.close()

    timer = Timer()
    pipeline = components.pipeline
    pipeline.features.read = timer.wrap("feature lookup (online store)", pipeline.features.read)
    pipeline.history.contact_history = timer.wrap(
        "contact history", pipeline.history.contact_history
    )
    model = components.holder.current.model
    model.matrix.build = timer.wrap("decision matrix", model.matrix.build)
    rows_scored = []
    timed_score = timer.wrap(PREDICT, model.scorer.score)

    def score(rows):
        rows_scored.append(rows.matrix.shape[0])
        return timed_score(rows)

    model.scorer.score = score
    pipeline._decide_group = timer.wrap("priority, policy, batch columns", pipeline._decide_group)

    timings: dict[str, float] = {}
    summary = cli.score_customers(
        pipeline,
        customer_ids,
        TOUCHPOINT,
        out,
        chunk=chunk,
        record=False,
        progress=False,
        timings=timings,
    )
    components.close()
    parts = dict(timer.seconds)
    predict = parts[PREDICT]
    rows = {
        **parts,
        "main thread: waiting for decisions, gc": timings["decide (waiting)"],
        "main thread: writing (to Arrow + Parquet)": timings["write"],
    }
    pairs = sum(rows_scored)
    return {
        "customers": summary.customers,
        "customers_with_offers": summary.customers_with_offers,
        "rows_written": summary.rows,
        "model_rows": pairs,
        "seconds": summary.seconds,
        "startup_seconds": startup,
        "parts": rows,
        "predict_us_per_row": predict / max(pairs, 1) * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "numpy": np.__version__,
    }


def cli_score(
    side: baseline.Side,
    env: dict[str, str],
    args: argparse.Namespace,
    *,
    record: bool,
    customers: int | None,
    layout: str | None = None,
) -> float:
    """``recsys score`` of ``side`` end to end (wall seconds, start-up included), the first
    ``customers`` (all when None), in ``layout`` (None: the side's default, so that a REF
    from before ``--layout`` runs too); a logged run starts from an empty log."""
    work: Path = args.work
    cmd = [str(BIN / "recsys"), "score", "--touchpoint", TOUCHPOINT, "--chunk", str(args.chunk)]
    if layout is not None:
        cmd += ["--layout", layout]
    if customers:
        cmd += ["--max-customers", str(customers)]
    if record:
        forget_event_log(work / "events.sqlite")
    out = work / f"email_{side.name}_{layout or 'default'}{'_rec' if record else ''}.parquet"
    return run([*cmd, "--out", str(out), "--record" if record else "--dry-run"], side.process(env))


def compare_with_baseline(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Alternate ``args.baseline`` and this checkout, ``recsys score`` end to end."""
    customers = f"{args.score or args.customers:,} customers"
    metrics = [
        baseline.Metric(
            "score_seconds",
            f"recsys score --dry-run, {customers}",
            "s",
            baseline.Guard.ratio_at_most(1.15),
        )
    ]
    if args.record:
        metrics.append(
            baseline.Metric("record_seconds", f"recsys score --record, {customers}", "s")
        )

    def env_of(side: baseline.Side) -> dict[str, str]:
        return {**env, **model_cache_env(args.work, side.name)}

    def measure(side: baseline.Side) -> dict[str, float]:
        sample = {
            "score_seconds": cli_score(side, env_of(side), args, record=False, customers=args.score)
        }
        if args.record:
            sample["record_seconds"] = cli_score(
                side, env_of(side), args, record=True, customers=args.score
            )
        return sample

    def warm(side: baseline.Side) -> None:  # compiles the side's model once, before timing
        cli_score(side, env_of(side), args, record=False, customers=100)

    baseline.compare(
        args.baseline, args.rounds, measure, metrics, args.work / "baseline.json", warm=warm
    )


def layout_costs(env: dict[str, str], n_customers: int | None, chunk: int, rounds: int) -> dict:
    """In process: the chunks decided once (dry run), then written in each layout,
    alternating ``rounds`` times: the layouts' own cost, apart from the deciding."""
    os.environ.update(env)
    import tempfile

    import duckdb
    import pyarrow.parquet as pq

    from recsys.cli.score import LAYOUTS
    from recsys.decision import DecisionRequest
    from recsys.settings import load_settings
    from serving.components import build_components

    settings = load_settings(lifecycle={"breaker_slow_ms": 600_000.0})
    components = build_components(settings)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    query = "SELECT customer_id FROM customers ORDER BY customer_id"
    if n_customers:
        query += f" LIMIT {int(n_customers)}"
    ids = [r[0] for r in con.execute(query).fetchall()]
    con.close()
    pipeline = components.pipeline
    slots = pipeline.catalog.touchpoints[TOUCHPOINT].slots
    now = pipeline.clock()
    started = time.perf_counter()
    batches = [
        pipeline.run(
            [DecisionRequest(c, TOUCHPOINT, limit=slots) for c in ids[i : i + chunk]],
            now,
            record=False,
        )
        for i in range(0, len(ids), chunk)
    ]
    decide = time.perf_counter() - started
    seconds: dict[str, list[float]] = {name: [] for name in ("offers", "recipients")}
    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name in seconds:
                layout = LAYOUTS[name](pipeline.catalog, TOUCHPOINT, slots)
                t0 = time.perf_counter()
                writer = pq.ParquetWriter(Path(tmp) / f"{name}.parquet", layout.schema())
                rows[name] = 0
                for batch in batches:
                    table = layout.to_arrow(batch)
                    rows[name] += table.num_rows
                    writer.write_table(table)
                writer.close()
                seconds[name].append(time.perf_counter() - t0)
    components.close()
    return {"customers": len(ids), "decide_seconds": decide, "write_seconds": seconds,
            "rows": rows}  # fmt: skip


def compare_layouts(args: argparse.Namespace, env: dict[str, str]) -> None:
    """``recsys score --dry-run`` per layout, alternating; medians and recipients/offers."""
    import statistics

    side = baseline.current()
    env_side = {**env, **model_cache_env(args.work, side.name)}
    cli_score(side, env_side, args, record=False, customers=100, layout="offers")  # compiles
    seconds: dict[str, list[float]] = {"offers": [], "recipients": []}
    for _ in range(args.rounds):
        for layout in seconds:
            seconds[layout].append(
                cli_score(side, env_side, args, record=False, customers=args.score, layout=layout)
            )
    median = {layout: statistics.median(values) for layout, values in seconds.items()}
    n = args.score or args.customers
    print(f"\nrecsys score --dry-run {TOUCHPOINT}, {n:,} customers, {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs (wall, start-up included)")  # fmt: skip
    for layout, values in seconds.items():
        print(f"  --layout {layout:<11} median {median[layout]:7.1f} s   runs {values}")
    print(f"  recipients / offers: {median['recipients'] / median['offers']:.3f}")
    out = subprocess.run(
        [sys.executable, __file__, "--in-process", "--layout-costs", "--work", str(args.work),
         "--model-db", str(args.model_db), "--chunk", str(args.chunk), "--rounds",
         str(args.rounds)] + (["--score", str(args.score)] if args.score else []),
        **side.process(env_side), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    costs = baseline.parse_result(out)
    write = {name: statistics.median(v) for name, v in costs["write_seconds"].items()}
    decide = costs["decide_seconds"]
    print(f"in process, {costs['customers']:,} customers decided once in {decide:.1f} s, then "
          f"written (Parquet) in each layout, {args.rounds} round(s), medians:")  # fmt: skip
    for name, value in write.items():
        print(f"  --layout {name:<11} write {value:6.2f} s  ({costs['rows'][name]:,} rows)")
    ratio = (decide + write["recipients"]) / (decide + write["offers"])
    print(f"  recipients / offers, decide + write: {ratio:.3f}")
    (args.work / "layouts.json").write_text(
        json.dumps({"seconds": seconds, "median": median, "in_process": costs})
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000, help="dataset size")
    parser.add_argument("--score", type=int, default=None, help="score only the first N")
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_score")
    parser.add_argument(
        "--model-db", type=Path, default=ROOT / "data" / "bench_serving" / "mlflow.db"
    )
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--skip-cli", action="store_true", help="no end-to-end CLI run")
    parser.add_argument("--record", action="store_true", help="also a CLI run that logs")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout-costs", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare-layouts",
        action="store_true",
        help="recsys score end to end per --layout (offers, recipients), --rounds times",
    )
    baseline.add_arguments(parser)
    args = parser.parse_args()
    args.work, args.model_db = args.work.resolve(), args.model_db.resolve()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not args.model_db.exists():
        sys.exit(f"no model registry at {args.model_db}: run bench/bench_serving.py first")
    events = work / "events.sqlite"
    env = {**os.environ, **data_env(work, events, args.model_db)}
    new = baseline.current()
    prepare(work, args.customers, args.offers, args.days, args.seed, new.process(env))
    if args.prepare_only:
        return
    if args.in_process and args.layout_costs:
        baseline.emit_result(layout_costs(env, args.score, args.chunk, args.rounds))
        return
    if args.in_process:  # child: one clean process per measurement
        baseline.emit_result(
            in_process(env, args.score, args.chunk, work / "score_inprocess.parquet")
        )
        return
    if args.compare_layouts:
        forget_event_log(events)
        compare_layouts(args, env)
        return
    if args.baseline:
        compare_with_baseline(args, env)
        return

    # Every run starts from an empty event log (no contacts yet), dry runs and --record alike.
    forget_event_log(events)
    env_new = {**env, **model_cache_env(work, new.name)}
    out = subprocess.run(
        [sys.executable, __file__, "--in-process", "--work", str(work), "--model-db",
         str(args.model_db), "--chunk", str(args.chunk)]
        + (["--score", str(args.score)] if args.score else []),
        **new.process(env_new), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    results = {"in_process": baseline.parse_result(out)}
    if not args.skip_cli:
        results["cli_dry_run_wall_seconds"] = cli_score(
            new, env_new, args, record=False, customers=args.score
        )
    if args.record:
        results["cli_record_wall_seconds"] = cli_score(
            new, env_new, args, record=True, customers=args.score
        )
    print_table(results, args)
    (work / "results.json").write_text(json.dumps(results, indent=2))


def print_table(results: dict, args: argparse.Namespace) -> None:
    r = results["in_process"]
    n = r["customers"]
    print()
    print(
        f"recsys score {TOUCHPOINT}: {n:,} customers, {r['model_rows']:,} model rows "
        f"({r['model_rows'] / n:.1f} eligible offers per customer), "
        f"{r['customers_with_offers']:,} customers served, {r['rows_written']:,} rows written; "
        f"chunk {args.chunk:,}; {os.cpu_count()} CPUs"
    )
    print(f"{'part':<44}{'seconds':>10}{'us/customer':>14}{'share':>8}")
    for label, seconds in r["parts"].items():
        print(
            f"{label:<44}{seconds:>10.2f}{seconds / n * 1e6:>14.1f}{seconds / r['seconds']:>8.0%}"
        )
    print(f"{'total (score_customers, in process)':<44}{r['seconds']:>10.2f}"
          f"{r['seconds'] / n * 1e6:>14.1f}")  # fmt: skip
    print(
        f"predict: {r['predict_us_per_row']:.2f} us per model row (all threads); "
        f"start-up (model, store, catalogue): {r['startup_seconds']:.1f} s; "
        f"peak RSS {r['peak_rss_mb']:,.0f} MB"
    )
    if "cli_dry_run_wall_seconds" in results:
        print(
            f"recsys score --dry-run, end to end (wall): {results['cli_dry_run_wall_seconds']:.1f} s"
        )
    if "cli_record_wall_seconds" in results:
        print(
            f"recsys score --record, end to end (wall): {results['cli_record_wall_seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
