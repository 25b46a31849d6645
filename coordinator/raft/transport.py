"""Raft messages between nodes over HTTP, authenticated with the shared cluster secret.

Each POST carries a batch of messages as JSON and an HMAC-SHA256 of the body keyed by the
cluster secret, bound to the sender's id and a timestamp. A node that cannot prove it knows
the secret, or claims an id outside the configured peers, is refused and logged (never with
the secret or the signature).

Delivery is best effort, as Raft expects: one sender task per peer drains a bounded queue,
keeps one request in flight (so messages to a peer stay in order), and drops what does not
fit or cannot be delivered; the core retries by its own timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import Callable

import aiohttp
import orjson

from coordinator.raft.messages import Message

log = logging.getLogger("txc.raft.transport")

RAFT_PATH = "/raft/v1/messages"
HEADER_FROM = "Txc-Raft-From"
HEADER_TIME = "Txc-Raft-Time"
HEADER_SIG = "Txc-Raft-Signature"
MAX_QUEUE_PER_PEER = 4096  # messages waiting for one peer before new ones are dropped
MAX_MESSAGES_PER_POST = 256
SEND_TIMEOUT_S = 5.0
MAX_CLOCK_SKEW_S = 300.0  # a signed request older (or newer) than this is refused
MAX_BODY_BYTES = 64 * 1024 * 1024  # snapshots travel in one request


def sign(secret: str, sender: int, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(f"{sender}\n{timestamp}\n".encode())
    mac.update(body)
    return mac.hexdigest()


class AuthError(Exception):
    """Why a peer's request was refused (logged, and returned without detail)."""


def verify(
    secret: str,
    peers: set[int],
    sender: str | None,
    timestamp: str | None,
    sig: str | None,
    body: bytes,
    now: float,
) -> int:
    if not sender or not timestamp or not sig:
        raise AuthError("missing authentication headers")
    try:
        sender_id = int(sender)
        ts = float(timestamp)
    except ValueError:
        raise AuthError("malformed authentication headers") from None
    if abs(now - ts) > MAX_CLOCK_SKEW_S:
        raise AuthError("timestamp outside the allowed skew")
    expected = sign(secret, sender_id, timestamp, body)
    if not hmac.compare_digest(expected, sig):
        raise AuthError(f"bad signature from claimed node {sender_id}")
    if sender_id not in peers:
        raise AuthError(f"node {sender_id} is not a member")
    return sender_id


def decode_batch(body: bytes, sender: int, me: int) -> list[Message]:
    data = orjson.loads(body)
    if not isinstance(data, list):
        raise ValueError("expected a list of messages")
    msgs = [Message.from_dict(d) for d in data]
    for m in msgs:
        if m.src != sender or m.dst != me:
            raise ValueError(f"message from {m.src} to {m.dst} in a batch from {sender} to {me}")
    return msgs


class Transport:
    def __init__(
        self,
        node_id: int,
        secret: str,
        peer_urls: Callable[[], dict[int, str]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        assert secret, "the cluster secret is required"
        self.node_id = node_id
        self.secret = secret
        self.peer_urls = peer_urls
        self.ssl_context = ssl_context  # verifies https peers (TLS where configured)
        self.queues: dict[int, asyncio.Queue[Message]] = {}
        self.senders: dict[int, asyncio.Task[None]] = {}
        self.dropped = 0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=64, ssl=self.ssl_context or True)
        self._session = aiohttp.ClientSession(connector=connector)

    async def stop(self) -> None:
        for t in self.senders.values():
            t.cancel()
        for t in self.senders.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.senders.clear()
        if self._session is not None:
            await self._session.close()

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            q = self.queues.get(m.dst)
            if q is None:
                q = asyncio.Queue(maxsize=MAX_QUEUE_PER_PEER)
                self.queues[m.dst] = q
                self.senders[m.dst] = asyncio.create_task(
                    self._sender(m.dst, q), name=f"raft-send-{m.dst}"
                )
            try:
                q.put_nowait(m)
            except asyncio.QueueFull:
                self.dropped += 1

    async def _sender(self, peer: int, q: asyncio.Queue[Message]) -> None:
        warned_at = 0.0
        while True:
            batch = [await q.get()]
            while len(batch) < MAX_MESSAGES_PER_POST and not q.empty():
                batch.append(q.get_nowait())
            url = self.peer_urls().get(peer)
            if url is None:
                self.dropped += len(batch)
                continue
            body = orjson.dumps([m.to_dict() for m in batch])
            ts = f"{time.time():.3f}"
            headers = {
                "Content-Type": "application/json",
                HEADER_FROM: str(self.node_id),
                HEADER_TIME: ts,
                HEADER_SIG: sign(self.secret, self.node_id, ts, body),
            }
            assert self._session is not None
            try:
                async with self._session.post(
                    url.rstrip("/") + RAFT_PATH,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S),
                ) as resp:
                    await resp.read()
                    if resp.status != 204 and time.monotonic() - warned_at > 10:
                        warned_at = time.monotonic()
                        log.warning("peer %s refused raft messages: HTTP %s", peer, resp.status)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError):
                self.dropped += len(batch)
