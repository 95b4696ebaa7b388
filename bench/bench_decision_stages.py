"""Where one decision's time goes, hot, with cold caches (the service's case) and in a batch.

In the service a worker decides ~500 times a second, so its decisions run ~2 ms apart and a
decision costs more CPU than the same decision back to back in process. This bench shows
why: it times each step of the decision path (features read, contact history, eligibility
groups, matrix, model, slates, decision objects, event-log write) for the bench data of
``bench/bench_serving.py`` (the wrk script's mix of customers and realtime touchpoints,
every decision logged to a scratch SQLite event log), in these conditions, alternating:

- ``hot``: one decision at a time, back to back;
- ``l2_evicted``: a 4 MiB buffer written before each decision (more than this host's L2);
- ``l3_evicted``: a 64 MiB buffer written before each decision (more than its L3);
- ``paused``: a 2 ms sleep before each decision, as in the service at 1,000/s;
- ``batch32``: 32 requests decided in one call, back to back (per decision).

If ``paused`` costs what ``l3_evicted`` costs and ``l2_evicted`` what ``hot`` costs, the
pause loses the decision's memory from the shared L3 cache (to the host's other tenants)
and every step pays for reading it again from memory.

Run: ``python bench/bench_decision_stages.py`` (builds the bench data with
``bench_serving.py --prepare-only`` when it is missing). Prints microseconds per decision
per step and condition (median of ``--repeats`` passes of ``--decisions`` decisions), then a
line ``RESULT {json}`` with the same numbers. ``--baseline REF`` compares the CPU per
decision (one request, a batch of 32) with commit REF instead (``bench/baseline.py``).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import baseline
import numpy as np
from workload import REALTIME, ROOT, data_env, model_cache_env, policy_env

#: Diagnostic timers: the pipeline's stages (``_groups`` includes the feature read, the
#: history read and eligibility; ``_score`` includes the matrix, ``_rows``).
STEPS = ("features", "history", "_groups", "_rows", "_score", "_decide_group", "_record")
CONDITIONS = ("hot", "l2_evicted", "l3_evicted", "paused", "batch32")
BATCH = 32
TOTAL_CPU = "total (CPU)"

METRICS = (
    baseline.Metric(
        "decision_cpu_us",
        "CPU per decision, one request (in process)",
        "us",
        baseline.Guard.ratio_at_most(1.25),
    ),
    baseline.Metric(
        "batch32_cpu_us",
        "CPU per decision, batch of 32 (in process)",
        "us",
        baseline.Guard.ratio_at_most(1.25),
    ),
    baseline.Metric("paused_cpu_us", "CPU per decision, 2 ms apart (in process)", "us"),
)


def build(env: dict[str, str]):
    """The components a decision needs, built as the service builds them (the composition
    root), once the environment ``env`` names the bench data."""
    os.environ.update(env)
    from recsys.settings import load_settings
    from serving.components import build_components

    return build_components(load_settings())


def decide(components, requests: Sequence) -> None:
    """The call under measurement: the decision path for ``requests``, every decision logged
    (what the service's decision thread calls)."""
    components.decide(requests)


def instrument(components, spent: dict[str, float]) -> None:
    """Time the pipeline's stages into ``spent`` (seconds by step). Diagnostic only: these
    names follow the pipeline's internals, and the totals do not depend on them."""

    def timed(step: str, method: Callable) -> Callable:
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[step] += time.perf_counter() - started

        return run

    pipeline = components.pipeline
    for step in STEPS[2:]:
        setattr(pipeline, step, timed(step, getattr(pipeline, step)))
    pipeline.features.read = timed("features", pipeline.features.read)
    pipeline.history.contact_history = timed("history", pipeline.history.contact_history)


def measure(args: argparse.Namespace, conditions: Sequence[str]) -> dict:
    """Microseconds per decision, by condition and step (medians over the passes)."""
    scratch = Path(tempfile.mkdtemp(prefix="recsys-stages-"))
    components = build(
        {
            **data_env(args.work, scratch / "events.sqlite"),
            **model_cache_env(args.work, "this"),
            **policy_env(args.epsilon),
        }
    )
    from recsys.decision import DecisionRequest

    spent: dict[str, float] = defaultdict(float)
    instrument(components, spent)
    rng = random.Random(args.seed)

    def request() -> DecisionRequest:
        if rng.random() < 0.05:
            customer = f"NEW{rng.randint(1, 1_000_000):07d}"
        else:
            customer = f"C{rng.randint(1, args.customers):07d}"
        return DecisionRequest(customer_id=customer, touchpoint_id=rng.choice(REALTIME))

    evict = {"l2_evicted": np.ones(4 * 2**20 // 8), "l3_evicted": np.ones(64 * 2**20 // 8)}

    def one_pass(condition: str) -> dict[str, float]:
        spent.clear()
        cpu = 0.0
        buffer = evict.get(condition)
        size = BATCH if condition == "batch32" else 1
        requests = [request() for _ in range(args.decisions)]
        for i in range(0, len(requests), size):
            if buffer is not None:
                np.add(buffer, 1.0, out=buffer)  # writes every cache line of the buffer
            elif condition == "paused":
                time.sleep(0.002)
            started = time.process_time()
            wall = time.perf_counter()
            decide(components, requests[i : i + size])
            spent["total (wall)"] += time.perf_counter() - wall
            cpu += time.process_time() - started
        per_decision = {step: 1e6 * s / len(requests) for step, s in spent.items()}
        per_decision[TOTAL_CPU] = 1e6 * cpu / len(requests)
        return per_decision

    try:
        for _ in range(300):  # warm: compiled model, prepared offers, caches
            decide(components, [request()])
        passes: dict[str, list[dict[str, float]]] = defaultdict(list)
        for _ in range(args.repeats):
            for condition in conditions:
                passes[condition].append(one_pass(condition))
    finally:
        components.close()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [*STEPS, "total (wall)", TOTAL_CPU]
    return {
        "decisions": args.decisions,
        "repeats": args.repeats,
        "us_per_decision": {
            c: {row: statistics.median(p.get(row, 0.0) for p in passes[c]) for row in rows}
            for c in conditions
        },
    }


def print_table(result: dict) -> None:
    table = result["us_per_decision"]
    conditions = list(table)
    print(f"us per decision, median of {result['repeats']} passes of {result['decisions']}")
    ratio = "paused/hot" if {"hot", "paused"} <= set(conditions) else ""
    print(f"{'step':14s}" + "".join(f"{c:>12s}" for c in conditions) + f"{ratio:>12s}")
    for row in table[conditions[0]]:
        medians = [table[c][row] for c in conditions]
        line = f"{row:14s}" + "".join(f"{m:12.1f}" for m in medians)
        if ratio:
            hot = table["hot"][row]
            line += f"{table['paused'][row] / hot if hot else float('nan'):12.2f}"
        print(line)


def totals(stdout: str) -> dict[str, float]:
    """CPU per decision by condition: from the ``RESULT`` line, or from the printed table of
    a copy of this script that predates that line."""
    result = baseline.parse_result(stdout)
    if result is not None:
        return {c: rows[TOTAL_CPU] for c, rows in result["us_per_decision"].items()}
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("step"))
    row = next(line for line in lines if line.startswith(TOTAL_CPU))
    values = [float(v) for v in row[len(TOTAL_CPU) :].split()]
    return dict(zip(header.split()[1:], values, strict=False))


def decision_cpu(
    side: baseline.Side,
    work: Path,
    *,
    customers: int,
    seed: int,
    decisions: int,
    repeats: int,
    env: dict[str, str],
    conditions: Sequence[str] | None = None,
) -> baseline.Sample:
    """CPU per decision in process, measured by ``side``'s own copy of this script.

    ``conditions`` is passed only when given: older copies do not know the option."""
    cmd = [
        sys.executable,
        str(side.script("bench_decision_stages.py")),
        *("--work", str(work), "--customers", str(customers), "--seed", str(seed)),
        *("--decisions", str(decisions), "--repeats", str(repeats)),
    ]
    if conditions:
        cmd += ["--conditions", ",".join(conditions)]
    done = subprocess.run(cmd, **side.process(env), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{side.name} ({side.commit}): {' '.join(cmd)} exited with {done.returncode}:\n"
            + done.stderr[-3000:]
        )
    by_condition = totals(done.stdout)
    sample = {"decision_cpu_us": by_condition["hot"]}
    for condition, key in (("paused", "paused_cpu_us"), ("batch32", "batch32_cpu_us")):
        if condition in by_condition:
            sample[key] = by_condition[condition]
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_serving")
    parser.add_argument("--decisions", type=int, default=500, help="decisions per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="decide epsilon-greedy with this exploration share [the default serving.policy]",
    )
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated, of {', '.join(CONDITIONS)} (default: all)",
    )
    baseline.add_arguments(parser)
    args = parser.parse_args()
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        parser.error(f"--conditions must be among {', '.join(CONDITIONS)}, got {args.conditions}")

    args.work = args.work.resolve()
    if not (args.work / "mlflow.db").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "bench_serving.py"), "--prepare-only",
             "--work", str(args.work), "--customers", str(args.customers)],
            check=True,
        )  # fmt: skip
    if args.baseline:
        baseline.compare(
            args.baseline,
            args.rounds,
            lambda side: decision_cpu(
                side,
                args.work,
                customers=args.customers,
                seed=args.seed,
                decisions=args.decisions,
                repeats=args.repeats,
                env={**os.environ, **model_cache_env(args.work, side.name)},
            ),
            METRICS,
            args.work / "baseline_stages.json",
        )
        return
    result = measure(args, conditions)
    print_table(result)
    baseline.emit_result(result)


if __name__ == "__main__":
    main()
