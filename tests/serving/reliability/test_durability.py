"""Acknowledged events survive SIGKILL of the server, exactly once; failed batches are atomic.

A client posts 20,000 events (100 batches, 10 % re-sent ids, four connections at once) to a
real uvicorn server process that is SIGKILLed five times at random moments and restarted,
against the SQLite event log and against PostgreSQL. Afterwards: every event acknowledged
with a 2xx is stored exactly once; every batch that got an error (connection dropped
mid-request, 5xx) is stored whole or not at all; nothing is stored that was never sent. Each
check holds per batch and per kill: the number of events only sets how long the run takes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from recsys.decision import DecisionRequest
from recsys.eventlog import SQLiteEventLog
from recsys.eventlog_postgres import PostgresEventLog
from serving.security import ApiKeyRecord, hash_key, new_key
from tests.serving.factories import make_pipeline, write_model_dir
from tests.serving.reliability.conftest import LOG_DIR, SEEN

ROOT = Path(__file__).resolve().parents[3]
TOTAL_EVENTS = 20_000
BATCH = 200
DUPLICATE_SHARE = 0.10
CLIENTS = 4
#: How long a client keeps re-sending a batch: longer than a restart may take (Server.start
#: waits 60 s), so a batch is given up only if the server never comes back.
RETRY_SECONDS = 120.0
PG_URL = "postgresql://127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn process of the hardened app; SIGKILL and restart on demand."""

    def __init__(self, env: dict[str, str], name: str):
        self.env = env
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        with open(LOG_DIR / f"server-{self.name}-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.serving.reliability.server_app:create",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {LOG_DIR}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class Ledger:
    acked: set[str] = field(default_factory=set)
    failed_attempts: int = 0
    given_up: list[int] = field(default_factory=list)  # batches never acknowledged
    torn: list[str] = field(default_factory=list)  # retries that found a batch half-stored
    bad_acks: list[str] = field(default_factory=list)
    completed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_batches(pairs, seed: int) -> tuple[list[list[dict]], set[int]]:
    """``TOTAL_EVENTS`` events in batches of fresh ids; every tenth batch is a re-send batch.

    Returns the batches (re-send batches empty: filled when posted, with ids already
    acknowledged, so a fresh batch's ids are sent nowhere else until it is acknowledged and
    a retry's ``new`` count shows whether its failed attempt was committed) and the indexes
    of the re-send batches.
    """
    rng = np.random.default_rng(seed)
    ts = datetime.now(UTC).isoformat()
    batches: list[list[dict]] = []
    resend: set[int] = set()
    counter = 0
    for b in range(TOTAL_EVENTS // BATCH):
        if b % round(1 / DUPLICATE_SHARE) == 9:
            batches.append([])
            resend.add(b)
            continue
        batch = []
        for _ in range(BATCH):
            decision_id, offer_id = pairs[int(rng.integers(len(pairs)))]
            batch.append(
                {
                    "event_id": f"ev-{counter:06d}",
                    "decision_id": decision_id,
                    "offer_id": offer_id,
                    "type": ["impression", "click", "accept"][counter % 3],
                    "ts": ts,
                }
            )
            counter += 1
        batches.append(batch)
    return batches, resend


def run_load(
    server: Server, batches, resend: set[int], key: str, seed: int, kills: int = 5
) -> Ledger:
    """Four clients post every batch, retrying until acknowledged, while the server is
    SIGKILLed ``kills`` times at random points of the run and restarted."""
    ledger = Ledger()
    work: queue.Queue[int] = queue.Queue()
    for i in range(len(batches)):
        work.put(i)
    done = threading.Event()

    def post_until_acked(http: httpx.Client, index: int) -> None:
        failed_before = False
        deadline = time.monotonic() + RETRY_SECONDS
        while time.monotonic() < deadline:
            try:
                response = http.post("/v1/events", json={"events": batches[index]})
            except httpx.HTTPError:
                response = None
            if response is not None and 200 <= response.status_code < 300:
                body = response.json()
                n = len(batches[index])
                with ledger.lock:
                    if body["new"] + body["duplicates"] != n or body["rejected"]:
                        ledger.bad_acks.append(f"batch {index}: {body}")
                    if failed_before and index not in resend and body["new"] not in (0, n):
                        ledger.torn.append(f"batch {index}: {body['new']} of {n} new on retry")
                    ledger.acked.update(e["event_id"] for e in batches[index])
                    ledger.completed += 1
                return
            with ledger.lock:
                ledger.failed_attempts += 1
            failed_before = True
            time.sleep(0.1)  # the server is down or restarting
        with ledger.lock:
            ledger.given_up.append(index)

    by_id = {e["event_id"]: e for batch in batches for e in batch}
    picker = np.random.default_rng(seed + 1)

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10, headers={"X-API-Key": key}) as http:
            while True:
                try:
                    index = work.get_nowait()
                except queue.Empty:
                    return
                if index in resend:
                    with ledger.lock:
                        pool = sorted(ledger.acked)
                        picks = picker.choice(len(pool), size=min(BATCH, len(pool)), replace=False)
                        batches[index] = [by_id[pool[int(j)]] for j in picks]
                    if not batches[index]:
                        continue
                post_until_acked(http, index)

    def killer() -> None:
        rng = np.random.default_rng(seed)
        marks = sorted(rng.uniform(0.05, 0.9, kills) * len(batches))
        for mark in marks:
            while ledger.completed < mark and not done.is_set():
                time.sleep(0.002)
            if done.is_set():
                return
            time.sleep(float(rng.uniform(0, 0.05)))  # a random moment inside the stream
            server.kill()
            server.start()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    killing = threading.Thread(target=killer)
    for t in threads:
        t.start()
    killing.start()
    for t in threads:
        t.join()
    done.set()
    killing.join()
    return ledger


def check(ledger: Ledger, batches, stored_ids: list[str], kills: int) -> None:
    stored = set(stored_ids)
    assert len(stored_ids) == len(stored), "an event id is stored twice"
    assert ledger.bad_acks == []
    assert ledger.torn == [], "a batch was stored in part"
    sent = {e["event_id"] for batch in batches for e in batch}
    assert stored <= sent, "something was stored that was never sent"
    lost = ledger.acked - stored
    assert not lost, f"{len(lost)} acknowledged events are lost"
    for index in ledger.given_up:  # never acknowledged: stored whole or not at all
        own = {e["event_id"] for e in batches[index]} - ledger.acked
        assert not own & stored or own <= stored, f"batch {index} is stored in part"
    assert kills >= 3 and ledger.failed_attempts > 0 and len(ledger.acked) == len(sent)


def server_env(url: str, model_dir: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        {
            "RECSYS_EVENT_LOG_URL": url,
            "RECSYS_TEST_MODEL_DIR": str(model_dir),
            "RECSYS_SERVING_API_KEYS": json.dumps(
                [ApiKeyRecord(id="loader", scope="secret", hash=hash_key(key)).model_dump()]
            ),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def seed_decisions(log) -> list[tuple[str, str]]:
    pipeline = make_pipeline(log, clock=lambda: datetime.now(UTC))
    decisions = pipeline.run(
        [DecisionRequest(f"c{i % 3 + 1}", "web_home") for i in range(300)]
    ).decisions()
    return [(d.decision_id, o.offer_id) for d in decisions for o in d.offers]


def test_sqlite_log_survives_sigkill(tmp_path):
    path = tmp_path / "events.sqlite"
    log = SQLiteEventLog(path)
    pairs = seed_decisions(log)
    log.close()
    key = new_key("secret")
    SEEN.add(key)
    server = Server(
        server_env(f"sqlite:///{path}", write_model_dir(tmp_path / "model"), key), "sqlite"
    )
    server.start()
    batches, resend = make_batches(pairs, seed=3)
    try:
        ledger = run_load(server, batches, resend, key, seed=5)
    finally:
        server.kill()
    log = SQLiteEventLog(path)
    stored = [r[0] for r in log._con.execute("SELECT event_id FROM events")]
    log.close()
    print(
        f"sqlite: {server.starts - 1} kills, {len(ledger.acked)} acked ids, "
        f"{ledger.failed_attempts} failed attempts, {len(stored)} stored"
    )
    check(ledger, batches, stored, server.starts - 1)


@pytest.fixture
def pg_schema():
    schema = f"recsys_durability_{uuid.uuid4().hex[:10]}"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} must be reachable for this test: {exc}")
    yield schema
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_log_survives_sigkill(tmp_path, pg_schema):
    url = f"{PG_URL}?schema={pg_schema}"
    log = PostgresEventLog.from_url(url)
    pairs = seed_decisions(log)
    key = new_key("secret")
    SEEN.add(key)
    server = Server(server_env(url, write_model_dir(tmp_path / "model"), key), "postgres")
    server.start()
    batches, resend = make_batches(pairs, seed=4)
    try:
        ledger = run_load(server, batches, resend, key, seed=6)
    finally:
        server.kill()
    with log._connection() as con:
        stored = [r[0] for r in con.execute(f'SELECT event_id FROM "{pg_schema}".events')]
    log.close()
    check(ledger, batches, stored, server.starts - 1)
