"""Worker processes that each listen on a socket of their own (``SO_REUSEPORT``).

uvicorn's multi-worker mode binds one listening socket in the parent and shares it: the
worker whose event loop wakes first accepts every pending connection (asyncio and libuv
accept in a loop). Clients that open their connections together (a load balancer's pool, a
web tier, a load tool) then all land on one worker while the others idle; measured here with
16 keep-alive connections and 2 workers: 15 on one worker, 1 on the other. With
``SO_REUSEPORT`` every worker binds its own listening socket on the same address and the
kernel spreads new connections over them by a hash of the client address and port.

uvicorn's supervisor (:class:`uvicorn.supervisors.Multiprocess`: health checks, restarts,
signals) is kept as it is. It hands each new worker the parent's list of sockets; here that
list holds a :class:`WorkerAddress`, which the worker unpickles into a fresh
``SO_REUSEPORT`` socket of its own. A worker's socket closes with the worker, so no
connection waits in the queue of a dead worker.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class WorkerAddress:
    """Where a worker listens; pickled to a worker, it arrives as that worker's own socket.

    Given to uvicorn's supervisor in place of a shared socket (the supervisor only passes
    it on to each worker it starts).
    """

    host: str
    port: int

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return bind_reuse_port, (self.host, self.port)


def run_workers(config: Any) -> None:
    """Run ``config.workers`` uvicorn workers, each on its own ``SO_REUSEPORT`` socket.

    The parent binds the address first (without listening, so it never receives a
    connection): a port another program holds fails here, once, with a clear message,
    instead of in every worker the supervisor would restart.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    try:
        reserved = bind_reuse_port(config.host, config.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    try:
        Multiprocess(config, sockets=[WorkerAddress(config.host, config.port)]).run()
    finally:
        reserved.close()
