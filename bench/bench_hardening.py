"""The cost of hardening: the decision service with auth, metrics and logging on vs off.

Builds the data, features and champion model the way ``bench/bench_serving.py`` does (on
first use, under ``data/bench_hardening/``; ``--fresh`` rebuilds). In one run:

1. **off**: the service's components in ``create_app(components=...)`` — no keys, no
   limits, no metrics, no access log, no model holder;
2. **on**: the production service as ``recsys serve`` runs it (``RECSYS_ENVIRONMENT=
   production``) — API key checked on every call (secret key), rate limit, body limit and
   timeout, Prometheus metrics (multiprocess), one JSON access log line per request (to a
   file), model holder following the registry alias, circuit breaker;

each driven by wrk (same Lua script, many customers and realtime touchpoints) for
``--duration`` seconds after a 5 s warm-up: decisions/s, p50/p95/p99, errors. Then
3. **memory**: the hardened service under load for ``--memory-duration`` seconds (default
   600; 0 skips), resident memory of all its processes sampled every 10 s: growth reported.

Run: ``python bench/bench_hardening.py [--duration 30] [--memory-duration 600]``.
Prints one table; numbers also go to ``data/bench_hardening/hardening.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import bench_serving as base
from workload import policy_env

ROOT = Path(__file__).resolve().parents[1]
PORT = 8711
URL = f"http://127.0.0.1:{PORT}"


def key_header_lua(key: str | None) -> str:
    return "" if key is None else f'wrk.headers["X-API-Key"] = "{key}"\n'


def server_command(factory: str, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(PORT),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def rss_mb(proc: subprocess.Popen) -> float:
    """Resident memory of a server and its worker processes, MB."""
    try:
        parent = psutil.Process(proc.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 1e6


def unhardened_app():
    """uvicorn factory of "off": the service's components, no hardening layers."""
    from recsys.settings import load_settings
    from serving.components import build_components
    from serving.main import create_app

    components = build_components(load_settings())
    return create_app(components=components, hardened=False)


def server_for(name: str, args) -> list[str]:
    """ "on" runs exactly as in production (``recsys serve``: log config, workers, metrics)."""
    if name == "off":
        return server_command(args.off_factory, args.workers)
    return [str(base.BIN / "recsys"), "serve"]


def measure(name: str, env: dict, script: Path, args, work: Path) -> dict:
    server = base.start(server_for(name, args), {"env": env}, work / f"hardening_{name}.log")
    try:
        base.wait_ready(f"{URL}/readyz", server)
        base.wrk(script, URL, 5, args.connections, args.threads)  # warm up
        result = base.wrk(script, URL, args.duration, args.connections, args.threads)
        result["rss_mb"] = rss_mb(server)
        return result
    finally:
        base.stop(server)


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput (its latencies come with it)."""
    return sorted(runs, key=lambda r: r["per_second"])[(len(runs) - 1) // 2]


def memory_run(env: dict, script: Path, args, work: Path) -> dict:
    server = base.start(server_for("on", args), {"env": env}, work / "hardening_memory.log")
    samples: list[tuple[float, float]] = []
    try:
        base.wait_ready(f"{URL}/readyz", server)
        base.wrk(script, URL, 10, args.connections, args.threads)  # warm up: caches filled
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - started, rss_mb(server)))
                stop.wait(10)

        sampler = threading.Thread(target=sample)
        sampler.start()
        result = base.wrk(script, URL, args.memory_duration, args.connections, args.threads)
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - started, rss_mb(server)))
    finally:
        base.stop(server)
    first, last = samples[0][1], samples[-1][1]
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    slope = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1) * 60
    return {
        **result,
        "rss_start_mb": first,
        "rss_end_mb": last,
        "rss_max_mb": max(s[1] for s in samples),
        "growth_mb": last - first,
        "growth_pct": 100 * (last - first) / first if first else 0.0,
        "second_half_mb_per_min": slope,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=30, help="seconds of load per config")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs, interleaved")
    parser.add_argument("--memory-duration", type=int, default=600, help="0 = skip")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="serve epsilon-greedy with this exploration share [the default serving.policy]",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_hardening")
    parser.add_argument("--fresh", action="store_true", help="rebuild data, features and model")
    parser.add_argument("--off-factory", default="bench_hardening:unhardened_app")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    from serving.security import ApiKeyRecord, hash_key, new_key

    work: Path = args.work
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    common = {
        **os.environ,
        "PATH": f"{base.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]
        ),
        "RECSYS_WAREHOUSE_PATH": str(work / "warehouse.duckdb"),
        "RECSYS_ONLINE_SQLITE_PATH": str(work / "online.sqlite"),
        "RECSYS_MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        **policy_env(args.epsilon),
        "PYTHONUNBUFFERED": "1",
        "RECSYS_SERVING__PORT": str(PORT),
        "RECSYS_SERVING__WORKERS": str(args.workers),
    }
    if not (work / "mlflow.db").exists():
        common["RECSYS_EVENT_LOG_URL"] = f"sqlite:///{work / 'events.sqlite'}"
        base.prepare(work, args.customers, args.offers, 30, args.seed, {"env": common})
    key = new_key("secret")
    lua = base.WRK_DECISIONS % {
        "seed": args.seed,
        "customers": args.customers,
        "touchpoints": ", ".join(f'"{t}"' for t in base.REALTIME),
    }
    plain_script, hard_script = work / "hardening_off.lua", work / "hardening_on.lua"
    plain_script.write_text(lua + base.WRK_DONE)
    hard_script.write_text(key_header_lua(key) + lua + base.WRK_DONE)
    off_env = {**common, "RECSYS_EVENT_LOG_URL": f"sqlite:///{work / 'events_off.sqlite'}"}
    on_env = {
        **common,
        "RECSYS_ENVIRONMENT": "production",
        "RECSYS_EVENT_LOG_URL": f"sqlite:///{work / 'events_on.sqlite'}",
        "RECSYS_SECURITY__API_KEYS": json.dumps(
            [ApiKeyRecord(id="bench", scope="secret", hash=hash_key(key)).model_dump()]
        ),
        "RECSYS_SECURITY__TOKEN_SECRET": os.urandom(32).hex(),
        "RECSYS_LIMITS__RATE_SECRET_PER_SECOND": "1000000",
        "RECSYS_LIMITS__RATE_SECRET_BURST": "1000000",
        "RECSYS_OBSERVABILITY__LOG_FORMAT": "json",
        "RECSYS_LIFECYCLE__MODEL_CACHE_DIR": str(work / "model_cache"),
        "RECSYS_LIFECYCLE__MODEL_POLL_SECONDS": "30",
    }
    for name in ("events_off.sqlite", "events_on.sqlite"):
        (work / name).unlink(missing_ok=True)
    rounds: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.rounds):  # interleaved: a shared machine's load hits both alike
        rounds["off"].append(measure("off", off_env, plain_script, args, work))
        rounds["on"].append(measure("on", on_env, hard_script, args, work))
    results: dict = {name: median_run(runs) for name, runs in rounds.items()}
    results["rounds"] = rounds
    if args.memory_duration > 0:
        results["memory"] = memory_run(on_env, hard_script, args, work)
    (work / "hardening.json").write_text(json.dumps(results, indent=1))
    print_table(results, args)


def print_table(results: dict, args) -> None:
    print(
        f"\nload: wrk, {args.connections} connections, {args.threads} thread(s), "
        f"{args.rounds} interleaved rounds x {args.duration} s per config (median round "
        f"shown), uvicorn --workers {args.workers}, {os.cpu_count()} cores (shared)"
    )
    print(
        f"{'config':<28}{'decisions/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'non-2xx':>9}"
    )
    for name, label in (("off", "hardening off"), ("on", "auth+limits+metrics+logs")):
        r = results[name]
        print(
            f"{label:<28}{r['per_second']:>12.0f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['errors']:>8}{r['non_2xx']:>9}"
        )
    for name in ("off", "on"):
        rates = ", ".join(f"{r['per_second']:.0f}" for r in results["rounds"][name])
        p99s = ", ".join(f"{r['p99_ms']:.1f}" for r in results["rounds"][name])
        print(f"  {name} per round: decisions/s {rates}; p99 ms {p99s}")
    off, on = results["off"], results["on"]
    print(
        f"cost of hardening: {100 * (1 - on['per_second'] / off['per_second']):.1f}% "
        f"throughput, p99 {on['p99_ms'] - off['p99_ms']:+.2f} ms"
    )
    if "memory" in results:
        m = results["memory"]
        print(
            f"memory, {args.memory_duration} s of load ({m['per_second']:.0f} decisions/s, "
            f"{m['errors']} errors, {m['non_2xx']} non-2xx): RSS {m['rss_start_mb']:.0f} -> "
            f"{m['rss_end_mb']:.0f} MB ({m['growth_mb']:+.1f} MB, {m['growth_pct']:+.1f}%), "
            f"max {m['rss_max_mb']:.0f} MB, second half {m['second_half_mb_per_min']:+.2f} MB/min"
        )


if __name__ == "__main__":
    main()
