"""Worker processes that each listen on a socket of their own (``SO_REUSEPORT``).

uvicorn's multi-worker mode binds one listening socket in the parent and shares it: the
worker whose event loop wakes first accepts every pending connection (asyncio and libuv
accept in a loop). Clients that open their connections together (a load balancer's pool, a
web tier, a load tool) then all land on one worker while the others idle; measured here with
16 keep-alive connections and 2 workers: 15 on one worker, 1 on the other. With
``SO_REUSEPORT`` every worker binds its own listening socket on the same address and the
kernel spreads new connections over them by a hash of the client address and port.

A hash spreads connections evenly only on average: 32 connections opened together split
9 / 23 in one benchmark run, and the worker holding 23 queued requests while the other had
spare time. With ``balance`` each worker also publishes how many connections it holds (one
small file per worker in a folder the parent creates), and a worker holding more than its
fair share (and at least 2 more than the least loaded worker) answers the next request on
one of its connections with ``connection: close``. The client reconnects (keep-alive pools
and load tools do so on their own) and the kernel hashes the new connection again, until the
split is even. A closed connection is a normal HTTP/1.1 event, so no request fails.

With ``pin`` and as many workers as cores, each worker also runs on a core of its own
(:func:`claim_core`): its event loop and its decision thread hand each request over, and
take turns, on one core and its caches, instead of the scheduler moving them (and the other
worker's threads) between the cores. A worker claims the first free core by holding an
``flock`` on a file per core in the same folder; the lock goes with the process, so a worker
the supervisor restarts takes the dead one's core.

uvicorn's supervisor (:class:`uvicorn.supervisors.Multiprocess`: health checks, restarts,
signals) is kept as it is. It hands each new worker the parent's list of sockets; here that
list holds a :class:`WorkerAddress`, which the worker unpickles into a fresh
``SO_REUSEPORT`` socket of its own. A worker's socket closes with the worker, so no
connection waits in the queue of a dead worker.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def reuse_port_supported() -> bool:
    """Whether this platform balances connections over ``SO_REUSEPORT`` sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT`` (not yet listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class ConnectionBalance:
    """This worker's open connections, and its siblings', through one small file per worker.

    Parameters
    ----------
    folder : the folder all workers of one service share
    refresh_s : how often the siblings' files are read again (their counts may be this old)
    """

    def __init__(self, folder: str | Path, refresh_s: float = 0.1):
        self.folder = Path(folder)
        self.refresh_s = refresh_s
        self.name = str(os.getpid())
        self.open = 0
        self.closing = 0  # connections told to close that have not closed yet
        self._fd = os.open(self.folder / self.name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        self._siblings: list[int] = []
        self._read_at = float("-inf")
        self._publish()
        atexit.register(self.close)

    def _publish(self) -> None:
        os.pwrite(self._fd, b"%12d" % (self.open - self.closing), 0)

    def opened(self) -> None:
        self.open += 1
        self._publish()

    def closed(self, was_closing: bool) -> None:
        self.open -= 1
        self.closing -= was_closing
        self._publish()

    def siblings(self) -> list[int]:
        """The other live workers' connection counts (read at most every ``refresh_s``)."""
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            counts = []
            for entry in os.scandir(self.folder):
                if entry.name == self.name or not entry.name.isdigit():
                    continue
                if not psutil.pid_exists(int(entry.name)):  # a worker that died without cleaning up
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    continue
                with contextlib.suppress(OSError, ValueError), open(entry.path, "rb") as f:
                    counts.append(int(f.read() or 0))
            self._siblings = counts
        return self._siblings

    def should_shed(self) -> bool:
        """Whether this worker holds more than its share: then one connection should close."""
        siblings = self.siblings()
        if not siblings:
            return False
        mine = self.open - self.closing
        fair = -(-(mine + sum(siblings)) // (len(siblings) + 1))  # ceil(total / workers)
        return mine > fair and mine - min(siblings) >= 2

    def shed(self) -> None:
        self.closing += 1
        self._publish()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.folder / self.name)


_balance: ConnectionBalance | None = None  # this worker's, when the service balances
_claimed: tuple[int, int] | None = None  # this worker's core, and the descriptor holding it


class BalancedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that closes connections of an over-full worker.

    Without a :class:`ConnectionBalance` in this process it is uvicorn's protocol as is.
    """

    _shedding = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if _balance is not None:
            _balance.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        if _balance is not None:
            _balance.closed(self._shedding)
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if (
            _balance is not None
            and cycle is not previous
            and cycle.keep_alive
            and not self.pipeline
            and not self._shedding
            and _balance.should_shed()
        ):
            # Answered with `connection: close`, then closed; the client reconnects.
            cycle.keep_alive = False
            self._shedding = True
            _balance.shed()


def can_pin() -> bool:
    """Whether this platform sets CPU affinity (Linux)."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def claim_core(folder: str | Path) -> int | None:
    """Claim the first core of this process's allowed set that no sibling holds.

    Returns the core, or None when every core is held. The claim lasts until the process
    ends; :func:`pin_to_claimed_core` then moves the calling thread onto the core.
    """
    global _claimed
    for cpu in sorted(os.sched_getaffinity(0)):
        fd = os.open(Path(folder) / f"cpu-{cpu}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claimed = (cpu, fd)
        return cpu
    return None


def pin_to_claimed_core() -> int | None:
    """Run the calling thread, and the threads it starts from now on, on the core this
    worker claimed; None (nothing changes) if it claimed none.

    The worker calls it from its event loop once start-up is done: the loop and the decision
    thread (started by the first request) share the core, while the threads start-up began
    (WAL checkpoints, which release the GIL; the registry poller) stay free to run beside
    them on another core.
    """
    if _claimed is None:
        return None
    os.sched_setaffinity(0, {_claimed[0]})
    return _claimed[0]


def worker_socket(
    host: str, port: int, balance_folder: str | None, pin_folder: str | None = None
) -> socket.socket:
    """In a worker: its own ``SO_REUSEPORT`` socket, its place in the balance and its core."""
    global _balance
    if pin_folder is not None and _claimed is None:
        claim_core(pin_folder)
    sock = bind_reuse_port(host, port)
    if balance_folder is not None and _balance is None:
        _balance = ConnectionBalance(balance_folder)
    return sock


@dataclass(frozen=True)
class WorkerAddress:
    """Where a worker listens; pickled to a worker, it arrives as that worker's own socket.

    Given to uvicorn's supervisor in place of a shared socket (the supervisor only passes
    it on to each worker it starts).
    """

    host: str
    port: int
    balance_folder: str | None = None
    pin_folder: str | None = None

    def __reduce__(self) -> tuple[Any, tuple[str, int, str | None, str | None]]:
        return worker_socket, (self.host, self.port, self.balance_folder, self.pin_folder)


def run_workers(config: Any, balance: bool = False, pin: bool = False) -> None:
    """Run ``config.workers`` uvicorn workers, each on its own ``SO_REUSEPORT`` socket.

    The parent binds the address first (without listening, so it never receives a
    connection): a port another program holds fails here, once, with a clear message,
    instead of in every worker the supervisor would restart. ``balance``: the workers even
    out their connections (:class:`ConnectionBalance`); ``config.http`` must then be
    :class:`BalancedHttpToolsProtocol`. ``pin``: each worker runs on a core of its own
    (:func:`claim_core`) when the workers are as many as the cores this process may use (a
    host or a cpuset given to the service).
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    try:
        reserved = bind_reuse_port(config.host, config.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    cores = len(os.sched_getaffinity(0)) if can_pin() else 0
    if pin and not 1 < config.workers == cores:
        # On a shared host (more cores than workers) a pinned worker could not move away
        # from a neighbour's busy core; with fewer cores than workers there is none to own.
        logger.info("workers not pinned to cores: %d workers, %d cores", config.workers, cores)
        pin = False
    folder = tempfile.mkdtemp(prefix="recsys-workers-") if balance or pin else None
    try:
        address = WorkerAddress(
            config.host,
            config.port,
            folder if balance else None,
            folder if pin else None,
        )
        Multiprocess(config, sockets=[address]).run()
    finally:
        reserved.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
