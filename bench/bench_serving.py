"""Serving benchmark: the decision service vs `mlflow models serve` of the same model.

Steps (all under ``data/bench_serving/``, rebuilt with ``--fresh``):

1. demo data (``--customers``, default 5,000) with the catalogue extended to ``--offers``
   (default 200) offers, loaded into a warehouse, features materialised (SQLite online store),
   the demo model trained with ``recsys train`` and promoted to champion (MLflow, sqlite);
2. ``recsys serve`` (uvicorn, ``--workers``) driven by **wrk** (Debian package ``wrk``; a Lua
   script posts decisions for random customers — 5% unknown — over the realtime touchpoints)
   for ``--duration`` seconds, three times: closed loop with ``--connections`` (the most
   decisions/s it sustains; latency there is mostly queueing, Little's law), closed loop
   with ``--few-connections`` (a small keep-alive pool: the latency at the throughput a few
   clients drive), then paced at ``--rate`` decisions/s (exponential gaps per connection,
   calibrated in a 5 s pass): the latency a site sees at that load. Each run starts the
   service afresh on an empty event log. Decisions/s, p50/p95/p99 latency, errors;
3. ``mlflow models serve`` of the same registered model, driven by wrk with the candidate rows
   of one real decision (the same matrix the service scores), for the same duration;
4. ``recsys score`` of a batch touchpoint for every customer (customers x candidates per s).
5. before the runs and after them, a host reference: ns per step of a plain Python loop and
   the CPU of one decision in process, back to back (hot) and 2 ms apart (as a worker sees
   them at 1,000/s), so that runs on different hosts can be compared.

With ``--baseline REF`` it measures instead, alternating REF (a temporary git worktree) and
this checkout for ``--rounds`` rounds on the same data and model: the closed loop
(``--connections``, ``--workers``), the CPU per decision in process (each side's own
``bench_decision_stages.py``), ``recsys score`` of the bench customers and, once a round,
``mlflow models serve``; then prints both sides' medians, new/old and issue 26's guard
(``bench/baseline.py``; numbers in ``baseline.json``).

Run: ``make bench-serving`` (``python bench/bench_serving.py --help``), or
``make bench-serving ARGS="--baseline REF"``. Needs ``wrk`` on the PATH (``apt-get install
wrk``). Prints one table; numbers also go to ``results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import baseline
import httpx
import psutil
from bench_decision_stages import METRICS as METRICS_IN_PROCESS
from bench_decision_stages import decision_cpu
from workload import (
    BIN,
    REALTIME,
    ROOT,
    data_env,
    extend_catalogue,
    forget_event_log,
    model_cache_env,
    policy_env,
)

PORT = 8701
URL = f"http://127.0.0.1:{PORT}"
MLFLOW_URL = "http://127.0.0.1:8702"

WRK_DECISIONS = r"""
math.randomseed(%(seed)d)
local touchpoints = {%(touchpoints)s}
local n_customers = %(customers)d
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local c
  if math.random() < 0.05 then
    c = string.format("NEW%%07d", math.random(1, 1000000))
  else
    c = string.format("C%%07d", math.random(1, n_customers))
  end
  local tp = touchpoints[math.random(1, #touchpoints)]
  local body = string.format('{"customer_id": "%%s", "touchpoint": "%%s"}', c, tp)
  return wrk.format(nil, "/v1/decisions", nil, body)
end
"""

# Paced load: each connection waits an exponential gap (mean GAP ms) before every request,
# so the offered rate is about connections x 1000 / (GAP + latency) — Poisson-like arrivals
# instead of a closed loop that only measures queueing at saturation.
WRK_PACED = r"""
delay = function()
  return -math.log(1 - math.random()) * %(gap_ms)f
end
"""

WRK_DONE = r"""
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
                 + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"timeouts": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    summary.errors.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""

WRK_FIXED = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("%(body)s", "r")
wrk.body = f:read("*all")
f:close()
"""


def run(cmd: list[str], process: dict) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, **process, check=True)


def prepare(work: Path, customers: int, offers: int, days: int, seed: int, process: dict) -> None:
    demo = work / "demo"
    run(
        [
            str(BIN / "recsys"),
            "data",
            "generate",
            "--customers",
            str(customers),
            "--days",
            str(days),
            "--seed",
            str(seed),
            "--out",
            str(demo),
        ],
        process,
    )
    extend_catalogue(demo / "offers.yaml", offers, seed)
    run(
        [str(BIN / "recsys"), "data", "load", str(demo), "--db", str(work / "warehouse.duckdb")],
        process,
    )
    run([str(BIN / "recsys"), "features", "materialize"], process)
    run([str(BIN / "recsys"), "train", "--promote-if-no-champion"], process)


def start(cmd: list[str], process: dict, log_path: Path) -> subprocess.Popen:
    """Start a server in its own process group (``process``: the environment and working
    directory of the code to run), output to ``log_path``."""
    with open(log_path, "w") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd, **process, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT
        )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def connections_per_worker(port: int) -> list[int]:
    """Established connections of the server on ``port``, per process (ascending)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    return sorted(Counter(re.findall(r"pid=(\d+)", out)).values())


def server_cpu(port: int) -> dict[str, float]:
    """CPU seconds so far of the processes serving ``port``: their event-loop (main) threads
    and their other threads (decision thread, checkpointer, ...)."""
    out = subprocess.run(
        ["ss", "-tlnpH", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    loop = other = 0.0
    for pid in sorted({int(p) for p in re.findall(r"pid=(\d+)", out)}):
        with contextlib.suppress(psutil.NoSuchProcess):
            for thread in psutil.Process(pid).threads():
                seconds = thread.user_time + thread.system_time
                if thread.id == pid:
                    loop += seconds
                else:
                    other += seconds
    return {"loop": loop, "other": other}


def wrk(script: Path, url: str, duration: int, connections: int, threads: int) -> dict:
    port = int(url.split(":")[2].split("/")[0])
    cpu_before = server_cpu(port)
    spread: list[int] = []
    # Which worker holds each connection, read once the load is under way.
    probe = threading.Timer(
        min(3.0, duration / 2), lambda: spread.extend(connections_per_worker(port))
    )
    probe.start()
    run = subprocess.run(
        [
            "nice",
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
    )
    probe.join()
    if run.returncode != 0:
        # wrk's own words are the only clue to a failed run; keep them.
        raise RuntimeError(
            f"wrk exited with status {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        )
    out = run.stdout
    cpu_after = server_cpu(port)
    match = re.search(r"WRKJSON (\{.*\})", out)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    stats = json.loads(match.group(1))
    seconds = stats["duration_us"] / 1e6
    return {
        "requests": stats["requests"],
        "per_second": stats["requests"] / seconds,
        "p50_ms": stats["p50_us"] / 1000,
        "p95_ms": stats["p95_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "max_ms": stats["max_us"] / 1000,
        "errors": stats["errors"],
        "non_2xx": stats["non_2xx"],
        "seconds": seconds,
        "connections_per_worker": spread,
        # server CPU per request, ms: what the two cores pay for one request
        "cpu_loop_ms": 1000 * (cpu_after["loop"] - cpu_before["loop"]) / max(stats["requests"], 1),
        "cpu_other_ms": 1000
        * (cpu_after["other"] - cpu_before["other"])
        / max(stats["requests"], 1),
    }


def paced(
    script: Path, work: Path, rate: int, connections: int, duration: int, threads: int
) -> dict:
    """wrk at about ``rate`` requests/s: calibrate the gap for 5 s, then measure."""
    paced_script = work / "decisions_paced.lua"
    gap_ms = connections * 1000.0 / rate
    for seconds in (5, 5, duration):
        paced_script.write_text(script.read_text() + WRK_PACED % {"gap_ms": gap_ms})
        result = wrk(paced_script, URL, seconds, connections, threads)
        # per connection: 1 / rate_c = gap + latency  ->  gap = connections / rate - latency
        latency_ms = 1000.0 * connections / result["per_second"] - gap_ms
        gap_ms = max(0.0, connections * 1000.0 / rate - latency_ms)
    result["target_per_second"] = rate
    result["connections"] = connections
    return result


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def candidate_rows_body(work: Path, process: dict, touchpoint: str) -> None:
    """The candidate matrix of one real decision, as an MLflow ``dataframe_split`` body in
    ``work/mlflow_body.json`` (``process``: the environment and folder of the code to run)."""
    code = f"""
import json, math, sys
import numpy as np
from recsys.catalog import now_utc
from recsys.settings import load_settings
from serving.components import build_components
c = build_components(load_settings())
model = c.holder.current.model
tp = c.catalog.for_touchpoint({touchpoint!r})
block = c.pipeline.features.read(["C0000001"])
m = len(tp.offers)
x = model.matrix.build(block, tp, [{{}}], now_utc(), np.zeros(m, dtype=int), np.arange(m))
cols = list(model.matrix.encoding.names)
rows = [[None if (isinstance(v, float) and math.isnan(v)) else float(v) for v in row]
        for row in x.tolist()]
json.dump({{"dataframe_split": {{"columns": cols, "data": rows}}}}, open(sys.argv[1], "w"))
print(len(rows))
c.close()
"""
    subprocess.run(
        [sys.executable, "-c", code, str(work / "mlflow_body.json")],
        **process,
        check=True,
        capture_output=True,
        text=True,
    )


LOOP_NS = r"""
import time
def loop_ns():
    started = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return (time.perf_counter() - started) / 2_000_000 * 1e9
print(min(loop_ns() for _ in range(3)))
"""


def host_reference(
    side: baseline.Side, work: Path, env: dict[str, str], customers: int, seed: int
) -> dict:
    """How fast this host is right now: ns per step of a plain Python loop, and the CPU of
    one decision in process, back to back and 2 ms apart (``bench_decision_stages.py``: the
    bench data, the wrk script's mix, a scratch event log). Hosts of the same kind differ
    several-fold from day to day; these numbers let runs on different hosts be compared."""
    loop = subprocess.run(
        [sys.executable, "-c", LOOP_NS], check=True, capture_output=True, text=True
    ).stdout
    cpu = decision_cpu(
        side,
        work,
        customers=customers,
        seed=seed,
        decisions=300,
        repeats=3,
        env=env,
        conditions=("hot", "paused"),
    )
    return {
        "python_loop_ns": float(loop),
        "decision_cpu_ms": cpu["decision_cpu_us"] / 1000,
        "paused_decision_cpu_ms": cpu["paused_cpu_us"] / 1000,
    }


def serve_run(
    side: baseline.Side,
    env: dict[str, str],
    work: Path,
    script: Path,
    args: argparse.Namespace,
    connections: int,
    rate: int = 0,
) -> tuple[dict, dict]:
    """``recsys serve`` of ``side`` on an empty event log, warmed for 5 s, then loaded by
    wrk for ``args.duration`` s: a closed loop over ``connections``, or paced at ``rate``/s.
    Returns the load's numbers (decisions logged included) and the service's ``/readyz``."""
    # An empty event log each time: with 5,000 customers a minute at ~1,800/s gives every
    # customer ~20 contacts, and a later run would read (and check caps over) the history
    # the earlier runs left.
    forget_event_log(work / "events.sqlite")
    server = start([str(BIN / "recsys"), "serve"], side.process(env), work / "serve.log")
    try:
        wait_ready(f"{URL}/readyz", server)
        ready = httpx.get(f"{URL}/readyz").json()
        wrk(script, URL, min(5, args.duration), args.connections, args.threads)  # warm up
        if rate:
            result = paced(script, work, rate, connections, args.duration, args.threads)
        else:
            result = wrk(script, URL, args.duration, connections, args.threads)
    finally:
        stop(server)
    result["decisions_logged"] = _count_rows(work / "events.sqlite")
    return result, ready


def mlflow_run(env: dict[str, str], work: Path, args: argparse.Namespace) -> dict:
    """``mlflow models serve`` of the champion (no recsys code: the registered pyfunc),
    driven by wrk with the candidate rows of one real decision for ``args.duration`` s."""
    body = work / "mlflow_body.json"
    rows = len(json.loads(body.read_text())["dataframe_split"]["data"])
    fixed = work / "mlflow.lua"
    fixed.write_text(WRK_FIXED % {"body": body} + WRK_DONE)
    server = start(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/offer-ranker@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", MLFLOW_URL.rsplit(":", 1)[1],
         "--workers", str(args.workers)],
        {"env": env},
        work / "mlflow_serve.log",
    )  # fmt: skip
    try:
        wait_ready(f"{MLFLOW_URL}/ping", server)
        check = httpx.post(
            f"{MLFLOW_URL}/invocations",
            content=body.read_bytes(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        if check.status_code != 200:
            raise RuntimeError(f"mlflow refused the rows: {check.text[:500]}")
        url = f"{MLFLOW_URL}/invocations"
        wrk(fixed, url, min(5, args.duration), args.connections, args.threads)
        result = wrk(fixed, url, args.duration, args.connections, args.threads)
    finally:
        stop(server)
    result["rows_per_request"] = rows
    return result


def score_run(side: baseline.Side, env: dict[str, str], work: Path) -> dict:
    """``recsys score`` of ``side``, the email touchpoint, every bench customer, dry run."""
    started = time.perf_counter()
    out = subprocess.run(
        ["nice", str(BIN / "recsys"), "score", "--touchpoint", "email_newsletter",
         "--out", str(work / f"email_{side.name}.parquet"), "--dry-run"],
        **side.process(env), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {"seconds": time.perf_counter() - started, "summary": out.strip()}


def guard_metrics(args: argparse.Namespace) -> tuple[baseline.Metric, ...]:
    """The rows of ``--baseline``: issue 26's performance guard."""
    Metric, Guard = baseline.Metric, baseline.Guard
    return (
        Metric(
            "closed_loop_rps",
            f"closed loop, {args.connections} conns, {args.workers} workers",
            "dec/s",
            Guard.ratio_at_least(0.8),
        ),
        Metric("closed_loop_p99_ms", "closed loop p99", "ms"),
        Metric("closed_loop_cpu_ms", "closed loop server CPU per decision", "ms"),
        *METRICS_IN_PROCESS,
        Metric(
            "score_seconds",
            f"recsys score --dry-run, {args.customers:,} customers",
            "s",
            Guard.ratio_at_most(1.15),
        ),
        Metric("mlflow_rps", "mlflow models serve (same in both)", "req/s"),
        Metric(
            "recsys_per_mlflow",
            "recsys / mlflow throughput",
            "x",
            Guard.new_at_least(20),
            of=lambda s: s["closed_loop_rps"] / s["mlflow_rps"],
        ),
    )


def compare_with_baseline(
    args: argparse.Namespace, work: Path, script: Path, env_of: Callable[[baseline.Side], dict]
) -> None:
    """Alternate ``args.baseline`` and this checkout: per side, the closed loop, the CPU per
    decision in process and ``recsys score``; ``mlflow models serve`` once per round."""

    def measure(side: baseline.Side) -> dict[str, float]:
        env = env_of(side)
        loaded, _ = serve_run(side, env, work, script, args, args.connections)
        sample = {
            "closed_loop_rps": loaded["per_second"],
            "closed_loop_p99_ms": loaded["p99_ms"],
            "closed_loop_cpu_ms": loaded["cpu_loop_ms"] + loaded["cpu_other_ms"],
        }
        if args.stage_decisions:
            sample |= decision_cpu(
                side,
                work,
                customers=args.customers,
                seed=args.seed,
                decisions=args.stage_decisions,
                repeats=3,
                env=env,
            )
        if not args.skip_score:
            sample["score_seconds"] = score_run(side, env, work)["seconds"]
        return sample

    def mlflow_rps() -> dict[str, float]:
        return {"mlflow_rps": mlflow_run(env_of(baseline.current()), work, args)["per_second"]}

    baseline.compare(
        args.baseline,
        args.rounds,
        measure,
        guard_metrics(args),
        work / "baseline.json",
        shared=None if args.skip_mlflow else mlflow_rps,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per server")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the service")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--few-connections", type=int, default=4, help="the small pool's connections (0 = skip)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--rate", type=int, default=1000, help="decisions/s of the paced run (0 = skip it)"
    )
    parser.add_argument("--rate-connections", type=int, default=32)
    parser.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="serve epsilon-greedy with this exploration share [the default serving.policy]",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-score", action="store_true")
    parser.add_argument(
        "--stage-decisions",
        type=int,
        default=300,
        help="with --baseline: decisions per pass of bench_decision_stages.py (0 = skip it)",
    )
    parser.add_argument("--fresh", action="store_true", help="rebuild data, features and model")
    parser.add_argument("--prepare-only", action="store_true", help="build the data and stop")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_serving")
    baseline.add_arguments(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    work: Path = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # `mlflow models serve` runs `uvicorn` from the PATH: use this environment's.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **data_env(work, work / "events.sqlite"),
        **policy_env(args.epsilon),
        "RECSYS_SERVING_WORKERS": str(args.workers),
        "RECSYS_SERVING_PORT": str(PORT),
    }

    def env_of(side: baseline.Side) -> dict[str, str]:
        return {**env, **model_cache_env(work, side.name)}

    new = baseline.current()
    if not (work / "mlflow.db").exists():
        prepare(work, args.customers, args.offers, args.days, args.seed, new.process(env))
    if args.prepare_only:
        return
    script = work / "decisions.lua"
    script.write_text(
        WRK_DECISIONS
        % {
            "seed": args.seed,
            "customers": args.customers,
            "touchpoints": ", ".join(f'"{t}"' for t in REALTIME),
        }
        + WRK_DONE
    )
    if not args.skip_mlflow:
        candidate_rows_body(work, new.process(env_of(new)), "web_product")
    if args.baseline:
        compare_with_baseline(args, work, script, env_of)
        return

    results: dict[str, dict] = {}
    results["host_before"] = host_reference(new, work, env_of(new), args.customers, args.seed)
    runs = {"recsys": args.connections, "recsys_few": args.few_connections}
    if not args.few_connections:
        del runs["recsys_few"]
    if args.rate:
        runs["recsys_paced"] = args.rate_connections
    logged = 0
    for name, connections in runs.items():
        rate = args.rate if name == "recsys_paced" else 0
        results[name], ready = serve_run(new, env_of(new), work, script, args, connections, rate)
        logged += results[name]["decisions_logged"]
    results["recsys"]["decisions_logged"] = logged
    if not args.skip_mlflow:
        results["mlflow"] = mlflow_run(env_of(new), work, args)
    if not args.skip_score:
        results["score"] = score_run(new, env_of(new), work)
    results["host_after"] = host_reference(new, work, env_of(new), args.customers, args.seed)
    print_table(results, ready, args)
    (work / "results.json").write_text(json.dumps({"results": results, "model": ready}, indent=2))


def _count_rows(path: Path) -> int:
    import sqlite3

    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT count(DISTINCT decision_id) FROM decisions").fetchone()[0]
    finally:
        con.close()


def print_table(results: dict, ready: dict, args: argparse.Namespace) -> None:
    print()
    print(
        f"model {ready['model']['name']} v{ready['model']['version']}, "
        f"catalogue {ready['catalogue']['offers']} offers / "
        f"{ready['catalogue']['touchpoints']} touchpoints, {args.customers:,} customers, "
        f"policy {ready['policy']}"
    )
    print(
        f"load: wrk, {args.threads} thread(s), "
        f"{args.duration} s per server; service with {args.workers} uvicorn worker(s)"
    )
    print(
        f"{'server':<34}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'errors':>9}"
        f"{'CPU ms/req':>12}  connections per worker"
    )
    labels = {
        "recsys": f"recsys /v1/decisions, {args.connections} conns",
        "recsys_few": f"recsys /v1/decisions, {args.few_connections} conns",
        "recsys_paced": f"recsys paced {args.rate}/s, {args.rate_connections} conns",
        "mlflow": "mlflow models serve (score only)",
    }
    for name, r in results.items():
        if name not in labels:
            continue
        print(
            f"{labels[name]:<34}{r['per_second']:>10.1f}{r['p50_ms']:>10.2f}"
            f"{r['p95_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>9}"
            f"{r['cpu_loop_ms'] + r['cpu_other_ms']:>12.2f}  {r['connections_per_worker']}"
        )
    print(
        "CPU ms/req: server CPU per request, all worker processes; recsys event loops / other "
        "threads: "
        + ", ".join(
            f"{name} {results[name]['cpu_loop_ms']:.2f} / {results[name]['cpu_other_ms']:.2f}"
            for name in ("recsys", "recsys_few", "recsys_paced")
            if name in results
        )
    )
    if "mlflow" in results:
        print(
            f"mlflow rows per request: {results['mlflow']['rows_per_request']}; throughput "
            f"ratio recsys/mlflow: "
            f"{results['recsys']['per_second'] / results['mlflow']['per_second']:.1f}x"
        )
    print(f"decisions logged during the run: {results['recsys']['decisions_logged']:,}")
    paced = results.get("recsys_paced")
    if paced is not None:
        # The goal: >= 1,000 decisions/s, and at that load p50 <= 3 ms, p99 <= 10 ms.
        checks = {
            ">= 1,000/s closed loop": results["recsys"]["per_second"] >= 1000,
            f"paced run reached {args.rate:,}/s": paced["per_second"] >= 0.97 * args.rate,
            "p50 <= 3 ms": paced["p50_ms"] <= 3.0,
            "p99 <= 10 ms": paced["p99_ms"] <= 10.0,
            "no errors": all(r["errors"] == 0 for n, r in results.items() if n in labels),
        }
        if "mlflow" in results:
            ratio = results["recsys"]["per_second"] / results["mlflow"]["per_second"]
            checks[">= 10x mlflow"] = ratio >= 10.0
        print(
            "goal: "
            + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in checks.items())
        )
    before, after = results["host_before"], results["host_after"]
    print(
        f"host reference, before / after the runs: a plain Python loop step "
        f"{before['python_loop_ns']:.1f} / {after['python_loop_ns']:.1f} ns, one decision in "
        f"process {before['decision_cpu_ms']:.3f} / {after['decision_cpu_ms']:.3f} ms CPU back to "
        f"back, {before['paused_decision_cpu_ms']:.3f} / {after['paused_decision_cpu_ms']:.3f} "
        "ms 2 ms apart"
    )
    if "score" in results:
        print(
            f"recsys score: {results['score']['summary']} "
            f"(wall incl. start-up {results['score']['seconds']:.1f} s)"
        )


if __name__ == "__main__":
    main()
