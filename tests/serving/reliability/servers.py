"""Our own PostgreSQL cluster and redis-server, on free ports in a temporary folder.

Fault tests stop, pause and make read-only the servers they start here, never the shared
ones on 5432 / 6379. PostgreSQL refuses to run as root: the cluster belongs to ``postgres``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresCluster:
    """A throw-away PostgreSQL cluster (trust auth, db ``faults``); start/stop on demand."""

    def __init__(self) -> None:
        # Its own folder in /tmp: user postgres cannot enter pytest's (root-only) folders.
        self.root = Path(tempfile.mkdtemp(prefix="recsys-faults-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "pgdata"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True) as con:
            con.execute("CREATE DATABASE faults")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/faults"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-o",
                    options,
                    "-w",
                    "-l",
                    str(self.root / "server.log"),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            check=True,
            capture_output=True,
        )

    def admin(self, *statements: str) -> None:
        """Run ``statements`` as the superuser, in database ``faults``; a statement that
        deadlocks with the service's writes (a DROP against inserts) is tried again, as an
        operator would."""
        with psycopg.connect(self.url, autocommit=True) as con:
            for statement in statements:
                for attempt in range(5):
                    try:
                        con.execute(statement)
                        break
                    except psycopg.errors.DeadlockDetected:
                        if attempt == 4:
                            raise
                        time.sleep(0.2)

    def read_only(self, on: bool) -> None:
        """The whole cluster read-only (``ALTER SYSTEM`` + reload, sessions drop), or not."""
        value = "on" if on else "off"
        with psycopg.connect(self.admin_url, autocommit=True) as con:
            con.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
            con.execute("SELECT pg_reload_conf()")
            if on:  # sessions that started writable end (as a failover would end them)
                con.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'faults' AND pid <> pg_backend_pid()"
                )

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """A throw-away redis-server (no persistence); stop, start and pause on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.proc = None

    def pause(self, seconds: float) -> None:
        """Every client's commands wait ``seconds`` (CLIENT PAUSE), as a hung server."""
        self.client().execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def close(self) -> None:
        self.stop()
