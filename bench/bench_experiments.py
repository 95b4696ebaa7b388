"""Experiment readout: correctness by simulation and the analysis at scale (`make bench-experiments`).

(a) Correctness, on simulated experiments with units that see several decisions each and differ
    in propensity (so the delta method and CUPED matter):
    - A/A experiments checked at every peek: how often the always-valid confidence sequence
      excludes 0 at some peek (goal <= 5%);
    - A/B experiments with a known +10% relative lift: power (the sequence excludes 0 at the
      last peek; also the fixed-horizon power), and how often the true lift is inside the
      interval (the sequence at every peek at once, and the fixed-horizon interval at the end;
      goal >= 95%);
    - CUPED: variance of the lift with the pre-period covariate / without;
    - sample-ratio mismatch: alarms on a 52/48 split planned as 50/50, and on correct splits.
(b) Scale: the full analysis (20 peeks, per touchpoint and per offer) of 10M decisions and
    their events over 1M customers on DuckDB, data generated with DuckDB SQL in a separate
    process; wall time and the analysing process's peak memory (ru_maxrss).

Usage: python bench/bench_experiments.py [--simulations 500] [--decisions 10000000] ...
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.analysis import analyse
from experiments.moments import SQLSource
from experiments.plan import AnalysisPlan
from experiments.stats import (
    Moments,
    estimate_arms,
    lift,
    sample_ratio_mismatch,
)
from experiments.synthetic import SyntheticExperiment, generate

TRUE_LIFT = 0.10


def _arm(rng: np.random.Generator, units: int, multiplier: float) -> np.ndarray:
    """Per unit, in arrival order: (decisions, accepted decisions, pre-period accepted)."""
    n = 1 + rng.poisson(2.0, size=units)
    p = rng.beta(2.0, 18.0, size=units)  # mean 0.1, units differ
    y = rng.binomial(n, np.minimum(p * multiplier, 1.0))
    x = rng.binomial(1 + rng.poisson(2.0, size=units), p)  # same unit, before the start
    return np.stack([n, y, x]).astype(float)


def _moments_at_peeks(arm: np.ndarray, cuts: np.ndarray) -> list[Moments]:
    """Moments of the first ``cut`` units, for every cut, from running sums (no loop per unit)."""
    n, y, x = arm
    sums = np.cumsum(np.stack([n, n * n, y, y * y, y * n, x, x * x, x * y, x * n]), axis=1)
    return [Moments(float(c), *sums[:, c - 1]) for c in cuts]


def simulate(
    simulations: int, units: int, peeks: int, multiplier: float, seed: int, cuped: bool = True
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    cuts = np.linspace(units / peeks, units, peeks).astype(int)
    rejected_any = covered_all = fixed_covered = rejected_end = fixed_rejected = 0
    reductions = []
    for _ in range(simulations):
        a = _moments_at_peeks(_arm(rng, units, 1.0), cuts)
        b = _moments_at_peeks(_arm(rng, units, multiplier), cuts)
        truth = multiplier - 1
        ever_rejected, always_covered = False, True
        for k in range(peeks):
            est_a, est_b = estimate_arms([a[k], b[k]], cuped=cuped)
            result = lift(est_b, est_a, planned_units=2 * units)
            ever_rejected |= result.sequence.excludes_zero()
            always_covered &= result.sequence_relative.contains(truth)
        rejected_any += ever_rejected
        covered_all += always_covered
        rejected_end += result.sequence.excludes_zero()
        fixed_rejected += result.fixed.excludes_zero()
        fixed_covered += result.fixed_relative.contains(truth)
        reductions.append(
            (est_a.variance + est_b.variance) / (est_a.raw_variance + est_b.raw_variance)
        )
    return {
        "rejected_at_some_peek": rejected_any / simulations,
        "power_sequence_end": rejected_end / simulations,
        "power_fixed_end": fixed_rejected / simulations,
        "covered_at_all_peeks": covered_all / simulations,
        "fixed_covered_end": fixed_covered / simulations,
        "cuped_variance_ratio": float(np.mean(reductions)),
    }


def srm_detection(simulations: int, units: int, share: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    treated = rng.binomial(units, share, size=simulations)
    alarms = [sample_ratio_mismatch([units - t, t], [0.5, 0.5]).alarm for t in treated]
    return float(np.mean(alarms))


def correctness(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    aa = simulate(args.simulations, args.units, args.peeks, 1.0, args.seed)
    ab = simulate(args.simulations, args.units, args.peeks, 1 + TRUE_LIFT, args.seed + 1)
    srm_skewed = srm_detection(args.simulations, 2 * args.units, 0.52, args.seed + 2)
    srm_fair = srm_detection(args.simulations, 2 * args.units, 0.50, args.seed + 3)
    print(
        f"correctness: {args.simulations} simulations per case, {args.units:,} units per arm "
        f"(1 + Poisson(2) decisions each, acceptance ~ Beta(2, 18)), {args.peeks} peeks, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(
        f"  A/A: confidence sequence excludes 0 at some peek in "
        f"{aa['rejected_at_some_peek']:.1%} (goal <= 5%)"
    )
    print(
        f"  A/B +{TRUE_LIFT:.0%}: power {ab['power_sequence_end']:.1%} (confidence sequence, "
        f"last peek), {ab['power_fixed_end']:.1%} (fixed horizon)"
    )
    print(
        f"  A/B +{TRUE_LIFT:.0%}: true lift inside the confidence sequence at all "
        f"{args.peeks} peeks in {ab['covered_at_all_peeks']:.1%}, inside the fixed-horizon "
        f"interval at the end in {ab['fixed_covered_end']:.1%} (goal >= 95%)"
    )
    print(
        f"  CUPED (pre-period of the same units): variance of the lift x "
        f"{ab['cuped_variance_ratio']:.3f} of the unadjusted"
    )
    print(
        f"  SRM (p < 0.001): alarm on a 52/48 split planned 50/50 in {srm_skewed:.1%}, "
        f"on a fair split in {srm_fair:.1%}"
    )


def _generate(path: str, decisions: int, customers: int) -> None:
    import duckdb

    con = duckdb.connect(path)
    spec = SyntheticExperiment(
        customers=customers, decisions=decisions, pre_decisions=decisions // 5, days=28
    )
    generate(con, spec)
    con.close()


def scale(args: argparse.Namespace) -> None:
    import duckdb

    spec = SyntheticExperiment(
        customers=args.customers,
        decisions=args.decisions,
        pre_decisions=args.decisions // 5,
        days=28,
    )
    with tempfile.TemporaryDirectory(prefix="bench_experiments_") as tmp:
        path = str(Path(tmp) / "events.duckdb")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--generate", path, "--decisions", str(args.decisions),
             "--customers", str(args.customers)],
            check=True,
        )  # fmt: skip
        generated = time.perf_counter() - t0
        con = duckdb.connect(
            path,
            read_only=True,
            config={"memory_limit": args.memory_limit, "temp_directory": str(Path(tmp) / "spill")},
        )
        rows = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM decisions").fetchone()
        events = con.execute("SELECT count(*) FROM events").fetchone()
        plan = AnalysisPlan(
            name=spec.experiment_id,
            arms=({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}),  # type: ignore[arg-type]
            control="A",
            start=spec.start,
            end=spec.end,
            peeks=20,
        )
        t0 = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        result = analyse(SQLSource(con, "duckdb"), plan, as_of=spec.end)
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        # CPU seconds tell the work apart from the waiting on a host shared with other jobs
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        con.close()
    assert rows is not None and events is not None
    primary = result.primary("B")
    print(
        f"scale: {rows[0]:,} decision rows ({args.decisions:,} in the experiment) and "
        f"{events[0]:,} events over {rows[1]:,} customers, generated in {generated:.0f} s"
    )
    print(
        f"  analysis (20 peeks, per touchpoint, per offer) on DuckDB: {seconds:.1f} s "
        f"(goal <= 60 s; {cpu:.0f} CPU s on {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), peak memory {peak_gb:.2f} GB (goal <= 4 GB; DuckDB memory_limit "
        f"{args.memory_limit})"
    )
    print(
        f"  lift found: {primary.lift.relative:+.2%} "
        f"[{primary.lift.sequence_relative.lower:+.2%}, {primary.lift.sequence_relative.upper:+.2%}]"
        f" (true +{spec.lift:.0%}), CUPED variance reduction {primary.variance_reduction:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=500)
    parser.add_argument("--units", type=int, default=10_000, help="units per arm (simulations)")
    parser.add_argument("--peeks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--memory-limit", default="3GB")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        _generate(args.generate, args.decisions, args.customers)
        return
    if not args.skip_correctness:
        correctness(args)
    if not args.skip_scale:
        scale(args)


if __name__ == "__main__":
    main()
