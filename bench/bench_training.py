"""Training benchmark (``make bench-training``).

1. Scale: LightGBM training time and peak memory on N examples (default 5,000,000) of a
   SYNTHETIC wide frame (60 numeric + 8 categorical columns, float32, label from a known
   logistic model; not demo data), then evaluation time: offline metrics on the test rows and
   off-policy evaluation (IPS/SNIPS/DR, bootstrap) of a greedy policy over 10 candidates.
2. Quality: on seeded demo data (``recsys.datagen``), the TRUE value of the greedy policy of
   random, popularity, logistic regression and LightGBM, and the oracle, with the off-policy
   estimates beside them.

    python bench/bench_training.py [--rows 5000000] [--customers 5000 --days 60] [--skip-scale]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from recsys.datagen import generate_dataset
from recsys.loading import load_directory
from recsys.warehouse import connect
from training.config import build_config
from training.evaluation import offline_metrics
from training.examples import Examples
from training.models import LightGBMScorer
from training.pipeline import TrainingInputs, train_and_evaluate
from training.policy_eval import evaluate_policies
from training.warehouse_data import build_inputs

N_NUMERIC, N_CATEGORICAL, N_CANDIDATES = 60, 8, 10


class PeakMemory:
    """Samples this process's resident memory every 50 ms while active."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    X = np.empty((rows, N_NUMERIC + N_CATEGORICAL), dtype=np.float32)
    X[:, :N_NUMERIC] = rng.standard_normal((rows, N_NUMERIC), dtype=np.float32)
    X[:, N_NUMERIC:] = rng.integers(0, 30, (rows, N_CATEGORICAL)).astype(np.float32)
    weights = rng.normal(scale=0.3, size=N_NUMERIC).astype(np.float32)
    cat_effect = rng.normal(scale=0.5, size=30).astype(np.float32)
    logit = -3.0 + X[:, :N_NUMERIC] @ weights + cat_effect[X[:, N_NUMERIC].astype(int)]
    y = (rng.random(rows, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    meta = pd.DataFrame(
        {
            "decision_id": np.arange(rows) // 2,
            "touchpoint_id": np.where(np.arange(rows) % 3 == 0, "web", "email"),
            "offer_id": X[:, N_NUMERIC].astype(int),
        }
    )
    return X, y, meta


def bench_scale(rows: int, seed: int, threads: int, trees: int) -> None:
    print(
        f"== scale: {rows:,} synthetic examples "
        f"({N_NUMERIC} numeric + {N_CATEGORICAL} categorical columns, float32)"
    )
    t0 = time.perf_counter()
    X, y, meta = synthetic(rows, seed)
    print(
        f"generated in {time.perf_counter() - t0:.1f} s; matrix {X.nbytes / 2**20:,.0f} MiB, "
        f"positive rate {y.mean():.3f}"
    )
    columns = tuple(f"f{i}" for i in range(X.shape[1]))
    categorical = tuple(range(N_NUMERIC, N_NUMERIC + N_CATEGORICAL))
    n_train, n_valid = int(rows * 0.7), int(rows * 0.1)

    def part(lo: int, hi: int) -> Examples:
        return Examples(
            X[lo:hi], y[lo:hi], meta.iloc[lo:hi].reset_index(drop=True), columns, categorical
        )

    train, valid, test = (
        part(0, n_train),
        part(n_train, n_train + n_valid),
        part(n_train + n_valid, rows),
    )
    config = build_config({"model": {"params": {"num_threads": threads}}})
    model = LightGBMScorer(
        objective="binary",
        params=dict(config.model.params),
        num_boost_round=trees,
        early_stopping_rounds=20,
        seed=seed,
    )
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        model.fit(train, valid)
        fit_seconds = time.perf_counter() - t0
    print(
        f"LightGBM fit: {fit_seconds:.1f} s for {model.best_iteration_} trees on "
        f"{n_train:,} rows (+{n_valid:,} validation), "
        f"{config.model.params.get('num_threads')} threads; RSS {memory.start / 2**30:.2f} GiB "
        f"before, peak {memory.peak / 2**30:.2f} GiB (+{(memory.peak - memory.start) / 2**30:.2f})"
    )

    t0 = time.perf_counter()
    score = model.predict(test.X, test.meta)
    predict_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = offline_metrics(test, score, probabilistic=True, ks=(1, 3), bins=10)
    metric_seconds = time.perf_counter() - t0
    print(
        f"evaluation: predict {len(test):,} rows {predict_seconds:.1f} s, offline metrics "
        f"(overall + 2 touchpoints) {metric_seconds:.1f} s; test AUC {metrics['auc']:.4f}"
    )

    rounds = min(200_000, len(test))
    rng = np.random.default_rng(seed)
    ids = np.arange(rounds)
    logged_action = rng.integers(0, N_CANDIDATES, rounds)
    logged = pd.DataFrame(
        {
            "decision_id": ids,
            "offer_id": logged_action,
            "propensity": 1 / N_CANDIDATES,
            "label": test.y[:rounds],
            "revenue": test.y[:rounds] * 10.0,
        }
    )
    candidates = pd.DataFrame(
        {
            "decision_id": np.repeat(ids, N_CANDIDATES),
            "offer_id": np.tile(np.arange(N_CANDIDATES), rounds),
        }
    )
    q = rng.uniform(0, 0.2, len(candidates))
    t0 = time.perf_counter()
    evaluate_policies(
        logged,
        q[ids * N_CANDIDATES + logged_action],
        candidates,
        q,
        {"model": q, "random": None},
        bootstrap_samples=300,
    )
    print(
        f"off-policy evaluation: {rounds:,} rounds x {N_CANDIDATES} candidates, 2 policies, "
        f"IPS/SNIPS/DR + revenue, 300 bootstrap samples: {time.perf_counter() - t0:.1f} s"
    )


def bench_quality(customers: int, days: int, seed: int, threads: int) -> None:
    print(f"\n== quality: demo data, {customers:,} customers x {days} days, seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate_dataset(customers=customers, days=days, seed=seed, out=root / "demo")
        con = connect(root / "warehouse.duckdb")
        load_directory(root / "demo", con)
        print(f"generated and loaded in {time.perf_counter() - t0:.1f} s")
        config = build_config({"seed": seed, "model": {"params": {"num_threads": threads}}})
        t0 = time.perf_counter()
        inputs: TrainingInputs = build_inputs(con, config, root / "warehouse.duckdb")
        build_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = train_and_evaluate(inputs, config)
        total = time.perf_counter() - t0
        con.close()
    sizes = result.sizes
    print(
        f"training set {sum(sizes.values()):,} rows built in {build_seconds:.1f} s; "
        f"train/valid/test {sizes['train']:,}/{sizes['valid']:,}/{sizes['test']:,}; "
        f"fit + evaluate all models {total:.1f} s"
    )
    evaluation = result.policy
    assert evaluation is not None
    print(
        f"\npolicy value = P(accept) of the first offer shown, on {evaluation.rounds:,} test "
        "decisions (95% bootstrap intervals)\n"
    )
    print("| policy | true value | IPS | SNIPS | DR | test AUC |\n|---|---|---|---|---|---|")

    def cell(e) -> str:
        return f"{e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"

    for name in ("random", "popularity", "logistic_regression", "lightgbm"):
        value = evaluation.policies[name]
        auc = result.offline[name]["auc"]
        print(
            f"| {name} | {value.true_value:.4f} | {cell(value.estimates['ips'])} | "
            f"{cell(value.estimates['snips'])} | {cell(value.estimates['dr'])} | {auc:.4f} |"
        )
    print(
        f"| logging policy (observed) | {evaluation.logging_true_value:.4f} | "
        f"{cell(evaluation.logging)} | | | |"
    )
    print(f"| oracle | {evaluation.oracle_value:.4f} | | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads (0 = all)")
    parser.add_argument("--trees", type=int, default=200, help="boosting rounds at scale")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.skip_scale:
        bench_scale(args.rows, args.seed, args.threads, args.trees)
    if not args.skip_quality:
        bench_quality(args.customers, args.days, args.seed, args.threads)


if __name__ == "__main__":
    main()
