"""One write per response: headers wait for their body, nothing else waits."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.http_protocol import CoalescingTransport

ROOT = Path(__file__).resolve().parents[2]
HEADERS = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default=None):
        return {"peername": ("127.0.0.1", 5555)}.get(name, default)


def run(steps) -> RecordingTransport:
    async def main() -> RecordingTransport:
        inner = RecordingTransport()
        await steps(CoalescingTransport(inner, asyncio.get_running_loop()), inner)
        return inner

    return asyncio.run(main())


def test_headers_and_body_of_one_step_go_out_in_one_write():
    async def steps(transport, inner):
        transport.write(HEADERS)
        transport.write(b"ok")
        assert inner.writes == [HEADERS + b"ok"]
        transport.write(HEADERS)  # the next response on the connection: held again
        transport.write(b"no")
        assert inner.writes == [HEADERS + b"ok", HEADERS + b"no"]

    run(steps)


def test_a_header_block_alone_is_written_on_the_next_loop_iteration():
    async def steps(transport, inner):
        transport.write(HEADERS)
        assert inner.writes == [] and transport.get_write_buffer_size() == len(HEADERS)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert inner.writes == [HEADERS]
        transport.write(b"ok")  # a body sent later goes on its own
        assert inner.writes == [HEADERS, b"ok"]

    run(steps)


def test_interim_responses_and_other_writes_are_not_held():
    async def steps(transport, inner):
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        transport.write(b"5\r\nhello\r\n")
        transport.writelines([b"0\r\n", b"\r\n"])
        assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 5555)  # delegated

    run(steps)


def test_close_writes_held_headers_first_and_abort_drops_them():
    async def closing(transport, inner):
        transport.write(HEADERS)
        transport.close()
        assert inner.writes == [HEADERS] and inner.closed
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert inner.writes == [HEADERS]  # the scheduled flush found nothing left

    run(closing)

    async def aborting(transport, inner):
        transport.write(HEADERS)
        transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert inner.writes == [] and inner.aborted

    run(aborting)


APP = """
import asyncio

async def app(scope, receive, send):
    path = scope["path"]
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"last"})
        return
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    elif path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    else:
        body = b"hello"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("http_app")
    (folder / "coalesce_app.py").write_text(APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import uvicorn; uvicorn.run('coalesce_app:app', host='127.0.0.1', "
        f"port={port}, http='serving.http_protocol:CoalescingHttpToolsProtocol', "
        "lifespan='off', log_level='warning')"
    )
    env_path = f"{folder}:{ROOT}"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": env_path, "PATH": ""}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the test server did not start") from None
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def test_keep_alive_requests_get_whole_responses(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            data = read_until(sock, b"hello")
            assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\nhello")
        sock.sendall(b"HEAD / HTTP/1.1\r\nhost: t\r\n\r\n")
        head = read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        sock.sendall(b"GET /empty HTTP/1.1\r\nhost: t\r\n\r\n")
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 204")


def test_streamed_response_starts_before_the_app_finishes(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        read_until(sock, b"first")
        assert time.monotonic() - started < 0.8  # the app sleeps 1 s before its last chunk
        assert read_until(sock, b"0\r\n\r\n").endswith(b"4\r\nlast\r\n0\r\n\r\n")


def test_expect_100_continue_is_answered_before_the_body_is_sent(server):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        assert read_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"ping")
        assert read_until(sock, b"ping").startswith(b"HTTP/1.1 200 OK")
