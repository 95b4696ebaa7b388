"""uvicorn's HTTP/1.1 protocol, sending each response's headers and body in one write.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two ``send()``
system calls, two TCP segments, and the client wakes twice per response (once to parse the
headers, once for the body). On the decisions route that was ~16% of the event loop's
time holding the GIL (py-spy, 1,000 decisions/s) and doubled the client's reads.

:class:`CoalescingHttpToolsProtocol` wraps each connection's transport so a header block
waits for the body that follows it in the same step of the loop and both go out in one
write. Anything else is written at once, and a held header block is written on the loop's
next iteration at the latest (streamed responses, ``100 Continue``, an app that never sends a
body), so no response waits on another.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_STATUS_LINE = b"HTTP/1.1 "
_INTERIM = b"HTTP/1.1 1"  # 1xx (100 Continue): the client waits for it before the body
_END_OF_HEADERS = b"\r\n\r\n"


class CoalescingTransport:
    """A transport that holds a response's header block until the next write.

    Everything but :meth:`write`, :meth:`writelines`, :meth:`close`, :meth:`abort`,
    :meth:`write_eof` and :meth:`get_write_buffer_size` is the wrapped transport's own.
    """

    __slots__ = ("_flush", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._flush.cancel()  # type: ignore[union-attr]
            self._transport.write(held + bytes(data))
        elif (
            type(data) is bytes
            and data.startswith(_STATUS_LINE)
            and data.endswith(_END_OF_HEADERS)
            and not data.startswith(_INTERIM)
        ):
            self._held = data
            self._flush = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Write a held header block now."""
        held = self._held
        if held is not None:
            self._held = None
            self._flush.cancel()  # type: ignore[union-attr]
            if not self._transport.is_closing():
                self._transport.write(held)

    def get_write_buffer_size(self) -> int:
        held = len(self._held) if self._held is not None else 0
        return self._transport.get_write_buffer_size() + held

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        if self._held is not None:
            self._held = None
            self._flush.cancel()  # type: ignore[union-attr]
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
