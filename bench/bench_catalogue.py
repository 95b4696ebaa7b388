"""Catalogue change -> first decision that uses it, on a running 2-worker service.

Builds a small demo warehouse and online store under ``--work`` (first use; ``--fresh``
rebuilds), starts ``recsys serve --workers 2`` (no model: the popularity fallback, greedy,
so the offers a customer gets do not change between rounds) with the default
``serving.catalog_poll_seconds`` unless ``--poll`` is given, then per round renames the
first offer a fixed customer gets at a fixed touchpoint:

- **data load**: ``recsys data load`` of a one-offer ``offers.yaml``;
- **PUT**: ``PUT /admin/offers/{id}`` (the worker that answers serves it at once);

the clock starts when the change was committed (the warehouse file's modification time,
read once the edit has returned), and the bench
asks for that customer's decision in a loop (new connection each time, so both workers
answer) until the offer's new name comes back (**first decision**), and asks
``GET /admin/catalog`` until both workers report the new catalogue (**every worker**).

Run: ``python bench/bench_catalogue.py [--rounds 5] [--poll 2.0]``; prints one table and
writes ``catalogue.json`` under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from workload import policy_env

ROOT = Path(__file__).resolve().parents[1]
CUSTOMER_TOUCHPOINT = "web_home"


def call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def recsys(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "recsys", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def build(work: Path, env: dict[str, str], customers: int) -> None:
    if (work / "online.sqlite").is_file():
        return
    recsys("data", "generate", "--customers", str(customers), "--days", "30", "--out",
           str(work / "demo"), env=env)  # fmt: skip
    recsys("data", "load", str(work / "demo"), "--db", str(work / "warehouse.duckdb"), env=env)
    recsys("features", "materialize", "--store", "sqlite", env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check, timeout: float = 60.0) -> float:
    """Seconds until ``check()`` is true (polled as fast as the service answers)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():
            return time.perf_counter() - started
    raise TimeoutError(f"not seen within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench_catalogue")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=None, help="catalog_poll_seconds")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    work = args.work.resolve()
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RECSYS_ENVIRONMENT="test",
        RECSYS_WAREHOUSE_PATH=str(work / "warehouse.duckdb"),
        RECSYS_ONLINE_STORE="sqlite",
        RECSYS_ONLINE_SQLITE_PATH=str(work / "online.sqlite"),
        RECSYS_MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        RECSYS_EVENT_LOG_URL=f"sqlite:///{work / 'events.sqlite'}",
        RECSYS_LIFECYCLE__MODEL_CACHE_DIR=str(work / "model_cache"),
        RECSYS_LIFECYCLE__START_WITHOUT_MODEL="true",
        # greedy (epsilon-greedy with no exploration), so a customer's first offer is the
        # same every round: the default policy samples its slates
        **policy_env(0),
    )
    build(work, env, args.customers)
    if args.poll is not None:
        env["RECSYS_SERVING__CATALOG_POLL_SECONDS"] = str(args.poll)
    offers = {o["offer_id"]: o for o in yaml.safe_load((work / "demo" / "offers.yaml").read_text())}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (work / "service.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys", "serve", "--workers", "2", "--port", str(port)],
        env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped bench stops its service
    try:
        until(lambda: _ready(base), timeout=300)
        customer = "C0000001"
        request = {"customer_id": customer, "touchpoint": CUSTOMER_TOUCHPOINT}
        offer_id = call("POST", f"{base}/v1/decisions", request)[1]["offers"][0]["offer_id"]
        poll = call("GET", f"{base}/admin/catalog")[1]["poll_seconds"]
        for way in ("data load", "PUT"):
            first, every = [], []
            for k in range(args.rounds):
                name = f"{way} round {k}"
                record = {**offers[offer_id], "name": name}
                if way == "data load":
                    folder = work / "edit"
                    folder.mkdir(exist_ok=True)
                    (folder / "offers.yaml").write_text(yaml.safe_dump([record]))
                    recsys("data", "load", str(folder), env=env)
                    version = None
                else:
                    status, answer = call("PUT", f"{base}/admin/offers/{offer_id}", record)
                    assert status == 200, answer
                    version = answer["catalog"]["version"]
                committed = _written_at(work / "warehouse.duckdb")
                until(lambda n=name: _decided(base, request, n))
                first.append(time.time() - committed)
                while version is None:  # the version of a worker that serves the change
                    offer = call("GET", f"{base}/v1/offers/{offer_id}")[1]
                    version = offer["catalog_version"] if offer["name"] == name else None
                seen: dict[int, str] = {}
                until(lambda v=version, seen=seen: _all_workers(base, v, seen))
                every.append(time.time() - committed)
            results[way] = {"first_decision_s": first, "every_worker_s": every}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    (work / "catalogue.json").write_text(json.dumps({"poll_seconds": poll, **results}, indent=2))
    print(f"catalogue change -> decision, 2 workers, catalog_poll_seconds={poll}, "
          f"{args.rounds} rounds (median / max, seconds)")  # fmt: skip
    print(f"{'edit':<12}{'first decision':>20}{'every worker':>20}")
    for way, r in results.items():
        cells = [f"{statistics.median(v):.2f} / {max(v):.2f}" for v in r.values()]
        print(f"{way:<12}{cells[0]:>20}{cells[1]:>20}")


def _written_at(warehouse: Path) -> float:
    """When the warehouse was last written (its file or its write-ahead log): the commit."""
    files = [warehouse, Path(f"{warehouse}.wal")]
    return max(f.stat().st_mtime for f in files if f.exists())


def _ready(base: str) -> bool:
    try:
        return call("GET", f"{base}/readyz")[0] == 200
    except OSError:
        time.sleep(0.5)
        return False


def _decided(base: str, request: dict, name: str) -> bool:
    return any(
        o["name"] == name for o in call("POST", f"{base}/v1/decisions", request)[1]["offers"]
    )


def _all_workers(base: str, version: str, seen: dict[int, str]) -> bool:
    """Both workers seen serving ``version`` (``seen``: each worker's last answer)."""
    status = call("GET", f"{base}/admin/catalog")[1]
    seen[status["worker"]] = status["version"]
    time.sleep(0.01)  # lets the other worker take the next connection
    return len(seen) == 2 and set(seen.values()) == {version}


if __name__ == "__main__":
    main()
