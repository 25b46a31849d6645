"""The Raft POST endpoint against a hostile network, over real HTTP: a uvicorn server on a
loopback port, raw sockets on the other side (so a test controls exactly which bytes go, and
when). Whoever cannot prove membership in the headers is answered before sending the body
and holds nothing; a member's body is bounded in size, number and time; a POST is accepted
once; nothing refused reaches the Raft task.

The limits are patched small where a test would otherwise take minutes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from coordinator.bench.serving import serve
from coordinator.raft.messages import Message, MsgType
from coordinator.raft.transport import (
    HEADER_BODY_MAC,
    HEADER_FROM,
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TIME,
    MAX_SIGNED_BODY_BYTES,
    RAFT_PATH,
    body_mac,
    post_headers,
    post_signature,
)
from coordinator.raft_endpoint import RaftEndpoint
from tests.test_raft_endpoint import SECRET, FakeNode, FakeRaft, _inner

PROMPT_S = 5.0  # "at once": generous for a loaded machine; the old endpoint never answered


@dataclass
class Served:
    url: str
    port: int
    node: FakeNode
    endpoint: RaftEndpoint

    @property
    def raft(self) -> FakeRaft:
        assert self.node.raft is not None
        return self.node.raft


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    # Node 3 was a member; the configuration changed since (its address stays known).
    raft = FakeRaft(urls={1: "http://a", 2: "http://b", 3: "http://c"})
    node = FakeNode(raft=raft)
    endpoint = RaftEndpoint(_inner, node, SECRET)
    async with serve(endpoint) as url:
        yield Served(url, int(url.rsplit(":", 1)[1]), node, endpoint)


class Raw:
    """One HTTP/1.1 connection, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, s: Served) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within_s: float = PROMPT_S) -> tuple[int, dict[str, str], Any]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), within_s)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(n), within_s) if n else b""
        return status, headers, json.loads(body) if body else None

    async def closed_by_server(self, within_s: float = PROMPT_S) -> bool:
        return await asyncio.wait_for(self.reader.read(1), within_s) == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def head(
    headers: dict[str, str],
    length: int | None,
    *,
    method: str = "POST",
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [f"{method} {RAFT_PATH} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def batch(src: int = 2, dst: int = 1, term: int = 3, pad: int = 0) -> bytes:
    body = json.dumps([Message(MsgType.HEARTBEAT, src, dst, term=term).to_dict()]).encode()
    return body[:-1] + b" " * pad + b"]"


def signed_for_length(
    length: int,
    sender: int = 2,
    secret: str = SECRET,
    ts: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers a member would send for a body of `length` bytes that the test will never
    finish sending (the body MAC is of nothing: it is never reached)."""
    stamp = f"{time.time() if ts is None else ts:.3f}"
    nonce = nonce or secrets.token_hex(16)
    return {
        HEADER_FROM: str(sender),
        HEADER_TIME: stamp,
        HEADER_NONCE: nonce,
        HEADER_SIG: post_signature(secret, sender, stamp, nonce, length),
        HEADER_BODY_MAC: body_mac(secret, sender, nonce, b""),
    }


async def post(s: Served, body: bytes, headers: dict[str, str]) -> int:
    c = await Raw.open(s)
    try:
        await c.send(head(headers, len(body)) + body)
        status, _, _ = await c.response()
        return status
    finally:
        await c.close()


async def wait_for(check: Any, what: str, within_s: float = PROMPT_S) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- before the body: the headers decide -------------------------------------------------------

BIG = 512 * 1024 * 1024  # announced, never sent: the answer must come long before


@pytest.mark.parametrize(
    "case",
    [
        "no headers",
        "an older node's headers",
        "forged header signature",
        "wrong secret",
        "stale timestamp",
        "not a member",
        "removed member",
        "claims to be this node",
        "malformed nonce",
        "signed for another length",
    ],
)
async def test_an_unproven_post_is_refused_before_its_body(served: Served, case: str) -> None:
    """A large Content-Length, a few bytes of body, then nothing: answered 401 at once and
    the connection closed, nothing read into the endpoint, nothing delivered."""
    headers = signed_for_length(BIG)
    if case == "no headers":
        headers = {}
    elif case == "an older node's headers":
        headers = {k: v for k, v in headers.items() if k in (HEADER_FROM, HEADER_TIME, HEADER_SIG)}
    elif case == "forged header signature":
        headers[HEADER_SIG] = secrets.token_hex(32)
    elif case == "wrong secret":
        headers = signed_for_length(BIG, secret="not-the-cluster-secret")
    elif case == "stale timestamp":
        headers = signed_for_length(BIG, ts=time.time() - 3600)
    elif case == "not a member":
        headers = signed_for_length(BIG, sender=9)
    elif case == "removed member":
        headers = signed_for_length(BIG, sender=3)
    elif case == "claims to be this node":
        headers = signed_for_length(BIG, sender=1)
    elif case == "malformed nonce":
        headers = signed_for_length(BIG, nonce="x" * 32)
    elif case == "signed for another length":
        headers = signed_for_length(BIG - 1)
    c = await Raw.open(served)
    try:
        await c.send(head(headers, BIG) + b'[{"type":')
        started = time.monotonic()
        status, resp_headers, body = await c.response()
        assert status == 401 and body["error"]["code"] == "unauthenticated", (case, body)
        assert resp_headers.get("connection") == "close"
        assert await c.closed_by_server()  # the connection is not kept either
        assert time.monotonic() - started < PROMPT_S
    finally:
        await c.close()
    assert served.raft.delivered == []
    assert served.endpoint.reading == 0
    assert len(served.endpoint.nonces) == 0  # nothing unproven is remembered
    assert len(served.node.refused) == 1 and SECRET not in served.node.refused[0]


async def test_a_post_without_a_plain_length_is_refused(served: Served) -> None:
    """The signature covers the Content-Length: a chunked body (no length) is answered 411,
    even when its other headers are signed."""
    body = batch()
    # Without a length a POST has no body (bytes after it would be the next request); chunked,
    # the first chunk is on its way.
    for extra, sent in (((), b""), (("Transfer-Encoding: chunked",), b'5\r\n[{"ty')):
        c = await Raw.open(served)
        try:
            await c.send(head(post_headers(SECRET, 2, body), None, extra=extra) + sent)
            status, resp_headers, err = await c.response()
            assert status == 411 and err["error"]["code"] == "length_required"
            assert resp_headers.get("connection") == "close"
        finally:
            await c.close()
    assert served.raft.delivered == []


async def test_a_signed_length_over_the_limit_is_refused_unread(served: Served) -> None:
    length = MAX_SIGNED_BODY_BYTES + 1
    c = await Raw.open(served)
    try:
        await c.send(head(signed_for_length(length), length) + b"[")
        status, resp_headers, err = await c.response()
        assert status == 413 and err["error"]["code"] == "body_too_large"
        assert resp_headers.get("connection") == "close"
    finally:
        await c.close()
    assert served.raft.delivered == [] and served.endpoint.reading == 0


# -- replays ------------------------------------------------------------------------------------


async def test_a_replayed_post_is_refused(served: Served) -> None:
    """Seen on the wire (plain HTTP) and sent again, headers and body as they were: 401, and
    delivered once. Another body under the same headers neither."""
    body = batch()
    headers = post_headers(SECRET, 2, body)
    assert await post(served, body, headers) == 204
    assert await post(served, body, headers) == 401
    other = batch(term=9)
    assert len(other) == len(body)
    assert await post(served, other, headers) == 401
    assert [m.term for m in served.raft.delivered] == [3]
    assert any("already used" in why for why in served.node.refused)


async def test_nonce_memory_stays_bounded_under_a_flood(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's flood of distinct signed POSTs fills the nonce memory up to MAX_NONCES,
    then is answered 503 (nothing forgotten early, so no replay slips through); each nonce is
    forgotten once its timestamp is too old to be accepted, and room comes back. A flood of
    forged POSTs remembers nothing."""
    cap, skew = 20, 3.0
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_NONCES", cap)
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_CLOCK_SKEW_S", skew)
    monkeypatch.setattr("coordinator.raft.transport.MAX_CLOCK_SKEW_S", skew)
    ep = served.endpoint
    body = batch()
    for _ in range(50):
        forged = post_headers("not-the-cluster-secret", 2, body)
        assert await post(served, body, forged) == 401
    assert len(ep.nonces) == 0
    # Stamped 2 s ago: accepted for 1 s more, remembered as long.
    early = [post_headers(SECRET, 2, body, now=time.time() - (skew - 1.0)) for _ in range(cap)]
    for h in early:
        assert await post(served, body, h) == 204
        assert len(ep.nonces) <= cap
    statuses = [await post(served, body, post_headers(SECRET, 2, body)) for _ in range(10)]
    assert statuses == [503] * 10
    assert len(ep.nonces) == cap and len(ep._expiries) == cap
    assert await post(served, body, early[0]) == 401  # still remembered: a replay
    await asyncio.sleep(1.2)
    # Forgotten now, and refused all the same: their timestamps are too old.
    assert await post(served, body, early[0]) == 401
    for _ in range(cap):
        assert await post(served, body, post_headers(SECRET, 2, body)) == 204
        assert len(ep.nonces) <= cap
    assert len(served.raft.delivered) == 2 * cap


# -- the body: its MAC, its size, its pace, how many at once ----------------------------------


async def test_a_body_that_does_not_match_its_signature_delivers_nothing(served: Served) -> None:
    body = batch()
    # Tampered, same length: the header signature holds, the body MAC does not.
    headers = post_headers(SECRET, 2, body)
    tampered = batch(term=7)
    assert len(tampered) == len(body)
    assert await post(served, tampered, headers) == 401
    # The MAC of this very body, but made for another request's nonce.
    headers = post_headers(SECRET, 2, body)
    headers[HEADER_BODY_MAC] = post_headers(SECRET, 2, body)[HEADER_BODY_MAC]
    assert await post(served, body, headers) == 401
    # Announced (and signed) longer than what comes: the sender gives up half way.
    c = await Raw.open(served)
    try:
        await c.send(head(post_headers(SECRET, 2, body + b"  "), len(body) + 2) + body)
        await wait_for(lambda: served.endpoint.reading == 1, "the body being read")
        c.writer.write_eof()
        await wait_for(lambda: served.endpoint.reading == 0, "the read given up")
    finally:
        await c.close()
    assert served.raft.delivered == []


async def test_bodies_beyond_the_concurrency_bound_are_answered_busy_at_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_CONCURRENT_BODIES members' bodies are being read (slowly): the next one gets 503
    without a byte read, the slow ones still complete. Of these, MAX_CONCURRENT_BIG_BODIES
    over MAX_BODY_BYTES: a second big one is busy while a small one still goes through."""
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_CONCURRENT_BODIES", 3)
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_CONCURRENT_BIG_BODIES", 1)
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 1000)
    ep = served.endpoint
    big = batch(pad=2000, term=1)
    small = [batch(term=2), batch(term=3)]
    slow: list[tuple[Raw, bytes]] = []
    try:
        for body in (big, *small):
            c = await Raw.open(served)
            slow.append((c, body))
            await c.send(head(post_headers(SECRET, 2, body), len(body)) + body[:10])
        await wait_for(lambda: ep.reading == 3, "three bodies being read")
        assert ep.reading_big == 1
        for body in (batch(term=4), batch(pad=2000, term=5)):
            c = await Raw.open(served)
            try:
                await c.send(head(post_headers(SECRET, 2, body), len(body)) + body[:10])
                status, resp_headers, err = await c.response()
                assert status == 503 and err["error"]["code"] == "busy"
                assert resp_headers.get("connection") == "close"
            finally:
                await c.close()
        # The slow ones finish; then the big slot is free for another big body.
        for c, body in slow:
            await c.send(body[10:])
            assert (await c.response())[0] == 204
        big2 = batch(pad=2000, term=6)
        assert await post(served, big2, post_headers(SECRET, 2, big2)) == 204
        # One big body being read: a second waits its turn (503), a small one does not.
        c = await Raw.open(served)
        slow.append((c, big))
        await c.send(head(post_headers(SECRET, 2, big), len(big)) + big[:10])
        await wait_for(lambda: ep.reading_big == 1, "a big body being read")
        big3 = batch(pad=2000, term=7)
        assert await post(served, big3, post_headers(SECRET, 2, big3)) == 503
        small3 = batch(term=8)
        assert await post(served, small3, post_headers(SECRET, 2, small3)) == 204
    finally:
        for c, _ in slow:
            await c.close()
    await wait_for(lambda: ep.reading == 0, "every read over")
    assert [m.term for m in served.raft.delivered] == [1, 2, 3, 6, 8]


async def test_a_slow_body_is_cut_off_at_its_deadline(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slowloris within an authenticated request: a byte every 0.1 s of a 5,000-byte body.
    With a deadline of 0.5 s + length at 10 kB/s (1 s), the answer is 408 within the bound
    (the whole body would have taken ~8 minutes), nothing is delivered and the slot is free."""
    monkeypatch.setattr("coordinator.raft.transport.BODY_TIMEOUT_S", 0.5)
    monkeypatch.setattr("coordinator.raft.transport.MIN_BODY_BYTES_PER_S", 10_000)
    body = batch(pad=5000)
    deadline_s = 0.5 + len(body) / 10_000
    c = await Raw.open(served)
    try:
        started = time.monotonic()  # before the server can start its clock
        await c.send(head(post_headers(SECRET, 2, body), len(body)) + body[:5])
        answer = asyncio.ensure_future(c.response(within_s=10))
        for i in range(5, len(body)):
            if answer.done():
                break
            c.writer.write(body[i : i + 1])
            await asyncio.sleep(0.1)
        status, resp_headers, err = await answer
        elapsed = time.monotonic() - started
    finally:
        await c.close()
    assert status == 408 and err["error"]["code"] == "body_timeout"
    assert resp_headers.get("connection") == "close"
    assert deadline_s <= elapsed < deadline_s + PROMPT_S, elapsed
    assert served.raft.delivered == [] and served.endpoint.reading == 0
    assert any("deadline" in why for why in served.node.refused)
    # The slot is free again.
    assert await post(served, batch(), post_headers(SECRET, 2, batch())) == 204
