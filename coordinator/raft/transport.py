"""Raft messages between nodes over HTTP, authenticated with the shared cluster secret.

The usual path is one WebSocket per peer and direction (`RAFT_STREAM_PATH`), opened by the
sender: a POST per batch cost a whole HTTP exchange on both sides, and that was about a third
of a node's CPU under `txc bench transfers`. The handshake is signed like a POST (sender id,
timestamp, a fresh nonce; a nonce is accepted once), and every frame carries an HMAC-SHA256
of its body bound to the sender, the connection's nonce and the frame's sequence number, so a
frame cannot be forged, altered, reordered or replayed into another connection.

The POST path (`RAFT_PATH`) stays: batches too big for a frame (snapshots) go that way, and
so does everything to a peer that does not offer the stream. A POST is authenticated twice:

- its headers (`post_headers`): sender id, timestamp, a fresh nonce and the exact
  Content-Length, signed with the cluster secret. The receiver checks them before it reads a
  byte of the body, so a caller without the secret makes it buffer nothing, and it knows how
  much a member is about to send before it agrees to read it (a POST may be a snapshot of up
  to MAX_SIGNED_BODY_BYTES);
- its body (HEADER_BODY_MAC): an HMAC-SHA256 of the body bound to the sender and the nonce,
  checked once the body is in. The nonce is accepted once, so a POST seen on the wire (plain
  HTTP) cannot be replayed: a replayed TIMEOUT_NOW would force an election.

Each MAC input starts with what it is (`_DOMAIN_*`, or a sender id for the stream's), so no
signature made for one purpose verifies for another.

A node that cannot prove it knows the secret, or whose id is not a member of the group now
(a removed node still knows the secret), is refused and logged (never with the secret or the
signature).

Delivery is best effort, as Raft expects: one sender task per peer drains a bounded queue,
keeps messages to a peer in order, and drops what does not fit or cannot be delivered; the
core retries by its own timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable

import aiohttp
import orjson

from coordinator.raft.messages import Message

log = logging.getLogger("txc.raft.transport")

RAFT_PATH = "/raft/v1/messages"
RAFT_STREAM_PATH = "/raft/v1/stream"
HEADER_FROM = "Txc-Raft-From"
HEADER_TIME = "Txc-Raft-Time"
HEADER_SIG = "Txc-Raft-Signature"  # a POST's headers, or a stream's handshake
HEADER_NONCE = "Txc-Raft-Nonce"
HEADER_BODY_MAC = "Txc-Raft-Body-MAC"  # a POST's body
MAX_QUEUE_PER_PEER = 4096  # messages waiting for one peer before new ones are dropped
MAX_MESSAGES_PER_POST = 256
SEND_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a bigger batch (a snapshot) goes by POST
MAC_BYTES = 32  # HMAC-SHA256 digest at the head of every frame
NONCE_BYTES = 16
NO_STREAM_RETRY_S = 60.0  # a peer without the stream (an older node) is asked again after this
MAX_CLOCK_SKEW_S = 300.0  # a signed request older (or newer) than this is refused
# A receiver reads a POST body no bigger than this as one of its MAX_CONCURRENT_BODIES; a
# bigger one (a snapshot of a large state) takes one of its fewer big slots, and
# MAX_SIGNED_BODY_BYTES is the most any POST may announce.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_SIGNED_BODY_BYTES = 1024 * 1024 * 1024
# A POST's body must arrive within BODY_TIMEOUT_S plus its length at MIN_BODY_BYTES_PER_S.
# The sender gives up then (its request timeout) and so does the receiver: a member that
# stalls mid-body must not hold one of the receiver's few body slots for longer.
BODY_TIMEOUT_S = SEND_TIMEOUT_S
MIN_BODY_BYTES_PER_S = 8 * 1024 * 1024
_DOMAIN_POST_HEADERS = b"txc-raft-post-headers\n"
_DOMAIN_POST_BODY = b"txc-raft-post-body\n"
_NONCE_RE = re.compile(f"[0-9a-f]{{{2 * NONCE_BYTES}}}")


def sign(secret: str, sender: int, timestamp: str, body: bytes) -> str:
    """The stream handshake's signature (of `stream_handshake_body`)."""
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(f"{sender}\n{timestamp}\n".encode())
    mac.update(body)
    return mac.hexdigest()


def stream_handshake_body(nonce: str) -> bytes:
    """What the handshake's signature covers besides the sender and timestamp."""
    return b"stream\n" + nonce.encode()


def post_signature(secret: str, sender: int, timestamp: str, nonce: str, length: int) -> str:
    """A POST's header signature. It covers the exact Content-Length so that the receiver,
    which checks it before reading, reads no more than a member chose to send."""
    mac = hmac.new(secret.encode(), _DOMAIN_POST_HEADERS, hashlib.sha256)
    mac.update(f"{sender}\n{timestamp}\n{nonce}\n{length}".encode())
    return mac.hexdigest()


def body_mac(secret: str, sender: int, nonce: str, body: bytes) -> str:
    """A POST body's MAC, bound to its nonce (hence to the signed headers, and to one use)."""
    mac = hmac.new(secret.encode(), _DOMAIN_POST_BODY, hashlib.sha256)
    mac.update(f"{sender}\n{nonce}\n".encode())
    mac.update(body)
    return mac.hexdigest()


def post_headers(
    secret: str, sender: int, body: bytes, now: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """Every header a POST of `body` needs to be accepted (once: the nonce is fresh unless
    given). The body goes with a plain Content-Length of len(body), never chunked."""
    ts = f"{time.time() if now is None else now:.3f}"
    nonce = secrets.token_hex(NONCE_BYTES) if nonce is None else nonce
    return {
        HEADER_FROM: str(sender),
        HEADER_TIME: ts,
        HEADER_NONCE: nonce,
        HEADER_SIG: post_signature(secret, sender, ts, nonce, len(body)),
        HEADER_BODY_MAC: body_mac(secret, sender, nonce, body),
    }


def body_deadline_s(length: int) -> float:
    """How long a POST body of `length` bytes may take to arrive (and to be sent)."""
    return BODY_TIMEOUT_S + length / MIN_BODY_BYTES_PER_S


def frame_mac(secret: str, sender: int, nonce: str, seq: int, body: bytes) -> bytes:
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    mac.update(f"{sender}\n{nonce}\n{seq}\n".encode())
    mac.update(body)
    return mac.digest()


def open_frame(secret: str, sender: int, nonce: str, seq: int, frame: bytes) -> bytes:
    """The body of a frame whose MAC checks out; AuthError otherwise."""
    if len(frame) < MAC_BYTES:
        raise AuthError("short frame")
    body = frame[MAC_BYTES:]
    if not hmac.compare_digest(frame[:MAC_BYTES], frame_mac(secret, sender, nonce, seq, body)):
        raise AuthError(f"bad frame signature from node {sender}")
    return body


class AuthError(Exception):
    """Why a peer's request was refused (logged, and returned without detail)."""


def verify(
    secret: str,
    is_member: Callable[[int], bool],
    sender: str | None,
    timestamp: str | None,
    sig: str | None,
    body: bytes,
    now: float,
) -> int:
    """The id of the member whose signature (`sign`) over `body` the headers carry: a stream
    handshake. AuthError otherwise."""
    if not timestamp:
        raise AuthError("missing authentication headers")
    return _authenticate(
        is_member, sender, timestamp, sig, now, lambda sid: sign(secret, sid, timestamp, body)
    )


def verify_post(
    secret: str,
    is_member: Callable[[int], bool],
    sender: str | None,
    timestamp: str | None,
    nonce: str | None,
    length: int,
    sig: str | None,
    now: float,
) -> int:
    """The id of the member that signed these POST headers for a body of `length` bytes
    (`post_signature`); AuthError otherwise. The nonce's freshness is the caller's to check
    (it keeps the nonces seen)."""
    if not timestamp or not nonce:
        raise AuthError("missing authentication headers")
    if not well_formed_nonce(nonce):
        raise AuthError("malformed nonce")
    return _authenticate(
        is_member,
        sender,
        timestamp,
        sig,
        now,
        lambda sid: post_signature(secret, sid, timestamp, nonce, length),
    )


def well_formed_nonce(nonce: str) -> bool:
    """What `secrets.token_hex(NONCE_BYTES)` makes: a receiver remembers nothing else."""
    return _NONCE_RE.fullmatch(nonce) is not None


def verify_body(secret: str, sender: int, nonce: str, body: bytes, mac: str | None) -> None:
    """AuthError unless `mac` is the body's (`body_mac`) for this sender and nonce."""
    if not mac or not hmac.compare_digest(body_mac(secret, sender, nonce, body), mac):
        raise AuthError(f"bad body signature from node {sender}")


def _authenticate(
    is_member: Callable[[int], bool],
    sender: str | None,
    timestamp: str,
    sig: str | None,
    now: float,
    expected: Callable[[int], str],
) -> int:
    if not sender or not sig:
        raise AuthError("missing authentication headers")
    if not (sender.isascii() and sender.isdigit()):
        raise AuthError("malformed authentication headers")
    sender_id = int(sender)
    try:
        ts = float(timestamp)
    except ValueError:
        raise AuthError("malformed authentication headers") from None
    if not abs(now - ts) <= MAX_CLOCK_SKEW_S:  # written so that NaN is refused too
        raise AuthError("timestamp outside the allowed skew")
    if not hmac.compare_digest(expected(sender_id), sig):
        raise AuthError(f"bad signature from claimed node {sender_id}")
    # Checked after the signature: this refusal means a node that knows the secret but is
    # not a member now (e.g. one removed from the group).
    if not is_member(sender_id):
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
        self.streamed = 0  # batches sent as stream frames
        self.posted = 0  # batches sent by POST
        self._warned_at = 0.0
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
        link = _Stream(self, peer)
        try:
            while True:
                batch = [await q.get()]
                while len(batch) < MAX_MESSAGES_PER_POST and not q.empty():
                    batch.append(q.get_nowait())
                url = self.peer_urls().get(peer)
                if url is None:
                    self.dropped += len(batch)
                    continue
                body = orjson.dumps([m.to_dict() for m in batch])
                if len(body) <= MAX_FRAME_BYTES and await link.send(url, body):
                    self.streamed += 1
                    continue
                if not link.failed_now:
                    await self._post(peer, url, body, len(batch))
                else:
                    self.dropped += len(batch)
        finally:
            await link.close()

    async def _post(self, peer: int, url: str, body: bytes, count: int) -> None:
        if len(body) > MAX_SIGNED_BODY_BYTES:
            log.error(
                "raft batch to peer %s is %d bytes, over the %d a peer accepts: dropped",
                peer,
                len(body),
                MAX_SIGNED_BODY_BYTES,
            )
            self.dropped += count
            return
        headers = post_headers(self.secret, self.node_id, body)
        headers["Content-Type"] = "application/json"
        timeout_s = body_deadline_s(len(body))
        assert self._session is not None
        try:
            async with self._session.post(
                url.rstrip("/") + RAFT_PATH,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                await resp.read()
                self.posted += 1
                if resp.status != 204 and time.monotonic() - self._warned_at > 10:
                    self._warned_at = time.monotonic()
                    log.warning("peer %s refused raft messages: HTTP %s", peer, resp.status)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.dropped += count


class _Stream:
    """The WebSocket to one peer: opened on demand, signed frames, a reader task that only
    answers pings and notices the close. `send` returns False when the frame did not go
    (no stream: the caller posts, unless `failed_now` says the peer is unreachable)."""

    def __init__(self, transport: Transport, peer: int) -> None:
        self.t = transport
        self.peer = peer
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.nonce = ""
        self.seq = 0
        self.url = ""
        self.reader: asyncio.Task[None] | None = None
        self.no_stream_until = 0.0  # the peer does not offer the stream: POST until then
        self.failed_now = False  # the last attempt found the peer unreachable

    async def send(self, url: str, body: bytes) -> bool:
        self.failed_now = False
        if self.ws is not None and (self.ws.closed or url != self.url):
            await self.close()
        if self.ws is None:
            if time.monotonic() < self.no_stream_until or not await self._open(url):
                return False
        ws = self.ws
        assert ws is not None
        mac = frame_mac(self.t.secret, self.t.node_id, self.nonce, self.seq, body)
        try:
            # Bounded: a peer that stopped reading (hung, partitioned) must not stall us.
            await asyncio.wait_for(ws.send_bytes(mac + body), SEND_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, ConnectionError, RuntimeError, OSError, TimeoutError):
            await self.close()
            self.failed_now = True
            return False
        self.seq += 1
        return True

    async def _open(self, url: str) -> bool:
        t = self.t
        assert t._session is not None
        nonce = secrets.token_hex(NONCE_BYTES)
        ts = f"{time.time():.3f}"
        headers = {
            HEADER_FROM: str(t.node_id),
            HEADER_TIME: ts,
            HEADER_NONCE: nonce,
            HEADER_SIG: sign(t.secret, t.node_id, ts, stream_handshake_body(nonce)),
        }
        ws_url = "ws" + url.rstrip("/").removeprefix("http") + RAFT_STREAM_PATH
        try:
            ws = await asyncio.wait_for(
                t._session.ws_connect(
                    ws_url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=SEND_TIMEOUT_S),
                    max_msg_size=0,
                    autoping=True,
                ),
                SEND_TIMEOUT_S,
            )
        except asyncio.CancelledError:
            raise
        except aiohttp.WSServerHandshakeError as e:
            # An older node (404) or one refusing us (403): POST for a while.
            self.no_stream_until = time.monotonic() + NO_STREAM_RETRY_S
            if e.status not in (404, 405):
                log.warning("peer %s refused the raft stream: HTTP %s", self.peer, e.status)
            return False
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.failed_now = True
            return False
        self.ws, self.nonce, self.seq, self.url = ws, nonce, 0, url
        self.reader = asyncio.create_task(self._read(ws), name=f"raft-stream-{self.peer}")
        return True

    @staticmethod
    async def _read(ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            async for _ in ws:  # the peer sends nothing; this answers pings and sees the close
                pass

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if ws is not None:
            # Bounded: a peer that is gone or hung must not hold up a stop or a reconnect.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), SEND_TIMEOUT_S)
