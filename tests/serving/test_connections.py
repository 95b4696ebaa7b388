"""serving.connections in a real uvicorn server (in a thread) with small limits."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from recsys.settings import ServingSettings
from serving.connections import GuardedHttpProtocol, configure_connections, open_connections
from tests.serving.reliability.servers import free_port

LIMITS = ServingSettings(header_timeout_seconds=0.5, max_header_bytes=1024, max_connections=4)


@pytest.fixture
def server():
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(2)
        return {"status": "slow"}

    configure_connections(LIMITS)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=GuardedHttpProtocol, log_level="warning"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield port
    running.should_exit = True
    thread.join()
    configure_connections(ServingSettings())


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_a_connection_that_sends_no_complete_head_is_closed(server):
    silent = socket.create_connection(("127.0.0.1", server))
    partial = socket.create_connection(("127.0.0.1", server))
    partial.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\n")
    assert closed_within(silent, 3) and closed_within(partial, 3)
    assert httpx.get(f"http://127.0.0.1:{server}/ok").status_code == 200


def test_a_keep_alive_connection_gets_the_same_deadline_for_its_next_head(server):
    s = socket.create_connection(("127.0.0.1", server))
    s.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):  # the whole response, head and body
        answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /ok HTTP/1.1\r\n")  # the next head, never finished
    assert closed_within(s, 3)


def test_a_head_larger_than_the_limit_gets_431(server):
    with socket.create_connection(("127.0.0.1", server)) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\nhost: x\r\nx-filler: " + b"a" * 4096 + b"\r\n\r\n")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"errors"' in answer


def test_past_the_cap_the_oldest_idle_connection_makes_room(server):
    idle = [socket.create_connection(("127.0.0.1", server)) for _ in range(4)]
    time.sleep(0.1)
    assert httpx.get(f"http://127.0.0.1:{server}/ok").status_code == 200
    assert closed_within(idle[0], 1)  # the oldest one was closed for the new client
    for s in idle:
        s.close()


def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503(server):
    url = f"http://127.0.0.1:{server}/slow"
    busy = [threading.Thread(target=httpx.get, args=(url,), kwargs={"timeout": 10})
            for _ in range(4)]  # fmt: skip
    for t in busy:
        t.start()
    deadline = time.monotonic() + 5
    while open_connections() < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_connections() == 4
    refused = httpx.get(f"http://127.0.0.1:{server}/ok")
    for t in busy:
        t.join()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["errors"][0]["message"] == "too many open connections; retry"
