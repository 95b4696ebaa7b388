"""Model faults against the real service: 2 uvicorn workers following a registry alias.

Each case counts what clients got while the fault lasted and how long the service took to
serve a good model again, and prints one row of the fault table::

    fault | requests | 200 | fallback | 503 | 500 | seconds to recover

A truncated model promoted to champion crashes LightGBM natively when loaded; the workers
must check it in a child process, refuse it (one log line naming the version), keep the
previous model, never restart, and serve a good version promoted afterwards within 10 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from recsys.scoring.digest import MODEL_DIGEST_TAG
from recsys.settings import ApiKeyRecord, hash_key
from serving.credentials import new_key
from serving.model import read_model_dir
from tests.serving.factories import train_tiny_model, write_model_dir
from tests.serving.reliability.conftest import LOG_DIR, SEEN
from tests.serving.reliability.test_lifecycle import NAME, Registry

ROOT = Path(__file__).resolve().parents[3]
WORKERS = 2
RECOVERY_LIMIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    """What the clients got, in order: (monotonic time, status, model version, fallback)."""

    seen: list[tuple[float, int, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: int, version: str, fallback: bool) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), status, version, fallback))

    def row(self, fault: str, recovered_s: float) -> str:
        statuses = [s for _, s, _, _ in self.seen]
        fallback = sum(1 for _, s, _, f in self.seen if s == 200 and f)
        return (
            f"| {fault} | {len(statuses)} | {statuses.count(200)} | {fallback} | "
            f"{statuses.count(503)} | {statuses.count(500)} | {recovered_s:.1f} |"
        )


class Service:
    """``uvicorn --workers 2`` of :mod:`tests.serving.reliability.model_server_app`."""

    def __init__(self, env: dict[str, str], log_file: Path):
        self.port = free_port()
        self.log_file = log_file
        with open(log_file, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn",
                 "tests.serving.reliability.model_server_app:create", "--factory",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(WORKERS),
                 "--no-access-log", "--log-level", "info"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, key: str, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            try:
                r = httpx.post(self.url + "/v1/decisions", json=BODY, timeout=5,
                               headers={"X-API-Key": key})  # fmt: skip
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service not ready in {timeout} s: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def worker_starts(self) -> int:
        return len(re.findall(r"Started server process \[\d+\]", self.log()))


BODY = {"customer_id": "c1", "touchpoint": "web_home"}


def truncated(folder: Path, fraction: float = 0.5) -> Path:
    text = (folder / "model.txt").read_text()
    (folder / "model.txt").write_text(text[: int(len(text) * fraction)])
    return folder


def register(reg: Registry, folder: Path) -> str:
    version = reg.register(folder)
    reg.client.set_model_version_tag(NAME, version, MODEL_DIGEST_TAG,
                                     read_model_dir(folder).digest())  # fmt: skip
    return version


def load(service: Service, key: str, tally: Tally, stop: threading.Event) -> None:
    with httpx.Client(base_url=service.url, headers={"X-API-Key": key}, timeout=15) as http:
        while not stop.is_set():
            try:
                r = http.post("/v1/decisions", json=BODY)
            except httpx.HTTPError:
                tally.add(0, "", False)  # no answer at all (a dead worker)
                time.sleep(0.05)
                continue
            body = r.json() if r.status_code == 200 else {}
            version = body.get("model", {}).get("version", "")
            tally.add(r.status_code, version, bool(body.get("fallback")))
            time.sleep(0.02)


@pytest.fixture
def service_env(tmp_path):
    key = new_key("secret")
    SEEN.add(key)
    reg = Registry(tmp_path / "registry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        {
            "RECSYS_EVENT_LOG_URL": f"sqlite:///{tmp_path / 'events.sqlite'}",
            "RECSYS_TEST_REGISTRY_URI": reg.uri,
            "RECSYS_TEST_MODEL_CACHE": str(tmp_path / "cache"),
            "RECSYS_TEST_MODEL_POLL": "1",
            "RECSYS_SECURITY__API_KEYS": json.dumps(
                [ApiKeyRecord(id="client", scope="secret", hash=hash_key(key)).model_dump()]
            ),
            "PYTHONPATH": str(ROOT),
        }
    )
    return reg, env, key


def test_a_truncated_champion_is_refused_by_every_worker_without_a_crash(service_env, tmp_path):
    reg, env, key = service_env
    good = register(reg, write_model_dir(tmp_path / "good"))
    bad = register(reg, truncated(write_model_dir(tmp_path / "bad", train_tiny_model(seed=1))))
    fixed = register(reg, write_model_dir(tmp_path / "fixed", train_tiny_model(seed=2)))
    reg.promote(good)
    service = Service(env, LOG_DIR / "model-faults-truncated.log")
    tally, stop = Tally(), threading.Event()
    clients = [threading.Thread(target=load, args=(service, key, tally, stop)) for _ in range(2)]
    try:
        service.wait_ready(key)
        for client in clients:
            client.start()
        time.sleep(2)
        reg.promote(bad)
        fault_started = time.monotonic()
        deadline = fault_started + 90
        while service.log().count(f"refusing model {NAME} v{bad}") < WORKERS:
            assert time.monotonic() < deadline, service.log()[-4000:]
            time.sleep(0.5)
        time.sleep(3)  # a few more polls: the refusal is remembered, not retried
        promoted = time.monotonic()
        reg.promote(fixed)
        deadline = promoted + 60
        recovered_at = None
        while time.monotonic() < deadline:
            with tally.lock:
                after = [(t, v) for t, s, v, _ in tally.seen if t > promoted]
            stale = [t for t, v in after if v != fixed]
            fresh = [t for t, v in after if v == fixed]
            if fresh and len([t for t in fresh if t > max(stale, default=0)]) >= 20:
                recovered_at = max(stale, default=promoted)
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for client in clients:
            if client.is_alive():
                client.join()
        service.stop()
    log = service.log()
    assert recovered_at is not None, f"version {fixed} not served within 60 s: {log[-4000:]}"
    recovery = recovered_at - promoted
    print("\n| fault | requests | 200 | fallback | 503 | 500 | seconds to recover |")
    print(tally.row(f"truncated model v{bad} promoted to champion", recovery))
    statuses = {s for _, s, _, _ in tally.seen}
    assert statuses == {200}, f"clients got {statuses}"
    during = {v for t, s, v, _ in tally.seen if fault_started <= t <= promoted}
    assert during == {good}, during  # the previous model, from both workers, all along
    assert service.worker_starts() == WORKERS, "a worker died and was restarted"
    assert log.count(f"refusing model {NAME} v{bad}") == WORKERS  # once per worker, no retry
    assert "the process crashed (SIG" in log
    assert recovery < RECOVERY_LIMIT_S


def damage_cached_copy(cache: Path, version: str) -> None:
    """Truncate the cached copy of ``version`` and rewrite its checksum to match: damage the
    checksum cannot see, so the child check has to catch it."""
    (entry,) = cache.glob(f"*/v{version}")
    truncated(entry / "artifacts", 0.5)
    entry.with_name(entry.name + ".sha256").write_text(read_model_dir(entry).digest())


def run_until(service: Service, key: str, until, timeout: float = 120.0) -> tuple[Tally, float]:
    """Load from launch until ``until(tally)``; the tally (answers only) and the seconds
    from launch (worker start-up included)."""
    launched = time.monotonic()
    tally, stop = Tally(), threading.Event()
    clients = [threading.Thread(target=load, args=(service, key, tally, stop)) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        while not until(tally):
            assert time.monotonic() - launched < timeout, service.log()[-4000:]
            assert service.proc.poll() is None, service.log()[-4000:]
            time.sleep(0.2)
        took = time.monotonic() - launched
    finally:
        stop.set()
        for client in clients:
            client.join()
        service.stop()
    tally.seen = [entry for entry in tally.seen if entry[1] != 0]  # before the port opened
    return tally, took


def test_a_damaged_cache_entry_never_stops_the_start(service_env, tmp_path):
    reg, env, key = service_env
    good = register(reg, write_model_dir(tmp_path / "good"))
    reg.promote(good)
    cache = Path(env["RECSYS_TEST_MODEL_CACHE"])
    first = Service(env, LOG_DIR / "model-faults-cache-1.log")
    try:
        first.wait_ready(key)
    finally:
        first.stop()

    def serves(version: str):
        return lambda t: sum(1 for _, s, v, _ in t.seen if s == 200 and v == version) >= 20

    damage_cached_copy(cache, good)
    again = Service(env, LOG_DIR / "model-faults-cache-2.log")
    tally, took = run_until(again, key, serves(good))
    print("\n| fault | requests | 200 | fallback | 503 | 500 | seconds to recover |")
    print(tally.row("damaged cache entry at start, registry up (s from launch)", took))
    assert {s for _, s, _, _ in tally.seen} == {200}
    assert again.worker_starts() == WORKERS
    assert "discarding it and downloading it again" in again.log()

    damage_cached_copy(cache, good)
    down = dict(env, RECSYS_TEST_REGISTRY_URI="http://127.0.0.1:9",
                MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3")  # fmt: skip
    unreachable = Service(down, LOG_DIR / "model-faults-cache-3.log")
    answered = 40

    def answers(t: Tally) -> bool:
        return sum(1 for _, s, _, _ in t.seen if s != 0) >= answered

    tally, took = run_until(unreachable, key, answers)
    print(tally.row("damaged last good copy at start, registry down (serves the fallback)", took))
    assert len(tally.seen) >= answered
    assert {s for _, s, _, _ in tally.seen} == {200}
    assert all(fallback for _, _, _, fallback in tally.seen)
    assert unreachable.worker_starts() == WORKERS
    assert "the process crashed (SIG" in unreachable.log()
