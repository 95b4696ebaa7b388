"""``recsys serve`` in a subprocess on the session's demo data, on a free port: the one way
the tests that need a real server (workers, the live catalogue, the browser client) start it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def call(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    """One JSON request; the status and the body, errors included."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class RunningService:
    """A started ``recsys serve``: its base URL, its environment and, once it has stopped,
    what it printed."""

    base: str
    env: dict[str, str]
    log_file: Path
    proc: subprocess.Popen = field(repr=False)
    output: str = ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited during start-up: {self.log()}"
            try:
                if call("GET", f"{self.base}/readyz")[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.1)
        raise AssertionError(f"the service was not ready within {timeout} s: {self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")[-3000:]


def service_env(demo_env: dict[str, Any], folder: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test service on the demo data: its own event log and model
    cache in ``folder``, no model polling, no compiled scorer; ``overrides`` on top."""
    settings = demo_env["settings"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RECSYS_ENVIRONMENT="test",
        RECSYS_WAREHOUSE_PATH=str(settings.warehouse_path),
        RECSYS_ONLINE_SQLITE_PATH=str(settings.online_sqlite_path),
        RECSYS_EVENT_LOG_URL=f"sqlite:///{folder / 'events.sqlite'}",
        RECSYS_LIFECYCLE__MODEL_CACHE_DIR=str(folder / "cache"),
        RECSYS_LIFECYCLE__COMPILED_SCORER="false",
        RECSYS_LIFECYCLE__MODEL_POLL_SECONDS="0",
    )
    env.update(overrides)
    return env


@contextmanager
def running_service(
    demo_env: dict[str, Any], folder: Path, *, workers: int = 1, **env: str
) -> Iterator[RunningService]:
    """``recsys serve --workers N`` on the demo's model, ready; stopped (SIGTERM to its
    process group) on leaving the block, its output then in ``.output``.

    ``env`` adds or overrides ``RECSYS_*`` variables of :func:`service_env`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "recsys", "serve", "--port", str(port)]
    command += ["--workers", str(workers), "--model-dir", str(demo_env["model_dir"])]
    environment = service_env(demo_env, folder, **env)
    log_file = folder / "service.log"
    with open(log_file, "wb") as out:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(
            command,
            cwd=folder,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = RunningService(f"http://127.0.0.1:{port}", environment, log_file, proc)
    try:
        service.wait_ready()
        yield service
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        service.output = log_file.read_text(encoding="utf-8", errors="replace")
