"""A small keep-alive HTTP/1.1 client on the standard library's `http.client`, for the SDK's
synchronous calls to the coordinator (above all the enlist inside every joined business
request).

Why not httpx here: a participant enlists once per business request, synchronously, and
httpx's per-request machinery (request/response models, its transport and pool layers, an
INFO log line per request) cost a demo bank about a tenth of its busy time in `txc bench
transfers`. `http.client` writes the request in one `send` and parses the answer in C-backed
helpers; this module adds only what the SDK needs around it: one pool of idle connections
per origin (keep-alive), TLS with the same verification httpx does by default
(`httpx.create_ssl_context()`: certifi, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), and a timeout on
every socket operation.

Safety of the one immediate retry: a kept-alive connection can be closed by the server
while it sits idle (uvicorn closes idle ones after 5 s). Idle connections are checked before
reuse and dropped after IDLE_TIMEOUT_S, and when a *reused* connection still fails before an
answer arrives (the close raced our request) the request is sent once more on a fresh
connection. That is safe only because every request this pool carries is idempotent (DESIGN
§3 rule 7; the client's `begin` carries an idempotency key): use it for nothing else.
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_IDLE_PER_ORIGIN = 32  # idle keep-alive connections kept per (scheme, host, port)
MAX_CONNECTIONS_PER_ORIGIN = 100  # requests in flight per origin (httpx's default limit too)
IDLE_TIMEOUT_S = 4.0  # below uvicorn's default keep-alive timeout (5 s): we close first
MAX_STALE_RETRIES = 1  # fresh-connection resends after a reused connection broke
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a coordinator answer is a few KiB; refuse monsters
USER_AGENT = "txc-participant-sdk"


class HttpTransportError(Exception):
    """No usable answer: connecting, sending or reading failed, or timed out. Whether the
    server acted on the request is unknown."""


class HttpTimeout(HttpTransportError):
    """A socket operation took longer than the pool's timeout."""


@dataclass(frozen=True)
class HttpAnswer:
    """A complete answer. Its attribute names follow httpx.Response's (`status_code`,
    `headers`, `json()`, `text`), so code that interprets answers serves both clients."""

    status_code: int
    headers: http.client.HTTPMessage  # case-insensitive `get`, as httpx.Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


@dataclass
class _Idle:
    conn: http.client.HTTPConnection
    since: float  # time.monotonic() when it went idle


_Origin = tuple[str, str, int]  # scheme, host, port


class HttpPool:
    """Thread-safe: each connection serves one request at a time; idle ones are shared."""

    def __init__(self, timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._idle: dict[_Origin, list[_Idle]] = {}
        self._slots: dict[_Origin, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.connections_opened = 0  # for tests and diagnostics: keep-alive reuse is visible

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an absolute http(s) URL, got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin: _Origin = (parts.scheme, parts.hostname, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        all_headers = {"User-Agent": USER_AGENT}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if headers:
            all_headers.update(headers)
        slots = self._slots_of(origin)
        if not slots.acquire(timeout=self.timeout):
            raise HttpTimeout(f"{method} {url}: no free connection within {self.timeout} s")
        try:
            return self._send(origin, method, url, target, body, all_headers)
        finally:
            slots.release()

    def _send(
        self,
        origin: _Origin,
        method: str,
        url: str,
        target: str,
        body: bytes | None,
        all_headers: dict[str, str],
    ) -> HttpAnswer:
        stale_retries = 0
        while True:
            conn, reused = self._checkout(origin)
            try:
                answer = self._exchange(origin, conn, method, target, body, all_headers)
            except TimeoutError as e:
                conn.close()
                raise HttpTimeout(f"{method} {url}: timed out after {self.timeout} s") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and stale_retries < MAX_STALE_RETRIES:
                    stale_retries += 1  # the server closed it while idle: resend on a new one
                    continue
                raise HttpTransportError(f"{method} {url}: {type(e).__name__}: {e}") from e
            except BaseException:
                conn.close()
                raise
            return answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                entry.conn.close()

    # -- connections ------------------------------------------------------------------------

    def _slots_of(self, origin: _Origin) -> threading.BoundedSemaphore:
        with self._lock:
            slots = self._slots.get(origin)
            if slots is None:
                slots = self._slots[origin] = threading.BoundedSemaphore(MAX_CONNECTIONS_PER_ORIGIN)
            return slots

    def _checkout(self, origin: _Origin) -> tuple[http.client.HTTPConnection, bool]:
        """A live idle connection to `origin` (reused=True), or a new unconnected one."""
        now = time.monotonic()
        while True:
            with self._lock:
                if self._closed:
                    raise HttpTransportError("the HTTP pool is closed")
                entries = self._idle.get(origin)
                entry = entries.pop() if entries else None  # most recently used first
                if entry is None:
                    self.connections_opened += 1
                    break
            if now - entry.since < IDLE_TIMEOUT_S and not _looks_closed(entry.conn):
                return entry.conn, True
            entry.conn.close()
        scheme, host, port = origin
        if scheme == "https":
            context = self._ssl_context or _default_ssl_context()
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout, context=context
            ), False
        return http.client.HTTPConnection(host, port, timeout=self.timeout), False

    def _checkin(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                entries = self._idle.setdefault(origin, [])
                if len(entries) < MAX_IDLE_PER_ORIGIN:
                    entries.append(_Idle(conn, time.monotonic()))
                    return
        conn.close()

    def _exchange(
        self,
        origin: _Origin,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> HttpAnswer:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        content = resp.read(MAX_RESPONSE_BYTES + 1)
        if len(content) > MAX_RESPONSE_BYTES:
            raise http.client.HTTPException(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
        answer = HttpAnswer(resp.status, resp.headers, content)
        if resp.will_close or not resp.isclosed():
            conn.close()  # the server ends the connection, or the answer was not fully read
        else:
            self._checkin(origin, conn)
        return answer


def _looks_closed(conn: http.client.HTTPConnection) -> bool:
    """An idle HTTP/1.1 connection has nothing to read; a readable one was closed by the
    server (EOF) or carries garbage. Either way it must not be reused."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


_ssl_lock = threading.Lock()
_ssl_default: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """httpx's default verification (built once: loading the CA bundle is slow)."""
    global _ssl_default
    with _ssl_lock:
        if _ssl_default is None:
            _ssl_default = httpx.create_ssl_context()
        return _ssl_default
