"""The Raft receiving endpoint (coordinator/raft_endpoint.py) over ASGI calls: only an
authenticated batch from a member of the current configuration, addressed to this node,
reaches the Raft task; everything else is answered with the API's error shape. The stream
(WebSocket) likewise, frame by frame; and the sending transport against a real server. What
needs control of the bytes on the wire (bodies announced and not sent, slow, concurrent,
replayed, floods) is in tests/test_raft_hostile.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from coordinator.bench.serving import serve
from coordinator.raft.messages import Message, MsgType
from coordinator.raft.transport import (
    HEADER_BODY_MAC,
    HEADER_FROM,
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TIME,
    RAFT_PATH,
    RAFT_STREAM_PATH,
    Transport,
    frame_mac,
    post_headers,
    sign,
    stream_handshake_body,
)
from coordinator.raft_endpoint import RaftEndpoint

SECRET = "cluster-secret-for-tests"


@dataclass
class FakeRaft:
    """What the endpoint reads of a `RaftLog`: its id, the addresses it knows (every node
    ever heard of), its configuration's members and the leader it follows."""

    id: int = 1
    urls: dict[int, str] = field(default_factory=lambda: {1: "http://a", 2: "http://b"})
    members: frozenset[int] = frozenset({1, 2})
    leader: int = 0
    delivered: list[Message] = field(default_factory=list)

    def deliver(self, msgs: list[Message]) -> None:
        self.delivered.extend(msgs)


@dataclass
class FakeNode:
    raft: FakeRaft | None = field(default_factory=FakeRaft)
    refused: list[str] = field(default_factory=list)

    def refused_peer(self, client: str, reason: str) -> None:
        self.refused.append(reason)


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":  # a real server's start and stop
        while True:
            msg = await receive()
            await send({"type": msg["type"] + ".complete"})
            if msg["type"] == "lifespan.shutdown":
                return
    await PlainTextResponse("inner app")(scope, receive, send)


def _client(node: FakeNode) -> httpx.AsyncClient:
    app = RaftEndpoint(_inner, node, SECRET)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n1")


def _signed(body: bytes, sender: int = 2, secret: str = SECRET, ts: float | None = None) -> Any:
    return post_headers(secret, sender, body, now=ts)


def _batch(src: int = 2, dst: int = 1, term: int = 3) -> bytes:
    return json.dumps([Message(MsgType.HEARTBEAT, src, dst, term=term).to_dict()]).encode()


async def test_an_authenticated_batch_reaches_the_raft_task() -> None:
    node = FakeNode()
    body = _batch()
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=_signed(body))
    assert r.status_code == 204 and r.content == b""
    assert node.raft is not None
    assert [(m.type, m.src, m.dst, m.term) for m in node.raft.delivered] == [
        (MsgType.HEARTBEAT, 2, 1, 3)
    ]


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("no headers", 401, "unauthenticated"),
        ("an older node's headers", 401, "unauthenticated"),
        ("wrong secret", 401, "unauthenticated"),
        ("forged header signature", 401, "unauthenticated"),
        ("stale timestamp", 401, "unauthenticated"),
        ("nan timestamp", 401, "unauthenticated"),
        ("no nonce", 401, "unauthenticated"),
        ("malformed nonce", 401, "unauthenticated"),
        ("not a member", 401, "unauthenticated"),
        ("removed member", 401, "unauthenticated"),
        ("claims to be this node", 401, "unauthenticated"),
        ("signed for another length", 401, "unauthenticated"),
        ("tampered body", 401, "unauthenticated"),
        ("no body MAC", 401, "unauthenticated"),
        ("body MAC of another nonce", 401, "unauthenticated"),
        ("not json", 400, "malformed_raft_messages"),
        ("addressed elsewhere", 400, "malformed_raft_messages"),
        ("claims another sender", 400, "malformed_raft_messages"),
    ],
)
async def test_refused_batches_deliver_nothing(case: str, status: int, code: str) -> None:
    node = FakeNode()
    assert node.raft is not None
    # Node 3 was a member; the configuration changed since (its address stays known).
    node.raft.urls[3] = "http://c"
    body = _batch()
    headers = _signed(body)
    if case == "no headers":
        headers = {}
    elif case == "an older node's headers":  # before nonces: a MAC of the body only
        stamp = f"{time.time():.3f}"
        headers = {HEADER_FROM: "2", HEADER_TIME: stamp, HEADER_SIG: sign(SECRET, 2, stamp, body)}
    elif case == "wrong secret":
        headers = _signed(body, secret="another")
    elif case == "forged header signature":
        headers[HEADER_SIG] = "0" * 64
    elif case == "stale timestamp":
        headers = _signed(body, ts=time.time() - 3600)
    elif case == "nan timestamp":
        headers = _signed(body, ts=float("nan"))
    elif case == "no nonce":
        del headers[HEADER_NONCE]
    elif case == "malformed nonce":
        headers = post_headers(SECRET, 2, body, nonce="not-hex-" + "0" * 24)
    elif case == "not a member":
        body = _batch(src=9)
        headers = _signed(body, sender=9)
    elif case == "removed member":
        body = _batch(src=3)
        headers = _signed(body, sender=3)
    elif case == "claims to be this node":
        body = _batch(src=1)
        headers = _signed(body, sender=1)
    elif case == "signed for another length":
        headers = _signed(body + b" ")
    elif case == "tampered body":
        body = _batch().replace(b'"term": 3', b'"term": 4')
        assert len(body) == len(_batch())
    elif case == "no body MAC":
        del headers[HEADER_BODY_MAC]
    elif case == "body MAC of another nonce":
        headers[HEADER_BODY_MAC] = _signed(body)[HEADER_BODY_MAC]
    elif case == "not json":
        body = b"{not json"
        headers = _signed(body)
    elif case == "addressed elsewhere":
        body = _batch(dst=3)
        headers = _signed(body)
    elif case == "claims another sender":
        body = _batch(src=1)
        headers = _signed(body)
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=headers)
    assert r.status_code == status, (case, r.text)
    assert r.json()["error"]["code"] == code
    assert node.raft.delivered == []
    assert bool(node.refused) == (status == 401)
    assert all(SECRET not in reason for reason in node.refused)


@pytest.mark.parametrize(
    ("members", "leader", "sender", "accepted"),
    [
        ({1, 2}, 0, 2, True),  # a voter or learner of the current configuration
        ({1, 3}, 0, 2, False),  # removed: its address is still known (urls), not a member now
        ({1, 3}, 2, 2, True),  # the leader, added after the snapshot this node installed
        ({1, 2}, 0, 1, False),  # this node itself: it never sends to itself
        ({1, 2}, 0, 9, False),  # never heard of
        (set(), 0, 2, True),  # a node still joining accepts the peers it was given
        (set(), 0, 9, False),
    ],
)
async def test_only_members_of_the_current_configuration_are_heard(
    members: set[int], leader: int, sender: int, accepted: bool
) -> None:
    node = FakeNode(raft=FakeRaft(members=frozenset(members), leader=leader))
    body = _batch(src=sender)
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=_signed(body, sender=sender))
    assert node.raft is not None
    assert r.status_code == (204 if accepted else 401), r.text
    assert len(node.raft.delivered) == (1 if accepted else 0)


async def test_other_methods_standalone_nodes_and_huge_bodies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _client(FakeNode()) as c:
        r = await c.get(RAFT_PATH)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    async with _client(FakeNode(raft=None)) as c:
        r = await c.post(RAFT_PATH, content=b"[]")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_SIGNED_BODY_BYTES", 100)
    node = FakeNode()
    body = b"[" + b" " * 200 + b"]"
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=_signed(body))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert r.headers["connection"] == "close"  # the body was not read
    assert node.raft is not None and node.raft.delivered == []


async def test_every_other_path_goes_to_the_app() -> None:
    async with _client(FakeNode()) as c:
        r = await c.get("/v1/transactions")
    assert r.status_code == 200 and r.text == "inner app"


# -- the stream (WebSocket) -------------------------------------------------------------------


def _handshake(nonce: str, sender: int = 2, secret: str = SECRET) -> dict[str, str]:
    stamp = f"{time.time():.3f}"
    return {
        HEADER_FROM: str(sender),
        HEADER_TIME: stamp,
        HEADER_NONCE: nonce,
        HEADER_SIG: sign(secret, sender, stamp, stream_handshake_body(nonce)),
    }


def _frame(nonce: str, seq: int, body: bytes, sender: int = 2) -> bytes:
    return frame_mac(SECRET, sender, nonce, seq, body) + body


async def _ws(url: str, headers: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(url + RAFT_STREAM_PATH, headers=headers)
    except BaseException:
        await session.close()
        raise
    _SESSIONS.append(session)
    return ws


_SESSIONS: list[aiohttp.ClientSession] = []


@pytest.fixture(autouse=True)
async def _close_sessions() -> Any:
    yield
    while _SESSIONS:
        await _SESSIONS.pop().close()


async def test_a_signed_stream_delivers_its_frames_in_order() -> None:
    node = FakeNode()
    nonce = secrets.token_hex(16)
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        ws = await _ws(url, _handshake(nonce))
        for seq in range(3):
            await ws.send_bytes(_frame(nonce, seq, _batch(term=seq + 1)))
        await _deliveries(node, 3)
        await ws.close()
    assert node.raft is not None and [m.term for m in node.raft.delivered] == [1, 2, 3]
    assert node.refused == []


@pytest.mark.parametrize(
    "case",
    [
        "unsigned",
        "wrong secret",
        "not a member",
        "removed member",
        "claims to be this node",
        "short nonce",
        "replayed nonce",
    ],
)
async def test_a_bad_handshake_is_refused(case: str) -> None:
    node = FakeNode()
    assert node.raft is not None
    node.raft.urls[3] = "http://c"  # a member once: its address stays known
    nonce = secrets.token_hex(16)
    headers = _handshake(nonce)
    if case == "unsigned":
        headers = {HEADER_FROM: "2", HEADER_NONCE: nonce}
    elif case == "wrong secret":
        headers = _handshake(nonce, secret="another")
    elif case == "not a member":
        headers = _handshake(nonce, sender=9)
    elif case == "removed member":
        headers = _handshake(nonce, sender=3)
    elif case == "claims to be this node":
        headers = _handshake(nonce, sender=1)
    elif case == "short nonce":
        headers = _handshake("abc")
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        if case == "replayed nonce":
            await (await _ws(url, headers)).close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await _ws(url, headers)
    assert e.value.status == 403
    assert len(node.refused) == 1 and all(SECRET not in r for r in node.refused)


@pytest.mark.parametrize(
    "case", ["replayed frame", "tampered frame", "addressed elsewhere", "text frame", "garbage"]
)
async def test_a_bad_frame_closes_the_stream_and_delivers_nothing_more(case: str) -> None:
    node = FakeNode()
    nonce = secrets.token_hex(16)
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        ws = await _ws(url, _handshake(nonce))
        await ws.send_bytes(_frame(nonce, 0, _batch()))  # a good one first
        if case == "replayed frame":
            await ws.send_bytes(_frame(nonce, 0, _batch()))
        elif case == "tampered frame":
            good = _frame(nonce, 1, _batch())
            bad = good.replace(b'"term": 3', b'"term": 4')
            assert bad != good
            await ws.send_bytes(bad)
        elif case == "addressed elsewhere":
            await ws.send_bytes(_frame(nonce, 1, _batch(dst=3)))
        elif case == "text frame":
            await ws.send_str("[]")
        else:
            await ws.send_bytes(_frame(nonce, 1, b"{not json"))
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008, (case, msg)
    assert node.raft is not None and len(node.raft.delivered) == 1
    assert len(node.refused) == 1


async def test_a_stream_from_a_node_removed_meanwhile_is_closed() -> None:
    """A stream opened while its sender was a member delivers nothing once the configuration
    no longer has it: the next frame closes the connection."""
    node = FakeNode()
    assert node.raft is not None
    nonce = secrets.token_hex(16)
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        ws = await _ws(url, _handshake(nonce))
        await ws.send_bytes(_frame(nonce, 0, _batch()))
        await _deliveries(node, 1)
        node.raft.members = frozenset({1, 3})  # node 2 removed
        await ws.send_bytes(_frame(nonce, 1, _batch()))
        msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008
    assert len(node.raft.delivered) == 1
    assert node.refused == ["node 2 is not a member"]


async def _refuse_streams(scope: Scope, receive: Receive, send: Send) -> None:
    """An older node: no stream (the handshake gets HTTP 403), POST only."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        return
    await RaftEndpoint(_inner, _OLD_NODE, SECRET)(scope, receive, send)


_OLD_NODE = FakeNode()


async def _deliveries(node: FakeNode, n: int) -> None:
    assert node.raft is not None
    for _ in range(500):
        if len(node.raft.delivered) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(node.raft.delivered)} of {n} messages arrived")


async def test_the_transport_streams_and_posts_what_a_frame_cannot_carry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = FakeNode()
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        t = Transport(2, SECRET, lambda: {1: url})
        await t.start()
        try:
            t.send([Message(MsgType.HEARTBEAT, 2, 1, term=k) for k in range(1, 6)])
            await _deliveries(node, 5)
            assert t.streamed >= 1 and t.posted == 0
            monkeypatch.setattr("coordinator.raft.transport.MAX_FRAME_BYTES", 10)
            t.send([Message(MsgType.HEARTBEAT, 2, 1, term=7)])
            await _deliveries(node, 6)
            assert t.posted == 1
        finally:
            await t.stop()
    assert node.raft is not None
    assert [m.term for m in node.raft.delivered] == [1, 2, 3, 4, 5, 7]  # in order


async def test_a_peer_without_the_stream_gets_posts() -> None:
    _OLD_NODE.raft = FakeRaft()
    async with serve(_refuse_streams) as url:
        t = Transport(2, SECRET, lambda: {1: url})
        await t.start()
        try:
            for k in range(1, 4):
                t.send([Message(MsgType.HEARTBEAT, 2, 1, term=k)])
                await _deliveries(_OLD_NODE, k)
            assert t.streamed == 0 and t.posted == 3
        finally:
            await t.stop()


async def test_a_body_over_max_body_bytes_is_read_in_a_big_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot bigger than MAX_BODY_BYTES is read (when signed, like every body), in one of
    the MAX_CONCURRENT_BIG_BODIES slots."""
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 100)
    body = _batch()[:-1] + b" " * 200 + b"]"
    node = FakeNode()
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=_signed(body))
    assert r.status_code == 204
    assert node.raft is not None and len(node.raft.delivered) == 1


async def test_the_transport_posts_a_big_batch_and_drops_one_over_the_signed_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over real HTTP: a batch over the receiver's MAX_BODY_BYTES arrives; one over
    MAX_SIGNED_BODY_BYTES is not sent at all (counted as dropped)."""
    node = FakeNode()
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 100)
    monkeypatch.setattr("coordinator.raft.transport.MAX_FRAME_BYTES", 10)  # POST, not stream
    async with serve(RaftEndpoint(_inner, node, SECRET)) as url:
        t = Transport(2, SECRET, lambda: {1: url})
        await t.start()
        try:
            t.send([Message(MsgType.HEARTBEAT, 2, 1, term=k) for k in range(1, 4)])  # > 100 B
            await _deliveries(node, 3)
            assert t.posted == 1
            monkeypatch.setattr("coordinator.raft.transport.MAX_SIGNED_BODY_BYTES", 120)
            t.send([Message(MsgType.HEARTBEAT, 2, 1, term=k) for k in range(4, 8)])
            deadline = time.monotonic() + 5
            while t.dropped < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert t.dropped == 4 and t.posted == 1
        finally:
            await t.stop()
    assert node.raft is not None
    assert [m.term for m in node.raft.delivered] == [1, 2, 3]
