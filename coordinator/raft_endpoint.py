"""The receiving end of the Raft transport: `POST /raft/v1/messages` and the WebSocket
`/raft/v1/stream`, in plain ASGI.

Every Raft round trip lands here on each follower (appends, heartbeats, their answers on the
leader), so it sits in front of the FastAPI app: routing, dependency solving and the
request/response wrappers measured ~14% of a follower's CPU for a handler that only checks a
signature and queues messages for the Raft task. The checks are those of
coordinator/raft/transport.py; answers use the API's error shape and status codes.

A POST is judged on its headers first: not a byte of its body is read before they prove a
member sent it (signed sender, timestamp, nonce and Content-Length; the nonce not seen
before), so whoever lacks the cluster secret holds nothing here but what the HTTP server
itself buffers (uvicorn: about 64 KiB before it stops reading the socket). Then at most
MAX_CONCURRENT_BODIES bodies are read at once (MAX_CONCURRENT_BIG_BODIES of them over
MAX_BODY_BYTES: snapshots), each within a deadline set by its length
(`transport.body_deadline_s`), and the body's MAC is checked before anything is delivered.
Every answer given without reading the whole body closes the connection (what is left of
the body is never read):

| status | when |
|---|---|
| 204 | the batch was authenticated and handed to the Raft task |
| 400 `malformed_raft_messages` | a Raft header twice, a body cut short (a disconnect), or not |
| | a batch of messages from the sender to us |
| 401 `unauthenticated` | header signature, body MAC, timestamp, nonce (missing, malformed, |
| | used before) or sender (not a member now) refused: logged, never the secret |
| 404 `not_found` | this node runs standalone, without Raft |
| 405 `method_not_allowed` | anything but POST |
| 408 `body_timeout` | an authenticated body did not arrive within its deadline |
| 411 `length_required` | no plain Content-Length (e.g. chunked): the signature covers it |
| 413 `body_too_large` | a signed length over MAX_SIGNED_BODY_BYTES |
| 503 `busy` | MAX_CONCURRENT_BODIES (or big) bodies being read, MAX_NONCES unexpired |
| | nonces remembered, or the Raft inbox full (messages dropped; Raft resends) |

Members: the voters and learners of this node's current configuration (a change counts once
its entry is in the log), plus the leader it follows (a node that installed a snapshot older
than its leader's own addition must still hear from it); a node still joining (no
configuration yet) accepts the peers it was configured with. Never itself: it does not send
to itself, so a message claiming to come from it is forged or looped.

The stream (coordinator/raft/transport.py says why it exists): the handshake is refused
(HTTP 403) unless it is signed, its sender a member and its nonce new; then each frame must
carry the MAC of the sender, the nonce and the next sequence number, come from a sender still
a member, and hold messages from the sender to this node. A frame that does not is logged and
the connection closed (1008); the sender opens a new one. Frames over MAX_FRAME_BYTES close it
too (1009).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.raft.messages import NONE
from coordinator.raft.transport import (
    HEADER_BODY_MAC,
    HEADER_FROM,
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TIME,
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW_S,
    MAX_FRAME_BYTES,
    MAX_SIGNED_BODY_BYTES,
    RAFT_PATH,
    RAFT_STREAM_PATH,
    AuthError,
    body_deadline_s,
    decode_batch,
    open_frame,
    stream_handshake_body,
    verify,
    verify_body,
    verify_post,
    well_formed_nonce,
)

if TYPE_CHECKING:  # the node builds the app: no import at run time
    from coordinator.node import Node

_WANTED = {
    h.lower().encode("latin-1")
    for h in (
        HEADER_FROM,
        HEADER_TIME,
        HEADER_SIG,
        HEADER_NONCE,
        HEADER_BODY_MAC,
        "content-length",
        "transfer-encoding",
    )
}
# Nonces (of POSTs and stream handshakes) remembered against replay, each until its
# timestamp is too old to be accepted again. Beyond this many unexpired ones, authenticated
# requests are answered 503 rather than a nonce forgotten early (which would let its replay
# through). ~200 bytes each.
MAX_NONCES = 100_000
# Bodies read at once. The group's own traffic needs one per peer sending by POST (each peer
# sends its batches one after the other); of these, bodies over MAX_BODY_BYTES (snapshots,
# sent by the leader only) one at a time. So this node buffers at most about
# (MAX_CONCURRENT_BODIES - 1) * MAX_BODY_BYTES + MAX_SIGNED_BODY_BYTES, and only for members.
MAX_CONCURRENT_BODIES = 8
MAX_CONCURRENT_BIG_BODIES = 1
WS_POLICY_VIOLATION = 1008
WS_TOO_BIG = 1009

_CLOSE = [(b"connection", b"close")]


class NonceMemoryFull(Exception):
    """MAX_NONCES unexpired nonces are remembered: a new one cannot be checked for now."""


class _Refused(Exception):
    """An answer other than 204. `read`: the whole body was read, so the connection may
    serve another request; otherwise it is closed."""

    def __init__(self, status: int, code: str, message: str, read: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.read = status, code, message, read


class RaftEndpoint:
    """Serves RAFT_PATH itself and passes every other request to `app`. `node` is a
    `coordinator.node.Node` (typed loosely to avoid an import cycle)."""

    def __init__(self, app: ASGIApp, node: Node, secret: str) -> None:
        self.app = app
        self.node = node
        self.secret = secret
        self.nonces: set[str] = set()
        self._expiries: list[tuple[float, str]] = []  # a heap of (when forgotten, nonce)
        self.reading = 0  # bodies being read now
        self.reading_big = 0  # of which over MAX_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == RAFT_STREAM_PATH:
            await self._stream(scope, receive, send)
            return
        if scope["type"] != "http" or scope.get("path") != RAFT_PATH:
            await self.app(scope, receive, send)
            return
        try:
            await self._handle(scope, receive)
        except _Refused as r:
            body = json.dumps({"error": {"code": r.code, "message": r.message}}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            if not r.read:
                headers += _CLOSE
            await send({"type": "http.response.start", "status": r.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def _handle(self, scope: Scope, receive: Receive) -> None:
        """Returns once the batch is delivered; raises _Refused otherwise."""
        raft = self.node.raft
        if raft is None:
            raise _Refused(404, "not_found", "this node runs standalone, without Raft")
        if scope.get("method") != "POST":
            raise _Refused(405, "method_not_allowed", "POST only")
        headers = _auth_headers(scope)
        if headers is None:
            raise _Refused(400, "malformed_raft_messages", "a raft or length header twice")
        announced = headers.get("content-length", "")
        if "transfer-encoding" in headers or not (announced.isascii() and announced.isdigit()):
            raise _Refused(411, "length_required", "a plain Content-Length is required")
        length = int(announced)
        now = time.time()
        nonce = headers.get(HEADER_NONCE.lower(), "")
        try:
            sender = verify_post(
                self.secret,
                lambda node: _is_member(raft, node),
                headers.get(HEADER_FROM.lower()),
                headers.get(HEADER_TIME.lower()),
                nonce,
                length,
                headers.get(HEADER_SIG.lower()),
                now,
            )
            if not self._first_use(nonce, _forget_at(headers), now):
                raise AuthError("nonce already used (a replay)")
        except AuthError as e:
            self._refused(scope, str(e))
            raise _Refused(401, "unauthenticated", "cluster authentication failed") from None
        except NonceMemoryFull:
            raise _Refused(503, "busy", "too many recent requests; retry later") from None
        if length > MAX_SIGNED_BODY_BYTES:
            raise _Refused(413, "body_too_large", "raft batch too large")
        big = length > MAX_BODY_BYTES
        if self.reading >= MAX_CONCURRENT_BODIES or (
            big and self.reading_big >= MAX_CONCURRENT_BIG_BODIES
        ):
            raise _Refused(503, "busy", "too many raft bodies being read; retry later")
        self.reading += 1
        self.reading_big += int(big)
        try:
            async with asyncio.timeout(body_deadline_s(length)):
                body = await _read_body(receive, length)
        except TimeoutError:
            self._refused(scope, f"node {sender}: body of {length} bytes not in by its deadline")
            raise _Refused(408, "body_timeout", "the body did not arrive in time") from None
        finally:
            self.reading -= 1
            self.reading_big -= int(big)
        if body is None:
            raise _Refused(400, "malformed_raft_messages", "body shorter than its signed length")
        try:
            verify_body(self.secret, sender, nonce, body, headers.get(HEADER_BODY_MAC.lower()))
        except AuthError as e:
            self._refused(scope, str(e))
            raise _Refused(401, "unauthenticated", "cluster authentication failed", True) from None
        try:
            msgs = decode_batch(body, sender, raft.id)
        except (ValueError, KeyError, TypeError) as e:
            raise _Refused(400, "malformed_raft_messages", str(e)[:200], True) from None
        if raft.deliver(msgs):
            # Busy (e.g. installing a snapshot): what was dropped is resent by Raft.
            raise _Refused(503, "busy", "raft inbox full; messages dropped", True)

    def _refused(self, scope: Scope, reason: str) -> None:
        client = scope.get("client")
        self.node.refused_peer(client[0] if client else "?", reason)

    def _first_use(self, key: str, forget_at: float, now: float) -> bool:
        """True the first time `key` is seen, False after: a key is remembered until
        `forget_at`, past which the request carrying it is refused as too old anyway.
        NonceMemoryFull when MAX_NONCES unexpired keys are remembered."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            self.nonces.discard(heapq.heappop(expiries)[1])
        if key in self.nonces:
            return False
        if len(self.nonces) >= MAX_NONCES:
            raise NonceMemoryFull
        self.nonces.add(key)
        heapq.heappush(expiries, (forget_at, key))
        return True

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        raft = self.node.raft
        headers = _auth_headers(scope) or {}
        nonce = headers.get(HEADER_NONCE.lower(), "")
        client = scope.get("client")
        peer = client[0] if client else "?"
        now = time.time()
        try:
            if raft is None:
                raise AuthError("this node runs standalone, without Raft")
            sender = verify(
                self.secret,
                lambda node: _is_member(raft, node),
                headers.get(HEADER_FROM.lower()),
                headers.get(HEADER_TIME.lower()),
                headers.get(HEADER_SIG.lower()),
                stream_handshake_body(nonce),
                now,
            )
            if not well_formed_nonce(nonce) or not self._first_use(nonce, _forget_at(headers), now):
                raise AuthError("stream nonce missing, malformed or already used")
        except (AuthError, NonceMemoryFull) as e:
            if raft is not None:
                self.node.refused_peer(peer, str(e) or "nonce memory full")
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        await send({"type": "websocket.accept"})
        seq = 0
        while True:
            msg = await receive()
            if msg["type"] != "websocket.receive":
                return  # websocket.disconnect
            frame = msg.get("bytes")
            if frame is None:
                code, why = WS_POLICY_VIOLATION, "text frame"
            elif len(frame) > MAX_FRAME_BYTES + 64:
                code, why = WS_TOO_BIG, "frame too large"
            elif not _is_member(raft, sender):  # removed while its stream was open
                code, why = WS_POLICY_VIOLATION, f"node {sender} is not a member"
            else:
                try:
                    body = open_frame(self.secret, sender, nonce, seq, frame)
                    msgs = decode_batch(body, sender, raft.id)
                except AuthError as e:
                    code, why = WS_POLICY_VIOLATION, str(e)
                except (ValueError, KeyError, TypeError) as e:
                    code, why = WS_POLICY_VIOLATION, f"malformed raft messages: {str(e)[:200]}"
                else:
                    seq += 1
                    raft.deliver(msgs)
                    continue
            self.node.refused_peer(peer, why)
            await send({"type": "websocket.close", "code": code})
            return


def _is_member(raft: Any, node: int) -> bool:
    """Whether this node accepts messages from `node` (the module docstring says which)."""
    if node == raft.id:
        return False
    members = raft.members
    if not members:
        return node in raft.urls
    return node in members or (node == raft.leader and node != NONE)


def _forget_at(headers: dict[str, str]) -> float:
    """When a verified request's nonce may be forgotten: its timestamp is refused after."""
    return float(headers[HEADER_TIME.lower()]) + MAX_CLOCK_SKEW_S


def _auth_headers(scope: Scope) -> dict[str, str] | None:
    """The headers the checks read; None if one is there twice (which one would count?)."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        if k in _WANTED:
            name = k.decode("latin-1")
            if name in out:
                return None
            out[name] = v.decode("latin-1")
    return out


async def _read_body(receive: Receive, length: int) -> bytes | None:
    """The body of exactly `length` bytes, or None if it ends short or runs over (the HTTP
    server frames it by the Content-Length, so neither should happen but a disconnect)."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > length:
            return None
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts) if size == length else None
