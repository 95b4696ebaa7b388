"""Worker processes on their own SO_REUSEPORT sockets: connections opened together spread."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from serving.workers import ConnectionBalance, bind_reuse_port

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(
    port: int, workers: int, balance: bool = False, pin: bool = False
) -> subprocess.Popen:
    http = "serving.workers:BalancedHttpToolsProtocol" if balance else "auto"
    code = (
        "import uvicorn; from serving.workers import run_workers; "
        f"run_workers(uvicorn.Config('tests.serving.pid_app:app', host='127.0.0.1', "
        f"port={port}, workers={workers}, lifespan='off', log_level='warning', "
        f"http='{http}'), balance={balance}, pin={pin})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def ask(sock: socket.socket) -> tuple[int, bool]:
    """The answering worker's pid, and whether it asked to close the connection."""
    sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection before answering")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(body), b"connection: close" in head.lower()


def ask_pid(sock: socket.socket) -> int:
    return ask(sock)[0]


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


def test_balanced_workers_even_out_a_pool_of_keep_alive_connections():
    port = free_port()
    proc = start_workers(port, 2, balance=True)
    socks: list[socket.socket] = []
    try:
        pids = wait_for_workers(port, 2)
        # A client pool: 16 keep-alive connections opened together, each reconnecting when
        # the server closes it, as pools and load tools do.
        socks = connect_at_once(port, 16)
        closes = 0
        for _ in range(40):
            served = Counter()
            closed = 0
            for i, sock in enumerate(socks):
                pid, close = ask(sock)
                served[pid] += 1
                if close:
                    closed += 1
                    sock.close()
                    socks[i] = socket.create_connection(("127.0.0.1", port), timeout=5)
            closes += closed
            if not closed and set(served) == pids and max(served.values()) <= 9:
                break
            time.sleep(0.15)  # workers read each other's counts every 0.1 s
        else:
            raise AssertionError(f"connections never evened out: last round {served}")
        assert max(served.values()) - min(served.values()) <= 2, served
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_holding_more_than_its_share_closes_a_connection():
    port = free_port()
    proc = start_workers(port, 2, balance=True)
    kept: list[socket.socket] = []
    try:
        pids = wait_for_workers(port, 2)
        target = min(pids)
        time.sleep(0.3)  # the probes' connections are gone from the published counts
        # Keep every connection that lands on one worker, close the others at once: without
        # balancing that worker would end up holding all 12.
        shed_at = None
        for _ in range(400):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            pid, close = ask(sock)
            if pid != target:
                assert not close  # a worker with no connections kept never sheds
                sock.close()
                continue
            if close:
                shed_at = len(kept) + 1
                sock.close()
                break
            kept.append(sock)
            if len(kept) == 12:
                break
        assert shed_at is not None and shed_at <= 4, (shed_at, len(kept))
    finally:
        for sock in kept:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_a_worker_sheds_only_beyond_its_share(tmp_path):
    balance = ConnectionBalance(tmp_path, refresh_s=0)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(sibling.pid)).write_bytes(b"%12d" % 3)
        (tmp_path / "999999999").write_bytes(b"%12d" % 50)  # a dead worker's file
        for _ in range(4):
            balance.opened()
        assert not balance.should_shed()  # 4 vs 3: within one of the fair share
        balance.opened()
        assert balance.should_shed()  # 5 vs 3
        balance.shed()  # told to close: counted as gone already
        assert not balance.should_shed()
        assert (tmp_path / str(balance.name)).read_bytes() == b"%12d" % 4
        assert not (tmp_path / "999999999").exists()
        balance.closed(was_closing=True)
        assert (balance.open, balance.closing) == (4, 0)
    finally:
        sibling.kill()
        sibling.wait()
        balance.close()
    assert not (tmp_path / str(balance.name)).exists()
    assert not ConnectionBalance(tmp_path).should_shed()  # alone: nobody to shed to


CLAIM = """
import os, sys
from serving.workers import claim_core, pin_to_claimed_core
core = claim_core(sys.argv[1])
assert pin_to_claimed_core() == core
print(core, sorted(os.sched_getaffinity(0)), flush=True)
sys.stdin.read()  # hold the claim until told to go
"""


def claimant(folder: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(folder)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


def test_each_worker_claims_a_core_of_its_own_and_a_restart_takes_the_freed_one(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    try:
        claims = []
        for _ in cores:
            proc, line = claimant(tmp_path)
            procs.append(proc)
            claims.append(line)
        # one core each, in order, and the process runs only there
        assert claims == [f"{c} [{c}]" for c in cores]
        extra, line = claimant(tmp_path)
        procs.append(extra)
        assert line == f"None {cores}"  # every core held: left where the scheduler puts it
        first = procs.pop(0)
        first.kill()  # a worker dies: its lock, and so its core, goes with it
        first.wait()
        replacement, line = claimant(tmp_path)
        procs.append(replacement)
        assert line == f"{cores[0]} [{cores[0]}]"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def worker_affinities(workers: int, pin: bool) -> list[set[int]]:
    port = free_port()
    proc = start_workers(port, workers, pin=pin)
    try:
        pids = wait_for_workers(port, workers)
        return [os.sched_getaffinity(pid) for pid in sorted(pids)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_as_many_pinned_workers_as_cores_run_on_a_core_each():
    cores = os.sched_getaffinity(0)
    affinities = worker_affinities(len(cores), pin=True)
    assert sorted(affinities, key=min) == [{c} for c in sorted(cores)]
    assert worker_affinities(len(cores), pin=False) == [cores] * len(cores)


def test_workers_are_not_pinned_when_they_outnumber_the_cores():
    cores = os.sched_getaffinity(0)
    assert worker_affinities(len(cores) + 1, pin=True) == [cores] * (len(cores) + 1)
