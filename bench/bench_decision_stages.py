"""Where one decision's time goes, hot and with cold caches (the service's case).

In the service a worker decides ~500 times a second, so its decisions run ~2 ms apart and a
decision costs more CPU than the same decision back to back in process. This bench shows
why: it times each step of :meth:`recsys.decision.DecisionEngine.decide_many` (features
read, contact history, eligibility groups, matrix, model, slates, decision objects, event-log
write) for the bench data of ``bench/bench_serving.py`` (the wrk script's mix of customers
and realtime touchpoints, every decision logged to a scratch SQLite event log), in four
conditions, alternating, one decision at a time:

- ``hot``: back to back;
- ``l2_evicted``: a 4 MiB buffer written before each decision (more than this host's L2);
- ``l3_evicted``: a 64 MiB buffer written before each decision (more than its L3);
- ``paused``: a 2 ms sleep before each decision, as in the service at 1,000/s.

If ``paused`` costs what ``l3_evicted`` costs and ``l2_evicted`` what ``hot`` costs, the
pause loses the decision's memory from the shared L3 cache (to the host's other tenants)
and every step pays for reading it again from memory.

Run: ``python bench/bench_decision_stages.py`` (builds the bench data with
``bench_serving.py --prepare-only`` when it is missing). Prints microseconds per decision
per step and condition (median of ``--repeats`` passes of ``--decisions`` decisions).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_serving import REALTIME, ROOT, data_env

ENGINE_STEPS = ("_vectors", "_group", "_matrix", "_score", "_finish", "_decisions", "_record")
CONDITIONS = ("hot", "l2_evicted", "l3_evicted", "paused")


def timed(spent: dict[str, float], step: str, method: Callable) -> Callable:
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[step] += time.perf_counter() - started

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_serving")
    parser.add_argument("--decisions", type=int, default=500, help="decisions per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    work: Path = args.work
    if not (work / "mlflow.db").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "bench_serving.py"), "--prepare-only"],
            check=True,
        )
    scratch = Path(tempfile.mkdtemp(prefix="recsys-stages-"))
    os.environ.update(
        {**data_env(work, scratch / "events.sqlite"), "RECSYS_SERVING__EPSILON": "0.05"}
    )
    # Imported once the environment names the bench data.
    from recsys.decision import DecisionRequest
    from recsys.settings import load_settings
    from serving.components import build_components

    components = build_components(load_settings())
    engine = components.engine
    spent: dict[str, float] = defaultdict(float)
    for step in ENGINE_STEPS:
        setattr(engine, step, timed(spent, step, getattr(engine, step)))
    engine.history.contact_history = timed(spent, "_history", engine.history.contact_history)
    rng = random.Random(args.seed)

    def request() -> DecisionRequest:
        if rng.random() < 0.05:
            customer = f"NEW{rng.randint(1, 1_000_000):07d}"
        else:
            customer = f"C{rng.randint(1, args.customers):07d}"
        return DecisionRequest(customer_id=customer, touchpoint_id=rng.choice(REALTIME))

    evict = {
        "l2_evicted": np.ones(4 * 2**20 // 8),
        "l3_evicted": np.ones(64 * 2**20 // 8),
    }

    def one_pass(condition: str) -> dict[str, float]:
        spent.clear()
        cpu = 0.0
        buffer = evict.get(condition)
        for r in [request() for _ in range(args.decisions)]:
            if buffer is not None:
                np.add(buffer, 1.0, out=buffer)  # writes every cache line of the buffer
            elif condition == "paused":
                time.sleep(0.002)
            started = time.process_time()
            wall = time.perf_counter()
            engine.decide(r)
            spent["total (wall)"] += time.perf_counter() - wall
            cpu += time.process_time() - started
        per_decision = {step: 1e6 * s / args.decisions for step, s in spent.items()}
        per_decision["total (CPU)"] = 1e6 * cpu / args.decisions
        return per_decision

    try:
        for _ in range(300):  # warm: compiled model, prepared offers, caches
            engine.decide(request())
        passes: dict[str, list[dict[str, float]]] = defaultdict(list)
        for _ in range(args.repeats):
            for condition in CONDITIONS:
                passes[condition].append(one_pass(condition))
    finally:
        components.close()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [*ENGINE_STEPS[:1], "_history", *ENGINE_STEPS[1:], "total (wall)", "total (CPU)"]
    print(f"us per decision, median of {args.repeats} passes of {args.decisions}")
    print(f"{'step':14s}" + "".join(f"{c:>12s}" for c in CONDITIONS) + f"{'paused/hot':>12s}")
    for row in rows:
        medians = [statistics.median(p.get(row, 0.0) for p in passes[c]) for c in CONDITIONS]
        ratio = medians[-1] / medians[0] if medians[0] else float("nan")
        print(f"{row:14s}" + "".join(f"{m:12.1f}" for m in medians) + f"{ratio:12.2f}")


if __name__ == "__main__":
    main()
