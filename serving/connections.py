"""Connection hygiene of a worker: a deadline and a size limit on request heads, and a cap
on open connections, enforced where the connection is, before any request reaches the app.

uvicorn has none of these (its keep-alive timeout starts only after a first response, and
its httptools parser takes headers of any size), and ASGI middleware runs only once a head
is complete, too late to help. :class:`GuardedHttpProtocol` is uvicorn's httptools protocol
(``uvicorn.run(http=...)``, a documented setting) with three checks around the asyncio
protocol callbacks it already implements:

- **header timeout**: a connection that has not sent a complete request head within
  ``header_timeout_seconds`` of being opened (or of its last response) is closed;
- **header size**: a head longer than ``max_header_bytes`` gets 431 and is closed, before
  the parser sees it (at most that much of a head is ever buffered);
- **connection cap**: past ``max_connections`` open connections in the worker, a new one
  closes the oldest connection that never sent a complete head (an idle or stalled client),
  else the oldest idle keep-alive one; if every one is busy with a request, the new one gets
  503 with ``Retry-After``.

The key is checked from the head alone (``serving.security``), before the body is read.
Idle keep-alive connections close after ``keep_alive_seconds`` (uvicorn's own setting).
The worker's app configures the limits at start (:func:`configure_connections`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recsys.settings import ServingSettings
from serving.errors import error_body, error_item

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_seconds: float = 10.0
    max_header_bytes: int = 16_384
    max_connections: int = 2_048

    @classmethod
    def of(cls, serving: ServingSettings) -> ConnectionLimits:
        return cls(
            serving.header_timeout_seconds, serving.max_header_bytes, serving.max_connections
        )


_limits = ConnectionLimits()
#: The worker's open guarded connections, oldest first (a dict keeps insertion order).
_open: dict[GuardedHttpProtocol, None] = {}


def configure_connections(serving: ServingSettings) -> None:
    """Set this worker's connection limits (called by the app when the worker starts)."""
    global _limits
    _limits = ConnectionLimits.of(serving)


def open_connections() -> int:
    """Open guarded connections of this worker."""
    return len(_open)


def _raw_response(status: int, reason: str, message: str, retry_after: int | None) -> bytes:
    body = json.dumps(error_body(message, [error_item("", "", None, message)])).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size limit and a cap on
    open connections (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard_waiting = True  # for a (next) request head
        self.guard_served = False  # has sent a complete request head
        self.guard_head_bytes = 0
        self.guard_tail = b""  # last bytes of the head so far (a blank line may straddle)
        self.guard_deadline: asyncio.TimerHandle | None = None
        _open[self] = None
        if len(_open) > _limits.max_connections and not self._make_room():
            self._refuse(503, "Service Unavailable", "too many open connections; retry", 1)
            return
        self._arm()

    def _make_room(self) -> bool:
        """Close the oldest connection still waiting for its first request head (an idle
        or stalled client), else the oldest idle keep-alive one; False if all are busy."""
        victim: GuardedHttpProtocol | None = None
        for other in _open:  # oldest first: under a flood the first one is usually it
            if other is self or not other.guard_waiting:
                continue
            if not other.guard_served:
                victim = other
                break
            victim = victim or other
        if victim is None:
            return False
        victim.transport.close()
        _open.pop(victim, None)  # closing: no longer counts (connection_lost comes later)
        return True

    def _arm(self) -> None:
        self._disarm()
        self.guard_waiting, self.guard_head_bytes, self.guard_tail = True, 0, b""
        self.guard_deadline = asyncio.get_running_loop().call_later(
            _limits.header_timeout_seconds, self._head_too_slow
        )

    def _disarm(self) -> None:
        if self.guard_deadline is not None:
            self.guard_deadline.cancel()
            self.guard_deadline = None

    def _head_too_slow(self) -> None:
        self.guard_deadline = None
        if self.guard_waiting and not self.transport.is_closing():
            self.transport.close()  # nothing to answer: the client has not asked yet

    def _refuse(self, status: int, reason: str, message: str, retry_after: int | None) -> None:
        self._disarm()
        self.guard_waiting = False
        if not self.transport.is_closing():
            self.transport.write(_raw_response(status, reason, message, retry_after))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.guard_waiting:
            # The head ends at the first blank line; what follows in the chunk is body.
            seen = self.guard_tail + data
            end = seen.find(b"\r\n\r\n")
            head = len(data) if end < 0 else end + 4 - len(self.guard_tail)
            self.guard_head_bytes += head
            self.guard_tail = seen[-3:]
            if self.guard_head_bytes > _limits.max_header_bytes:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    f"the request head must be at most {_limits.max_header_bytes} bytes",
                    None,
                )
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        self.guard_waiting, self.guard_served = False, True
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard_waiting = False
        _open.pop(self, None)
        super().connection_lost(exc)
