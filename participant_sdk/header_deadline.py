"""A deadline on a request's headers for uvicorn, the server the coordinator nodes and the
SDK's services run on.

uvicorn bounds a body (our own read timeouts do) and an idle keep-alive connection, but
not the time from a connection's first byte to its request's last header: a client that
opens a connection and sends nothing, or sends a header byte every few seconds, holds a
connection slot for ever. A few thousand such sockets (slowloris) fill `limit_concurrency`,
and every honest caller then gets 503. With this protocol a request's headers must be
complete within `HEADER_TIMEOUT_S` of the connection (or, on a kept-alive connection, of
the request's first byte); otherwise the answer is 408 and the connection is closed.

Use it where uvicorn is started: `uvicorn.run(app, **server_options())`. Where the
`httptools` parser is not installed, uvicorn's own choice stands (and the bound does not).
"""

from __future__ import annotations

import asyncio
from typing import Any

HEADER_TIMEOUT_S = 10.0  # from the connection (or the request's first byte) to its last header
_BODY = b'{"error": {"code": "request_timeout", "message": "request headers arrived too slowly"}}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


def header_deadline_protocol(timeout_s: float = HEADER_TIMEOUT_S) -> type[Any] | None:
    """uvicorn's httptools protocol with the deadline; None without httptools."""
    assert timeout_s > 0
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(timeout_s, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(_TIMED_OUT)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def server_options(timeout_s: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config`: the header deadline."""
    protocol = header_deadline_protocol(timeout_s)
    return {"http": protocol} if protocol is not None else {}
