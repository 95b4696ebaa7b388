"""``recsys serve --workers 2``: uvicorn's own worker processes serve the decision service."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the service exited during start-up"
        try:
            if call("GET", f"{base}/readyz")[0] == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"the service was not ready within {timeout} s")


def test_recsys_serve_with_two_workers_serves_decisions(demo_env, tmp_path):
    settings = demo_env["settings"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RECSYS_ENVIRONMENT="test",
        RECSYS_WAREHOUSE_PATH=str(settings.warehouse_path),
        RECSYS_ONLINE_SQLITE_PATH=str(settings.online_sqlite_path),
        RECSYS_EVENT_LOG_URL=f"sqlite:///{tmp_path / 'events.sqlite'}",
        RECSYS_LIFECYCLE__MODEL_CACHE_DIR=str(tmp_path / "cache"),
        RECSYS_LIFECYCLE__COMPILED_SCORER="false",
        RECSYS_LIFECYCLE__MODEL_POLL_SECONDS="0",
    )
    command = [sys.executable, "-m", "recsys", "serve", "--workers", "2", "--port", str(port)]
    command += ["--model-dir", str(demo_env["model_dir"])]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        customers = sorted(demo_env["customers"])[:20]
        for customer in customers:
            status, body = call(
                "POST", f"{base}/v1/decisions", {"customer_id": customer, "touchpoint": "web_home"}
            )
            assert status == 200, body
            assert json.loads(body)["customer_id"] == customer
        status, body = call("POST", f"{base}/v1/decisions", {"customer_id": 7})
        assert status == 422 and json.loads(body)["errors"][0]["field"] == "customer_id"
        metrics = call("GET", f"{base}/metrics")[1].decode()
        assert "recsys_http_request_duration_seconds" in metrics  # summed over the workers
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    workers = set(re.findall(r"Started server process \[(\d+)\]", output))
    assert len(workers) == 2, output[-3000:]
