"""The receiving end of the Raft transport: `POST /raft/v1/messages`, in plain ASGI.

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
| 413 `body_too_large` | the batch is over MAX_BODY_BYTES |
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.raft.transport import (
    HEADER_FROM,
    HEADER_SIG,
    HEADER_TIME,
    MAX_BODY_BYTES,
    RAFT_PATH,
    AuthError,
    decode_batch,
    verify,
)

_WANTED = {h.lower().encode("latin-1") for h in (HEADER_FROM, HEADER_TIME, HEADER_SIG)}


class RaftEndpoint:
    """Serves RAFT_PATH itself and passes every other request to `app`. `node` is a
    `coordinator.node.Node` (typed loosely to avoid an import cycle)."""

    def __init__(self, app: ASGIApp, node: Any, secret: str) -> None:
        self.app = app
        self.node = node
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        body = await _read_body(receive)
        if body is None:
            return 413, "body_too_large", "raft batch too large"
        headers = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED
        }
        try:
            sender = verify(
                self.secret,
                set(raft.urls),
                headers.get(HEADER_FROM.lower()),
                headers.get(HEADER_TIME.lower()),
                headers.get(HEADER_SIG.lower()),
                body,
                time.time(),
            )
        except AuthError as e:
            client = scope.get("client")
            self.node.refused_peer(client[0] if client else "?", str(e))
            return 401, "unauthenticated", "cluster authentication failed"
        try:
            msgs = decode_batch(body, sender, raft.id)
        except (ValueError, KeyError, TypeError) as e:
            return 400, "malformed_raft_messages", str(e)[:200]
        raft.deliver(msgs)
        return 204, "", ""


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None once it grows past MAX_BODY_BYTES (reading stops there)."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(parts)
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)
