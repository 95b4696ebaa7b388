"""Benchmark: the feature pipelines on DuckDB and on local Spark, on the same warehouse.

Generates (or reuses) demo data (``recsys.datagen``) of ``--customers`` x ``--days`` (default
180,000 x 70: about 10.1M events over transactions + interactions + decisions + outcomes, at
~56 events per customer in 70 days), loads it into a DuckDB warehouse (event tables copied
straight in, as ``bench_features.py --fast-load``), then runs each step in its own Python
process so its peak memory is its own:

- ``*_build``: every customer's features as of the end of the data (``customer_features``);
- ``*_training_file``: the training set over all logged decisions (or the last
  ``--training-decisions``) written to Parquet: ``write_training_set`` on DuckDB; on Spark the
  join runs on Spark and is written in parallel, then the same context flattening and sort;
- ``*_training``: the same as a pandas frame (``build_training_set``); the whole 10M-event
  training set (4.3M rows x 126 columns) takes ~15 GB this way, so use a window.

Spark steps start a ``spark_session`` (``--master``, default ``local[2]``), export the
warehouse to Parquet (``features.engines.spark_backend``, deleted at the end) and run the same
Ibis expressions. Reported per step: pipeline seconds (startup and export apart), peak memory
of the whole process tree (Python + the Spark JVM, sampled every 100 ms) and each process's
own high-water mark, rows, events and events/s. Then the engines are compared: same row
counts, same values on a sample of customers, same column totals.

    python bench/bench_features_spark.py [--customers 180000] [--days 70] [--workdir DIR]
        [--engines duckdb,spark] [--parts build,training_file] [--training-decisions N]
        [--shuffle-partitions 32]
        [--driver-memory 4g] [--duckdb-memory-limit 8GB] [--sample 300] [--timeout 5400]

Heavy: run under ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil

EVENT_TABLES = ("transactions", "interactions", "decisions", "outcomes")
PARTS = ("build", "training", "training_file")


# --- inside a step process -------------------------------------------------------------------


class TreeMemory:
    """Peak resident memory of this process plus all its descendants (the Spark JVM)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        total = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._tree_rss())

    def start(self) -> TreeMemory:
        self.peak = self._tree_rss()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss())

    def cpu_seconds(self) -> float:
        """User + system CPU of this process and its live descendants so far."""
        total = sum(self.process.cpu_times()[:2])
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total

    def high_water_marks(self) -> tuple[int, int]:
        """Kernel peak RSS (VmHWM) of this process and the largest descendant, in bytes."""
        children = [_vm_hwm(c.pid) for c in self.process.children(recursive=True)]
        return _vm_hwm(self.process.pid), max(children, default=0)


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _numeric_totals(frame) -> dict[str, float]:
    numeric = frame.select_dtypes(include="number")
    return {c: float(numeric[c].astype("float64").sum()) for c in numeric.columns}


def _file_summary(path: Path, sample: list[str], memory_limit: str) -> tuple[int, int, Any, dict]:
    """Rows, columns, the sampled customers' rows and numeric column totals of a Parquet file
    (read by DuckDB, so the training set never has to fit in memory)."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": memory_limit})
    try:
        source = f"read_parquet('{_sql_path(path)}')"
        schema = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        numeric = [name for name, dtype, *_ in schema if dtype.split("(")[0] in NUMERIC_TYPES]
        sums = ", ".join(f'sum(CAST("{c}" AS DOUBLE))' for c in numeric)
        rows, *values = con.execute(f"SELECT count(*), {sums} FROM {source}").fetchone()
        con.execute("CREATE TEMP TABLE picked (customer_id VARCHAR)")
        con.executemany("INSERT INTO picked VALUES (?)", [[c] for c in sample])
        picked = con.execute(
            f"SELECT * FROM {source} WHERE customer_id IN (SELECT customer_id FROM picked) "
            "ORDER BY ts, decision_id, offer_id"
        ).df()
    finally:
        con.close()
    totals = {c: float(v or 0.0) for c, v in zip(numeric, values, strict=True)}
    return rows, len(schema), picked, totals


NUMERIC_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
    "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL",
}  # fmt: skip


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _spark_training_file(backend, start, out: Path, workdir: Path, memory_limit: str) -> dict:
    """What ``write_training_set`` does on DuckDB, with the join on Spark.

    Spark runs the training-set expression and writes Parquet in parallel (nothing is
    collected to the driver); the request-context flattening and the sort, engine-independent
    steps of ``features.training_set``, then run in a local DuckDB over those files.
    """
    import duckdb

    from features.training_set import _context_keys, _final_sql, training_set_expr

    joined = workdir / "spark_training_join"
    shutil.rmtree(joined, ignore_errors=True)
    started = time.perf_counter()
    backend.to_parquet(training_set_expr(backend, start=start), joined)
    join_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # The Spark JVM keeps its heap until the process ends: sort within a smaller DuckDB limit.
    con = duckdb.connect(
        config={"memory_limit": memory_limit, "temp_directory": str(workdir / "duckdb_tmp")}
    )
    try:
        source = f"read_parquet('{_sql_path(joined)}/*.parquet')"
        keys = _context_keys(con, source)
        con.execute(f"COPY ({_final_sql(source, keys)}) TO '{_sql_path(out)}' (FORMAT parquet)")
    finally:
        con.close()
        shutil.rmtree(joined, ignore_errors=True)
    return {"join_seconds": join_seconds, "finish_seconds": time.perf_counter() - started}


def run_step(kind: str, arg: dict) -> dict:
    """One engine x part, in this (fresh) process; returns the JSON result."""
    from features.pipeline import customer_features
    from features.training_set import build_training_set, write_training_set
    from recsys import warehouse

    engine, part = kind.split("_", 1)
    workdir = Path(arg["workdir"])
    load_start = os.getloadavg()[0]
    memory = TreeMemory().start()
    total_started = time.perf_counter()
    # DuckDB's limit (the warehouse default, 4 GB, is too small for a training set of
    # millions of rows: "failed to pin block"); beyond it DuckDB spills to disk.
    con = warehouse.connect(arg["db"], read_only=True, memory_limit=arg["duckdb_memory_limit"])
    counts = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("customers", *EVENT_TABLES)
    }
    events = sum(counts[t] for t in EVENT_TABLES)
    as_of = con.execute("SELECT max(ts) FROM decisions").fetchone()[0] + timedelta(seconds=1)
    start = None
    if arg["training_decisions"]:  # the last N decisions rows (by time)
        found = con.execute(
            "SELECT ts FROM decisions ORDER BY ts DESC LIMIT 1 OFFSET ?",
            [arg["training_decisions"] - 1],
        ).fetchone()
        start = found[0] if found else None
    session, timings = None, {}
    out_file = workdir / f"{kind}.parquet"

    def compute(source, engine_name: str) -> tuple[int, int, Any, dict]:
        started = time.perf_counter()
        if part == "training_file":
            if engine_name == "duckdb":
                write_training_set(source, out_file, start=start)
            else:
                timings.update(_spark_training_file(source, start, out_file, workdir, "4GB"))
            timings["seconds"] = time.perf_counter() - started
            return _file_summary(out_file, arg["sample"], arg["duckdb_memory_limit"])
        if part == "build":
            frame = customer_features(source, as_of, engine=engine_name)
        else:
            frame = build_training_set(source, start=start, engine=engine_name)
        timings["seconds"] = time.perf_counter() - started
        sample = frame[frame["customer_id"].isin(arg["sample"])].reset_index(drop=True)
        return len(frame), frame.shape[1], sample, _numeric_totals(frame)

    if engine == "duckdb":
        rows, columns, sample, totals = compute(con, "duckdb")
    else:
        from features.engines import spark_backend, spark_session

        started = time.perf_counter()
        session = spark_session(
            master=arg["master"],
            shuffle_partitions=arg["shuffle_partitions"],
            driver_memory=arg["driver_memory"],
        )
        session.sparkContext.setLogLevel("ERROR")
        timings["startup_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        with spark_backend(con, spark=session) as backend:
            timings["export_seconds"] = time.perf_counter() - started
            rows, columns, sample, totals = compute(backend, "spark")
    memory.stop()
    cpu_seconds = memory.cpu_seconds()
    python_hwm, jvm_hwm = memory.high_water_marks()
    if session is not None:
        session.stop()
    sample.to_parquet(workdir / f"{kind}_sample.parquet", index=False)
    out_file.unlink(missing_ok=True)
    seconds = timings.pop("seconds")
    mb = 1024 * 1024
    return {
        "step": kind,
        "engine": engine,
        "part": part,
        "seconds": round(seconds, 2),
        "total_seconds": round(time.perf_counter() - total_started, 2),
        **{k: round(v, 2) for k, v in timings.items()},
        "cpu_seconds": round(cpu_seconds, 1),  # whole step, Python + JVM
        # other work on the machine (shared) skews wall times: 1-minute load at start, end
        "load": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "peak_mb": round(memory.peak / mb),
        "python_hwm_mb": round(python_hwm / mb),
        "jvm_hwm_mb": round(jvm_hwm / mb),
        "rows": rows,
        "columns": columns,
        "customers": counts["customers"],
        "decisions": counts["decisions"],
        "events": events,
        "events_per_s": round(events / seconds),
        "rows_per_s": round(rows / seconds),
        "totals": totals,
    }


def prepare_step(arg: dict) -> dict:
    """Generate (unless present) and load the dataset; returns the event counts."""
    from recsys import warehouse
    from recsys.contract import TABLES
    from recsys.datagen import generate_dataset
    from recsys.loading import load_directory

    started = time.perf_counter()
    data = Path(arg["data"])
    if not (data / "decisions.parquet").exists():
        generate_dataset(
            customers=arg["customers"], days=arg["days"], seed=7, out=data, progress=False
        )
    generated = time.perf_counter() - started
    db = Path(arg["db"])
    partial = db.with_suffix(".loading")
    partial.unlink(missing_ok=True)
    con = warehouse.connect(str(partial))
    # Generated data is valid by construction: validate and load the dimensions, copy the
    # event tables straight in (the loader's own benchmark is bench_data.py).
    dims = data / "dimensions"
    dims.mkdir(exist_ok=True)
    for name in ("customers.parquet", "offers.yaml", "touchpoints.yaml"):
        shutil.copy(data / name, dims / name)
    load_directory(dims, con)
    for table in EVENT_TABLES:
        cols = ", ".join(f'"{c.name}"' for c in TABLES[table].columns)
        path = str(data / f"{table}.parquet").replace("'", "''")
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM read_parquet('{path}')")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in EVENT_TABLES}
    con.close()
    partial.rename(db)  # only a complete warehouse is ever reused
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "generate_seconds": round(generated, 1),
        **counts,
    }


# --- the orchestrator ------------------------------------------------------------------------


def code_version() -> str:
    """Short hash of the feature code measured (other sessions may be changing it)."""
    import hashlib

    import features

    digest = hashlib.sha256()
    for name in ("definitions.py", "engines.py", "pipeline.py", "training_set.py"):
        digest.update((Path(features.__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def spawn(kind: str, arg: dict, log: Path, timeout: float) -> dict:
    """Run ``kind`` in a new process (its own process group); its stderr goes to ``log``."""
    command = [sys.executable, __file__, "--step", kind, json.dumps(arg)]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and its JVM, nothing else
            proc.communicate()
            return {"step": kind, "error": f"timed out after {timeout:.0f} s (log: {log})"}
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.stderr.write(f"--- {kind} failed (exit {proc.returncode}), end of {log}:\n{tail}\n")
        return {"step": kind, "error": f"exit code {proc.returncode} (log: {log})"}
    return json.loads(out.strip().splitlines()[-1])


def prepare(workdir: Path, customers: int, days: int, timeout: float) -> Path:
    db = workdir / f"warehouse_{customers}_{days}d.duckdb"
    if not db.exists():
        arg = {
            "customers": customers,
            "days": days,
            "data": str(workdir / f"data_{customers}_{days}d"),
            "db": str(db),
        }
        result = spawn("prepare", arg, workdir / "prepare.log", timeout)
        if "error" in result:
            raise SystemExit(f"preparing the dataset failed: {result['error']}")
        print(f"# prepared {customers:,} customers x {days} days: {json.dumps(result)}", flush=True)
    return db


def sample_customers(db: Path, n: int) -> list[str]:
    """``n`` customers picked by a hash of their id (the same on every run)."""
    from recsys import warehouse

    con = warehouse.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT customer_id FROM customers ORDER BY hash(customer_id), customer_id LIMIT ?",
            [n],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def compare(results: dict[str, dict], workdir: Path) -> list[str]:
    """Differences between the engines (empty when they agree)."""
    import pandas as pd

    problems = []
    for part in PARTS:
        duck, spark = results.get(f"duckdb_{part}"), results.get(f"spark_{part}")
        if not duck or not spark or "error" in duck or "error" in spark:
            continue
        if duck["rows"] != spark["rows"]:
            problems.append(f"{part}: {duck['rows']:,} rows on DuckDB, {spark['rows']:,} on Spark")
        left = pd.read_parquet(workdir / f"duckdb_{part}_sample.parquet")
        right = pd.read_parquet(workdir / f"spark_{part}_sample.parquet")
        try:
            pd.testing.assert_frame_equal(right, left, check_dtype=False)
        except AssertionError as exc:
            problems.append(f"{part}: sample of {len(left)} rows differs: {str(exc)[:500]}")
        for col, value in duck["totals"].items():
            other = spark["totals"].get(col)
            if other is None:
                problems.append(f"{part}: column {col} missing on Spark")
            elif abs(other - value) > 1e-6 * max(1.0, abs(value)):
                problems.append(
                    f"{part}: total of {col} is {value!r} on DuckDB, {other!r} on Spark"
                )
        print(
            f"# {part}: {duck['rows']:,} rows on both engines; sample of {len(left)} rows "
            f"({len(duck['totals'])} numeric column totals) compared",
            flush=True,
        )
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=180_000)
    parser.add_argument("--days", type=int, default=70)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsys-bench-features-spark",
        help="reused between runs: data and warehouse are only made when missing",
    )
    parser.add_argument("--engines", default="duckdb,spark")
    parser.add_argument(
        "--parts",
        default="build,training_file",
        help="of build, training (a pandas frame, build_training_set), training_file "
        "(Parquet, as write_training_set)",
    )
    parser.add_argument(
        "--training-decisions",
        type=int,
        default=0,
        help="training sets of the last N decisions rows only (0 = all)",
    )
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=32)
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument(
        "--duckdb-memory-limit", default="8GB", help="DuckDB memory_limit of every step"
    )
    parser.add_argument("--sample", type=int, default=300, help="customers compared value by value")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds per step")
    args = parser.parse_args()
    for name, values, allowed in (
        ("engines", args.engines, ("duckdb", "spark")),
        ("parts", args.parts, PARTS),
    ):
        bad = [v for v in values.split(",") if v not in allowed]
        if bad:
            parser.error(f"--{name} must be a comma list of {', '.join(allowed)}, got {bad}")

    args.workdir.mkdir(parents=True, exist_ok=True)
    db = prepare(args.workdir, args.customers, args.days, args.timeout)
    sample = sample_customers(db, args.sample)
    print(f"# features code {code_version()}", flush=True)
    results: dict[str, dict] = {}
    for engine in args.engines.split(","):
        for part in args.parts.split(","):
            kind = f"{engine}_{part}"
            arg = {
                "db": str(db),
                "sample": sample,
                "workdir": str(args.workdir),
                "training_decisions": args.training_decisions,
                "master": args.master,
                "shuffle_partitions": args.shuffle_partitions,
                "driver_memory": args.driver_memory,
                "duckdb_memory_limit": args.duckdb_memory_limit,
            }
            result = spawn(kind, arg, args.workdir / f"{kind}.log", args.timeout)
            results[kind] = result
            print(json.dumps({k: v for k, v in result.items() if k != "totals"}), flush=True)

    print(
        f"\n{'step':<21}{'events':>12}{'rows':>11}{'seconds':>9}{'+start':>8}{'+export':>9}"
        f"{'CPU s':>8}{'peak MB':>9}{'py MB':>8}{'JVM MB':>8}{'events/s':>11}{'rows/s':>10}"
        f"  (workdir {args.workdir})"
    )
    for kind, r in results.items():
        if "error" in r:
            print(f"{kind:<21}  FAILED: {r['error']}")
            continue
        print(
            f"{kind:<21}{r['events']:>12,}{r['rows']:>11,}{r['seconds']:>9.1f}"
            f"{r.get('startup_seconds', 0):>8.1f}{r.get('export_seconds', 0):>9.1f}"
            f"{r['cpu_seconds']:>8.0f}{r['peak_mb']:>9,}{r['python_hwm_mb']:>8,}{r['jvm_hwm_mb']:>8,}"
            f"{r['events_per_s']:>11,}{r['rows_per_s']:>10,}"
        )
    problems = compare(results, args.workdir)
    for problem in problems:
        print(f"MISMATCH {problem}")
    failed = [k for k, r in results.items() if "error" in r]
    if problems or failed:
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--step":
        step_kind, step_arg = sys.argv[2], json.loads(sys.argv[3])
        if step_kind == "prepare":
            print(json.dumps(prepare_step(step_arg)))
        else:
            print(json.dumps(run_step(step_kind, step_arg)))
    else:
        main()
