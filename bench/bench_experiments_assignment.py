"""What experiment assignment costs on the decision path: CPU per decision with a running
experiment against the same service without one, measured in one run.

Both sides are the service's components (``serving.components.assemble_components``, the
composition root) on the test suite's small real parts (tiny LightGBM, in-memory features,
a scratch SQLite event log): the cheapest real decision there is, so assignment's share of it
is an upper bound of its share in production, where features, history and the model cost
more. The experiment covers every touchpoint and splits units 50/50 between two arms with the
champion's recipe (no levers): the only difference between the sides is the assignment (two
BLAKE2b hashes and a bucket search per request) and the arm objects.

Each request (``--rounds`` x ``--decisions`` single-request decisions, random customers and
touchpoints) is decided by both sides back to back, the first side alternating, and timed by
the CPU clock of the deciding thread, so that load from other processes on a shared host
drifts both sides alike. The result is each side's mean CPU per decision (median over rounds)
and the median of the per-round ratios (goal: <= 1.05, issue 28). Also the cost of one
``Assigner.assign`` call alone.

Run: ``python bench/bench_experiments_assignment.py`` (about a minute). Prints a table and a
line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.assignment import Assigner, Placement  # noqa: E402
from experiments.definition import BUCKETS, parse_experiment  # noqa: E402
from experiments.store import open_experiment_store  # noqa: E402
from recsys.decision import DecisionRequest  # noqa: E402
from recsys.eventlog import SQLiteEventLog  # noqa: E402
from tests.serving.factories import NOW, TOUCHPOINTS, make_components  # noqa: E402

EXPERIMENT = {
    "name": "bench-assignment",
    "hypothesis": "assignment is cheap",
    "touchpoints": [t["touchpoint_id"] for t in TOUCHPOINTS],
    "arms": [
        {"name": "a", "kind": "control", "share": 0.5},
        {"name": "b", "kind": "treatment", "share": 0.5},
    ],
}


def side(scratch: Path, name: str, with_experiment: bool):
    """The components of one side, each with its own event log (and store)."""
    url = f"sqlite:///{scratch / name}.sqlite"
    store = open_experiment_store(url)
    if with_experiment:
        exp = parse_experiment(EXPERIMENT)
        store.create(exp, "bench")
        store.transition(exp.name, "start", "bench")
    return make_components(SQLiteEventLog(scratch / f"{name}.sqlite"), experiment_store=store,
                           experiments_poll_seconds=0)  # fmt: skip


def requests(n: int, seed: int) -> list[DecisionRequest]:
    rng = random.Random(seed)
    tps = [t["touchpoint_id"] for t in TOUCHPOINTS]
    return [DecisionRequest(f"u{rng.randrange(1_000_000)}", rng.choice(tps)) for _ in range(n)]


def paired_cpu(plain, experiment, batch: list[DecisionRequest]) -> tuple[list, list]:
    """CPU (us, this thread) of each request decided by both sides, back to back, the side
    that goes first alternating: load on the host drifts the same for both."""
    plain_us, experiment_us = [], []
    for k, request in enumerate(batch):
        sides = [(plain, plain_us), (experiment, experiment_us)]
        for components, out in sides if k % 2 == 0 else sides[::-1]:
            started = time.thread_time()
            components.decide([request])
            out.append((time.thread_time() - started) * 1e6)
    return plain_us, experiment_us


def assign_cost(n: int) -> float:
    assigner = Assigner([Placement(parse_experiment(EXPERIMENT), (0, BUCKETS))])
    units = [f"u{i}" for i in range(n)]
    started = time.thread_time()
    for unit in units:
        assigner.assign("web_home", unit, NOW)
    return (time.thread_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--decisions", type=int, default=1500)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="recsys-bench-assign-"))
    plain = side(scratch, "plain", with_experiment=False)
    experiment = side(scratch, "experiment", with_experiment=True)
    assert experiment.arms.status()["running"] == ["bench-assignment"]
    paired_cpu(plain, experiment, requests(300, 0))  # warm-up
    rounds: list[tuple[float, float]] = []
    for r in range(args.rounds):
        plain_us, experiment_us = paired_cpu(plain, experiment, requests(args.decisions, r + 1))
        rounds.append((statistics.fmean(plain_us), statistics.fmean(experiment_us)))
    plain_us = statistics.median(p for p, _ in rounds)
    experiment_us = statistics.median(e for _, e in rounds)
    ratio = statistics.median(e / p for p, e in rounds)
    result = {
        "plain_cpu_us": round(plain_us, 1),
        "experiment_cpu_us": round(experiment_us, 1),
        "ratio": round(ratio, 4),
        "ratio_per_round": [round(e / p, 4) for p, e in rounds],
        "assign_us": round(assign_cost(200_000), 3),
        "rounds": args.rounds,
        "decisions_per_round": args.decisions,
    }
    print(f"{'CPU per decision, no experiment':<44} {result['plain_cpu_us']:>9.1f} us")
    print(f"{'CPU per decision, running experiment':<44} {result['experiment_cpu_us']:>9.1f} us")
    print(f"{'ratio (goal <= 1.05)':<44} {result['ratio']:>9.4f}")
    print(f"{'one Assigner.assign call':<44} {result['assign_us']:>9.3f} us")
    print("RESULT " + json.dumps(result))
    plain.close()
    experiment.close()


if __name__ == "__main__":
    main()
