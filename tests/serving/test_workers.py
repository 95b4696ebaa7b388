"""Worker processes on their own SO_REUSEPORT sockets: connections opened together spread."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from serving.workers import bind_reuse_port

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(port: int, workers: int) -> subprocess.Popen:
    code = (
        "import uvicorn; from serving.workers import run_workers; "
        f"run_workers(uvicorn.Config('tests.serving.pid_app:app', host='127.0.0.1', "
        f"port={port}, workers={workers}, lifespan='off', log_level='warning'))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def ask_pid(sock: socket.socket) -> int:
    sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return int(data.split(b"\r\n\r\n", 1)[1])


def connect_at_once(port: int, n: int) -> list[socket.socket]:
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:  # non-blocking: every handshake is under way before any is accepted
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(5)
    return socks


def pids_of_fresh_connections(port: int, n: int) -> list[int]:
    pids = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            pids.append(ask_pid(sock))
    return pids


def wait_for_workers(port: int, workers: int, timeout: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # not listening yet
            seen.update(pids_of_fresh_connections(port, 8))
        if len(seen) >= workers:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"{workers} workers did not all answer within {timeout} s: {seen}")


@pytest.fixture
def two_workers():
    port = free_port()
    proc = start_workers(port, 2)
    try:
        pids = wait_for_workers(port, 2)
        yield port, pids
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_connections_spread_over_the_workers_whatever_each_is_doing(two_workers):
    port, pids = two_workers
    # One worker is busy (its event loop blocked for a second) while a client pool opens
    # its keep-alive connections at once. With one shared socket the idle worker accepts
    # them all and keeps them; with a socket per worker the kernel spreads them.
    busy = socket.create_connection(("127.0.0.1", port), timeout=5)
    busy.sendall(b"GET /busy HTTP/1.1\r\nhost: test\r\n\r\n")
    time.sleep(0.2)
    socks = connect_at_once(port, 32)
    try:
        served = Counter(ask_pid(s) for s in socks)
    finally:
        for s in socks:
            s.close()
        busy.close()
    assert set(served) == pids, served
    assert max(served.values()) <= 26, served  # 32 connections hashed over 2 sockets


def test_a_port_held_by_another_program_stops_the_service_at_once():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = start_workers(port, 2)
        out, _ = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 3  # uvicorn's STARTUP_FAILURE, not a restart loop
    assert f"cannot listen on 127.0.0.1:{port}" in out.decode()


def test_a_worker_socket_is_bound_with_reuse_port():
    first = bind_reuse_port("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = bind_reuse_port("127.0.0.1", port)  # the same address twice: allowed
    try:
        for sock in (first, second):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockname() == ("127.0.0.1", port)
    finally:
        first.close()
        second.close()
