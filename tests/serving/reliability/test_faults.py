"""Fault injection against the real service: 2 uvicorn workers, our own PostgreSQL cluster
(event log) and our own redis-server (online store), on free ports in a temporary folder.

Clients decide and post one event per decision all along. For each fault: no worker dies
(no crash loop), no 500, every answer is a 200 (or the fallback) or a 503 with
``Retry-After`` while the fault lasts, full service (a model decision and a stored event,
``/readyz`` ready) within 10 s of the fault's end, and every acknowledged event is stored.
The table printed at the end is the issue's closing note (run with ``-s`` to see it).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from serving.security import ApiKeyRecord, hash_key, new_key
from tests.serving.factories import write_model_dir
from tests.serving.reliability.conftest import LOG_DIR, SEEN
from tests.serving.reliability.servers import PostgresCluster, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = "faults"
FAULT_SECONDS = 3.0
RECOVERY_LIMIT_S = 10.0
CLIENTS = 4
HEADER_TIMEOUT_S = 2.0  # serving.header_timeout_seconds of the service under test
DECIDE = {"customer_id": "c1", "touchpoint": "web_home"}


@dataclass
class Tally:
    """What the clients got during one case (decisions and events together)."""

    fault: str
    requests: int = 0
    ok: int = 0  # 200 from the model
    fallback: int = 0  # 200 from the fallback (decisions marked fallback)
    unavailable: int = 0  # 503 with Retry-After
    unavailable_without_retry_after: int = 0
    server_errors: int = 0  # 500 and any other 5xx
    other: dict[int, int] = field(default_factory=dict)
    dropped: int = 0  # connection dropped before an answer
    recover_s: float = float("nan")
    note: str = ""
    acked: list[tuple[str, float]] = field(default_factory=list)  # (event_id, sent at)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, response: httpx.Response, decision: bool) -> None:
        with self.lock:
            self.requests += 1
            status = response.status_code
            if status == 200:
                fallback = decision and response.json()["fallback"]
                self.fallback += fallback
                self.ok += not fallback
            elif status == 503:
                if response.headers.get("retry-after"):
                    self.unavailable += 1
                else:
                    self.unavailable_without_retry_after += 1
            elif status >= 500:
                self.server_errors += 1
            else:
                self.other[status] = self.other.get(status, 0) + 1


class Service:
    """The hardened test app in uvicorn, 2 workers, with the guarded HTTP protocol."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(LOG_DIR / "server-faults.log", "wb")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.serving.reliability.server_app:create",
             "--factory", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "2",
             "--http", "serving.connections:GuardedHttpProtocol", "--timeout-keep-alive", "5",
             "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited; see {LOG_DIR}"
            with contextlib.suppress(httpx.HTTPError):
                healthy = httpx.get(self.url + "/healthz", timeout=1).status_code == 200
                if healthy and len(self.workers()) == 2:
                    return
            time.sleep(0.1)
        raise RuntimeError("the service did not start within 90 s")

    def workers(self) -> set[int]:
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children()
        return {c.pid for c in children if "resource_tracker" not in " ".join(c.cmdline())}

    def worker_rss_mb(self) -> float:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.workers()) / 2**20

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """``CLIENTS`` threads: decide, then post one click for the decision, in a loop."""

    def __init__(self, service: Service, key: str, tally: Tally):
        self.service, self.key, self.tally = service, key, tally
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        headers = {"X-API-Key": self.key}
        with httpx.Client(base_url=self.service.url, headers=headers, timeout=20) as client:
            while not self.stopping.is_set():
                try:
                    decided = client.post("/v1/decisions", json=DECIDE)
                    self.tally.count(decided, decision=True)
                    if decided.status_code != 200 or not decided.json()["offers"]:
                        time.sleep(0.02)
                        continue
                    body = decided.json()
                    event_id, sent = uuid.uuid4().hex, time.monotonic()
                    posted = client.post("/v1/events", json={"events": [{
                        "event_id": event_id, "decision_id": body["decision_id"],
                        "offer_id": body["offers"][0]["offer_id"], "type": "click",
                        "ts": datetime.now(UTC).isoformat()}]})  # fmt: skip
                    self.tally.count(posted, decision=False)
                    if posted.status_code == 200 and posted.json()["new"] == 1:
                        with self.tally.lock:
                            self.tally.acked.append((event_id, sent))
                except httpx.TransportError:
                    with self.tally.lock:
                        self.tally.dropped += 1
                    time.sleep(0.02)


def full_service(service: Service, key: str) -> bool:
    """A model decision, its event stored, and /readyz ready."""
    try:
        with httpx.Client(base_url=service.url, headers={"X-API-Key": key}, timeout=5) as c:
            decided = c.post("/v1/decisions", json=DECIDE)
            if decided.status_code != 200 or decided.json()["fallback"]:
                return False
            body = decided.json()
            posted = c.post("/v1/events", json={"events": [{
                "event_id": uuid.uuid4().hex, "decision_id": body["decision_id"],
                "offer_id": body["offers"][0]["offer_id"], "type": "click",
                "ts": datetime.now(UTC).isoformat()}]})  # fmt: skip
            ready = c.get("/readyz")
            return posted.status_code == 200 and ready.json()["status"] == "ready"
    except httpx.HTTPError:
        return False


def wait_full_service(service: Service, key: str, limit: float = 60.0) -> float:
    started = time.monotonic()
    while not full_service(service, key):
        if time.monotonic() - started > limit:
            return float("inf")
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Bench:
    service: Service
    key: str
    pg: PostgresCluster
    redis: RedisServer
    rows: list[Tally] = field(default_factory=list)

    def stored_events(self) -> set[str]:
        with psycopg.connect(self.pg.url) as con:
            return {r[0] for r in con.execute(f"SELECT event_id FROM {SCHEMA}.events")}

    def run(
        self, fault: str, start: Callable[[], None], end: Callable[[], None], *,
        hold: float = FAULT_SECONDS, count_acks_after_start: bool = False,
    ) -> Tally:  # fmt: skip
        """Load on, ``start`` the fault, hold it, ``end`` it, measure the recovery."""
        tally = Tally(fault)
        workers = self.service.workers()
        with Load(self.service, self.key, tally):
            time.sleep(0.5)
            start()
            started = time.monotonic()
            time.sleep(hold)
            end()
            tally.recover_s = wait_full_service(self.service, self.key)
            time.sleep(0.3)
        self.rows.append(tally)
        self.check(tally, workers, started if count_acks_after_start else 0.0)
        return tally

    def check(self, tally: Tally, workers: set[int], acks_from: float) -> None:
        assert self.service.workers() == workers, f"{tally.fault}: a worker died"
        assert tally.server_errors == 0, f"{tally.fault}: {tally.server_errors} x 5xx"
        assert tally.unavailable_without_retry_after == 0, f"{tally.fault}: 503 w/o Retry-After"
        assert tally.recover_s <= RECOVERY_LIMIT_S, f"{tally.fault}: {tally.recover_s:.1f} s"
        acked = {event_id for event_id, sent in tally.acked if sent >= acks_from}
        lost = acked - self.stored_events()
        assert not lost, f"{tally.fault}: {len(lost)} acknowledged events lost"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("faults")
    pg = PostgresCluster()
    redis = RedisServer(root / "redis")  # not started: the first case starts without it
    key = new_key("secret")
    SEEN.add(key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({
        "RECSYS_EVENT_LOG_URL": f"{pg.url}?schema={SCHEMA}",
        "RECSYS_TEST_MODEL_DIR": str(write_model_dir(root / "model")),
        "RECSYS_TEST_REDIS_URL": redis.url,
        "RECSYS_SERVING_API_KEYS": json.dumps(
            [ApiKeyRecord(id="faults", scope="secret", hash=hash_key(key)).model_dump()]
        ),
        "RECSYS_SERVING__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_S),
        "PYTHONPATH": str(ROOT),
    })  # fmt: skip
    service = Service(env)
    made = Bench(service, key, pg, redis)
    try:
        yield made
    finally:
        service.stop()
        redis.close()
        pg.close()
        print_table(made.rows)


def print_table(rows: list[Tally]) -> None:
    head = f"{'fault':<40} {'requests':>8} {'200':>6} {'fallback':>8} {'503':>6} {'500':>4} "
    head += f"{'dropped':>7} {'recover s':>9}  note"
    lines = [head, "-" * len(head)]
    for t in rows:
        lines.append(
            f"{t.fault:<40} {t.requests:>8} {t.ok:>6} {t.fallback:>8} {t.unavailable:>6} "
            f"{t.server_errors:>4} {t.dropped:>7} {t.recover_s:>9.2f}  {t.note}"
        )
    table = "\n".join(lines)
    print("\n" + table)
    (LOG_DIR / "faults-table.txt").write_text(table + "\n")


# --------------------------------------------------------------------------- the cases
# One service for the module, faults in this order (pytest runs a module's tests in order).


def test_redis_down_at_start(bench):
    bench.service.start()  # Redis is not running: the service must start anyway
    ready = httpx.get(bench.service.url + "/readyz", timeout=5).json()
    assert ready["status"] == "degraded"
    bench.run("Redis down at start", start=lambda: None, end=bench.redis.start, hold=2.0)


def test_postgres_read_only_then_writable(bench):
    tally = bench.run(
        "PostgreSQL read-only, then writable",
        start=lambda: bench.pg.read_only(True),
        end=lambda: bench.pg.read_only(False),
    )
    assert tally.unavailable > 0  # the fault was seen, and answered 503 + Retry-After


def test_tables_dropped_then_back(bench):
    tally = bench.run(
        "PostgreSQL tables dropped, then back",
        start=lambda: bench.pg.admin(f"DROP TABLE {SCHEMA}.events, {SCHEMA}.decisions"),
        end=lambda: None,
        count_acks_after_start=True,  # the drop itself deletes what was stored before
    )
    tally.note = "tables created again by the service"


def test_postgres_stopped_then_started(bench):
    tally = bench.run("PostgreSQL stopped, then started", start=bench.pg.stop, end=bench.pg.start)
    assert tally.unavailable > 0


def test_redis_stopped_during_load(bench):
    tally = bench.run("Redis stopped during load", start=bench.redis.stop, end=bench.redis.start)
    assert tally.fallback > 0


def test_redis_paused(bench):
    tally = bench.run(
        "Redis paused (CLIENT PAUSE 4 s)",
        start=lambda: bench.redis.pause(4.0),
        end=lambda: None,
        hold=4.0,
    )
    assert tally.fallback > 0 and tally.unavailable == 0


def test_idle_connections(bench):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wanted = min(20_000, hard - 1_000)  # the rest: the clients, the test, the servers
    sockets: list[socket.socket] = []

    def open_idle() -> None:
        for _ in range(wanted):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", bench.service.port))
            sockets.append(s)

    def close_idle() -> None:
        for s in sockets:
            s.close()

    try:
        tally = bench.run(f"{wanted:,} idle connections", start=open_idle, end=close_idle)
    finally:
        close_idle()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    tally.note = f"fd limit {hard}: {wanted:,} sockets"


def _raw_exchange(port: int, payload: bytes, read_timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        with contextlib.suppress(OSError):  # the server may close while we still send
            s.sendall(payload)
        with contextlib.suppress(OSError):
            return s.recv(4096)
    return b""


def test_oversized_headers(bench):
    answers: list[bytes] = []
    before = bench.service.worker_rss_mb()

    def flood() -> None:
        filler = b"x" * (8 * 2**20)  # 8 MiB in one header
        head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: " + filler + b"\r\n\r\n"
        threads = [
            threading.Thread(target=lambda: answers.append(_raw_exchange(bench.service.port, head)))
            for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    tally = bench.run("oversized headers (20 x 8 MiB)", start=flood, end=lambda: None)
    grown = bench.service.worker_rss_mb() - before
    assert answers and all(a.startswith(b"HTTP/1.1 431") or a == b"" for a in answers)
    assert any(a.startswith(b"HTTP/1.1 431") for a in answers)
    assert grown < 100, f"workers grew by {grown:.0f} MB"
    tally.note = f"431 to {sum(a.startswith(b'HTTP/1.1 431') for a in answers)}/20; +{grown:.0f} MB"


def test_slow_bodies_without_a_key(bench):
    held: list[socket.socket] = []
    answers: list[bytes] = []
    before = bench.service.worker_rss_mb()

    def stall() -> None:
        head = (
            b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1048576\r\n\r\n" + b"[" * 1024
        )
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", bench.service.port), timeout=5)
            s.sendall(head)  # then nothing more: a stalled 1 MiB body
            held.append(s)
        for s in held:
            with contextlib.suppress(OSError):
                answers.append(s.recv(4096))

    try:
        tally = bench.run(
            "slow 1 MiB bodies without a key (400)",
            start=stall,
            end=lambda: [s.close() for s in held],
        )
    finally:
        for s in held:
            s.close()
    grown = bench.service.worker_rss_mb() - before
    refused = sum(a.startswith(b"HTTP/1.1 401") for a in answers)
    assert refused == 400, f"only {refused} of 400 got 401 before their body"
    assert grown < 100, f"workers grew by {grown:.0f} MB"
    tally.note = f"401 to {refused}/400 from the head; +{grown:.0f} MB"


def test_stalled_request_heads(bench):
    held: list[socket.socket] = []

    def stall() -> None:
        for i in range(500):
            s = socket.create_connection(("127.0.0.1", bench.service.port), timeout=5)
            if i % 2:  # half send part of a head and stall, half send nothing
                s.sendall(b"POST /v1/decisions HTTP/1.1\r\nhost: x\r\nx-api-key: ")
            held.append(s)

    closed: list[bool] = []

    def check_closed() -> None:
        for s in held:
            s.settimeout(HEADER_TIMEOUT_S + 3)
            try:
                closed.append(s.recv(1) == b"")
            except OSError:  # reset: closed too
                closed.append(True)

    try:
        tally = bench.run(
            "stalled request heads (500, slowloris)",
            start=stall,
            end=check_closed,
            hold=HEADER_TIMEOUT_S + 1,
        )
    finally:
        for s in held:
            s.close()
    assert sum(closed) == 500, f"{500 - sum(closed)} stalled connections were left open"
    tally.note = f"{sum(closed)}/500 closed by the {HEADER_TIMEOUT_S:g} s head deadline"
