"""Benchmark: demo-data generation and warehouse load, wall time and peak memory.

Each step runs in its own Python process so its peak RSS is its own.
Usage: python bench/bench_data.py [--sizes 10000,1000000] [--days 90] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys, time
from pathlib import Path
kind, arg = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
if kind == "generate":
    from recsys.datagen import generate_dataset
    summary = generate_dataset(customers=arg["customers"], days=arg["days"], seed=7,
                               out=Path(arg["out"]), progress=False)
    rows = sum(getattr(summary, "rows", {}).values()) if hasattr(summary, "rows") else None
else:
    from recsys import warehouse
    from recsys.loading import load_directory
    con = warehouse.connect(arg["db"])
    summary = load_directory(arg["out"], con)
    rows = sum(t.rows_read for t in summary.tables)
    con.close()
seconds = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "rows": rows}))
"""


def run_step(kind: str, arg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEP, kind, json.dumps(arg)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    total = 0
    for path in folder.glob("*.parquet"):
        total += pq.ParquetFile(path).metadata.num_rows
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    print(
        f"{'customers':>10} {'step':<9} {'rows':>12} {'seconds':>9} {'rows/s':>12} {'peak MB':>9}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        out = workdir / f"demo_{size}"
        db = workdir / f"wh_{size}.duckdb"
        shutil.rmtree(out, ignore_errors=True)
        db.unlink(missing_ok=True)
        gen = run_step("generate", {"customers": size, "days": args.days, "out": str(out)})
        rows = count_rows(out)
        load = run_step("load", {"out": str(out), "db": str(db)})
        for step, result in (("generate", gen), ("load", load)):
            print(
                f"{size:>10,} {step:<9} {rows:>12,} {result['seconds']:>9.1f} "
                f"{rows / result['seconds']:>12,.0f} {result['peak_mb']:>9,.0f}",
                flush=True,
            )
        shutil.rmtree(out, ignore_errors=True)
        db.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
