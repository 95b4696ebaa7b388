"""Offer report at scale: `recsys report offers` on a large SQLite event log.

A synthetic log (experiments.synthetic: 10 offers, 3 touchpoints, clicks, accepts with revenue
and dismissals) of ``--decisions`` decisions over 28 days is written to a SQLite event log file
(the default event log). Measured: the whole report as the command runs it (the SQLite tables
copied into DuckDB by ``open_event_log``, the query, offers.html and offers.csv), and the query
alone on the DuckDB copy; wall time, CPU seconds and the process's peak memory (ru_maxrss).

Usage: python bench/bench_offer_report.py [--decisions 2000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.moments import SQLSource, open_event_log
from experiments.offer_performance import offer_performance
from experiments.offer_report import write_offer_report
from experiments.synthetic import DECISIONS_DDL, EVENTS_DDL, SyntheticExperiment, generate


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sqlite_log(path: Path, spec: SyntheticExperiment) -> tuple[int, int]:
    """The synthetic log in a SQLite file with the event log's tables; (decisions, events)."""
    import duckdb

    duck = duckdb.connect()
    generate(duck, spec)
    lite = sqlite3.connect(path)
    lite.execute(DECISIONS_DDL.format(decisions="decisions"))
    lite.execute(EVENTS_DDL.format(events="events"))
    counts = []
    for table in ("decisions", "events"):
        cursor = duck.execute(f"SELECT * FROM {table}")
        n = 0
        while batch := cursor.fetchmany(100_000):
            marks = ", ".join("?" * len(batch[0]))
            lite.executemany(f"INSERT INTO {table} VALUES ({marks})", batch)
            n += len(batch)
        counts.append(n)
    lite.commit()
    lite.close()
    duck.close()
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=200_000)
    args = parser.parse_args()
    spec = SyntheticExperiment(
        customers=args.customers, decisions=args.decisions, pre_decisions=0, days=28
    )
    with tempfile.TemporaryDirectory(prefix="bench_offer_report_") as tmp:
        log = Path(tmp) / "events.sqlite"
        t0 = time.perf_counter()
        decisions, events = _sqlite_log(log, spec)
        print(
            f"log: {decisions:,} decisions and {events:,} events over 28 days, written to "
            f"SQLite in {time.perf_counter() - t0:.0f} s"
        )
        t0, c0 = time.perf_counter(), _cpu()
        with open_event_log(f"sqlite:///{log}") as source:
            copied = time.perf_counter() - t0
            q0 = time.perf_counter()
            report = offer_performance(source, None, since=spec.start, until=spec.end)
            query = time.perf_counter() - q0
            paths = write_offer_report(report, tmp)
            whole, cpu = time.perf_counter() - t0, _cpu() - c0
            assert isinstance(source, SQLSource)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        html_mb = paths["html"].stat().st_size / 1e6
    assert report.total.impressions == decisions
    print(
        f"report offers: {whole:.1f} s wall, {cpu:.0f} CPU s ({os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f}): SQLite copied into DuckDB {copied:.1f} s, query "
        f"{query:.1f} s, files {whole - copied - query:.1f} s (offers.html {html_mb:.1f} MB); "
        f"peak memory {peak_gb:.2f} GB"
    )


if __name__ == "__main__":
    main()
