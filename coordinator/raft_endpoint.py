"""The receiving end of the Raft transport: `POST /raft/v1/messages` and the WebSocket
`/raft/v1/stream`, in plain ASGI.

Every Raft round trip lands here on each follower (appends, heartbeats, their answers on the
leader), so it sits in front of the FastAPI app: routing, dependency solving and the
request/response wrappers measured ~14% of a follower's CPU for a handler that only checks a
signature and queues messages for the Raft task. The checks are those of
coordinator/raft/transport.py; answers use the API's error shape and status codes:

| status | when |
|---|---|
| 204 | the batch was authenticated and handed to the Raft task |
| 400 `malformed_raft_messages` | the body is not a batch of messages from the sender to us |
| 401 `unauthenticated` | signature, sender or timestamp refused (logged, never the secret) |
| 404 `not_found` | this node runs standalone, without Raft |
| 405 `method_not_allowed` | anything but POST |
| 413 `body_too_large` | over MAX_BODY_BYTES (MAX_SIGNED_BODY_BYTES for a signed length) |

The stream (coordinator/raft/transport.py says why it exists): the handshake is refused
(HTTP 403) unless it is signed like a POST and its nonce is new; then each frame must carry
the MAC of the sender, the nonce and the next sequence number, and hold messages from the
sender to this node. A frame that does not is logged and the connection closed (1008); the
sender opens a new one. Frames over MAX_FRAME_BYTES close it too (1009).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.raft.transport import (
    HEADER_FROM,
    HEADER_LENGTH_SIG,
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TIME,
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW_S,
    MAX_FRAME_BYTES,
    MAX_SIGNED_BODY_BYTES,
    NONCE_BYTES,
    RAFT_PATH,
    RAFT_STREAM_PATH,
    AuthError,
    decode_batch,
    length_signed_body,
    open_frame,
    stream_handshake_body,
    verify,
)

_WANTED = {
    h.lower().encode("latin-1")
    for h in (
        HEADER_FROM,
        HEADER_TIME,
        HEADER_SIG,
        HEADER_NONCE,
        HEADER_LENGTH_SIG,
        "content-length",
    )
}
# Stream nonces and length signatures remembered (each for 2 * MAX_CLOCK_SKEW_S) against replay.
MAX_NONCES = 100_000
WS_POLICY_VIOLATION = 1008
WS_TOO_BIG = 1009


class RaftEndpoint:
    """Serves RAFT_PATH itself and passes every other request to `app`. `node` is a
    `coordinator.node.Node` (typed loosely to avoid an import cycle)."""

    def __init__(self, app: ASGIApp, node: Any, secret: str) -> None:
        self.app = app
        self.node = node
        self.secret = secret
        self.nonces: dict[str, float] = {}  # nonce -> when it may be forgotten

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == RAFT_STREAM_PATH:
            await self._stream(scope, receive, send)
            return
        if scope["type"] != "http" or scope.get("path") != RAFT_PATH:
            await self.app(scope, receive, send)
            return
        status, code, message = await self._handle(scope, receive)
        if status == 204:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, str, str]:
        raft = self.node.raft
        if raft is None:
            return 404, "not_found", "this node runs standalone, without Raft"
        if scope.get("method") != "POST":
            return 405, "method_not_allowed", "POST only"
        headers = _auth_headers(scope)
        limit = self._body_limit(raft, headers, scope)
        body = await _read_body(receive, limit)
        if body is None:
            return 413, "body_too_large", "raft batch too large"
        try:
            sender = self._signer(raft, headers, body, time.time())
        except AuthError as e:
            client = scope.get("client")
            self.node.refused_peer(client[0] if client else "?", str(e))
            return 401, "unauthenticated", "cluster authentication failed"
        try:
            msgs = decode_batch(body, sender, raft.id)
        except (ValueError, KeyError, TypeError) as e:
            return 400, "malformed_raft_messages", str(e)[:200]
        if raft.deliver(msgs):
            # Busy (e.g. installing a snapshot): what was dropped is resent by Raft.
            return 503, "busy", "raft inbox full; messages dropped"
        return 204, "", ""

    def _signer(
        self,
        raft: Any,
        headers: dict[str, str],
        signed: bytes,
        now: float,
        sig_header: str = HEADER_SIG,
    ) -> int:
        """The member whose signature over `signed` the headers carry; AuthError otherwise."""
        return verify(
            self.secret,
            set(raft.urls),
            headers.get(HEADER_FROM.lower()),
            headers.get(HEADER_TIME.lower()),
            headers.get(sig_header.lower()),
            signed,
            now,
        )

    def _body_limit(self, raft: Any, headers: dict[str, str], scope: Scope) -> int:
        """MAX_BODY_BYTES, or the announced length when a member signed it (a snapshot bigger
        than that): an unauthenticated sender cannot make this node buffer more."""
        announced = headers.get("content-length", "")
        if HEADER_LENGTH_SIG.lower() not in headers or not announced.isdigit():
            return MAX_BODY_BYTES
        length = int(announced)
        if length <= MAX_BODY_BYTES or length > MAX_SIGNED_BODY_BYTES:
            return MAX_BODY_BYTES
        now = time.time()
        try:
            self._signer(raft, headers, length_signed_body(length), now, HEADER_LENGTH_SIG)
            # Once only: a header seen on the wire (plain HTTP) and replayed must not make
            # this node buffer the announced length again before the body's check fails.
            if not self._first_use("length:" + headers[HEADER_LENGTH_SIG.lower()], now):
                raise AuthError("length signature already used")
        except AuthError as e:
            client = scope.get("client")
            self.node.refused_peer(client[0] if client else "?", f"length signature: {e}")
            return MAX_BODY_BYTES
        return length

    def _fresh_nonce(self, nonce: str, now: float) -> bool:
        return len(nonce) == 2 * NONCE_BYTES and self._first_use(nonce, now)

    def _first_use(self, key: str, now: float) -> bool:
        """True the first time `key` is seen within the signature window (remembered for as
        long as a signed request carrying it could be accepted)."""
        if key in self.nonces:
            return False
        if len(self.nonces) >= MAX_NONCES:
            self.nonces = {n: t for n, t in self.nonces.items() if t > now}
            if len(self.nonces) >= MAX_NONCES:
                return False  # a flood of handshakes: refuse rather than forget too early
        self.nonces[key] = now + 2 * MAX_CLOCK_SKEW_S
        return True

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        raft = self.node.raft
        headers = _auth_headers(scope)
        nonce = headers.get(HEADER_NONCE.lower(), "")
        client = scope.get("client")
        peer = client[0] if client else "?"
        now = time.time()
        try:
            if raft is None:
                raise AuthError("this node runs standalone, without Raft")
            sender = self._signer(raft, headers, stream_handshake_body(nonce), now)
            if not self._fresh_nonce(nonce, now):
                raise AuthError("stream nonce missing, malformed or already used")
        except AuthError as e:
            if raft is not None:
                self.node.refused_peer(peer, str(e))
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


def _auth_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}


async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The request body, or None once it grows past `limit` (reading stops there)."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)
