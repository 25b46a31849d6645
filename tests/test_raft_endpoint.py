"""The Raft receiving endpoint (coordinator/raft_endpoint.py), every row of its status table,
over real ASGI calls: only an authenticated batch from a member, addressed to this node,
reaches the Raft task; everything else is answered with the API's error shape. The stream
(WebSocket) likewise, frame by frame; and the sending transport against a real server."""

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
    HEADER_FROM,
    HEADER_LENGTH_SIG,
    HEADER_NONCE,
    HEADER_SIG,
    HEADER_TIME,
    RAFT_PATH,
    RAFT_STREAM_PATH,
    Transport,
    frame_mac,
    length_signed_body,
    sign,
    stream_handshake_body,
)
from coordinator.raft_endpoint import RaftEndpoint

SECRET = "cluster-secret-for-tests"


@dataclass
class FakeRaft:
    id: int = 1
    urls: dict[int, str] = field(default_factory=lambda: {1: "http://a", 2: "http://b"})
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
    stamp = f"{time.time() if ts is None else ts:.3f}"
    return {
        HEADER_FROM: str(sender),
        HEADER_TIME: stamp,
        HEADER_SIG: sign(secret, sender, stamp, body),
    }


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
        ("wrong secret", 401, "unauthenticated"),
        ("stale timestamp", 401, "unauthenticated"),
        ("not a member", 401, "unauthenticated"),
        ("tampered body", 401, "unauthenticated"),
        ("not json", 400, "malformed_raft_messages"),
        ("addressed elsewhere", 400, "malformed_raft_messages"),
        ("claims another sender", 400, "malformed_raft_messages"),
    ],
)
async def test_refused_batches_deliver_nothing(case: str, status: int, code: str) -> None:
    node = FakeNode()
    body = _batch()
    headers = _signed(body)
    if case == "no headers":
        headers = {}
    elif case == "wrong secret":
        headers = _signed(body, secret="another")
    elif case == "stale timestamp":
        headers = _signed(body, ts=time.time() - 3600)
    elif case == "not a member":
        body = _batch(src=9)
        headers = _signed(body, sender=9)
    elif case == "tampered body":
        body = _batch().replace(b'"term": 3', b'"term": 4')
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
    assert node.raft is not None and node.raft.delivered == []
    assert bool(node.refused) == (status == 401)
    assert all(SECRET not in reason for reason in node.refused)


async def test_other_methods_standalone_nodes_and_huge_bodies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _client(FakeNode()) as c:
        r = await c.get(RAFT_PATH)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    async with _client(FakeNode(raft=None)) as c:
        r = await c.post(RAFT_PATH, content=b"[]")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 100)
    node = FakeNode()
    body = b"[" + b" " * 200 + b"]"
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=_signed(body))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
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
    ["unsigned", "wrong secret", "not a member", "short nonce", "replayed nonce"],
)
async def test_a_bad_handshake_is_refused(case: str) -> None:
    node = FakeNode()
    nonce = secrets.token_hex(16)
    headers = _handshake(nonce)
    if case == "unsigned":
        headers = {HEADER_FROM: "2", HEADER_NONCE: nonce}
    elif case == "wrong secret":
        headers = _handshake(nonce, secret="another")
    elif case == "not a member":
        headers = _handshake(nonce, sender=9)
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


def _length_signed(body: bytes, length: int, secret: str = SECRET) -> Any:
    headers = _signed(body)
    stamp = headers[HEADER_TIME]
    headers[HEADER_LENGTH_SIG] = sign(secret, 2, stamp, length_signed_body(length))
    return headers


@pytest.mark.parametrize(
    "case, delivered",
    [("signed", True), ("unsigned", False), ("other secret", False), ("other length", False)],
)
async def test_a_body_over_the_limit_needs_a_signed_length(
    monkeypatch: pytest.MonkeyPatch, case: str, delivered: bool
) -> None:
    """A snapshot bigger than MAX_BODY_BYTES is read only when a member signed its length:
    without that, an unauthenticated sender could make a node buffer up to the larger
    bound before its signature is checked."""
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 100)
    body = _batch()[:-1] + b" " * 200 + b"]"
    headers = {
        "signed": _length_signed(body, len(body)),
        "unsigned": _signed(body),
        "other secret": _length_signed(body, len(body), secret="not-the-secret"),
        "other length": _length_signed(body, len(body) - 50),
    }[case]
    node = FakeNode()
    async with _client(node) as c:
        r = await c.post(RAFT_PATH, content=body, headers=headers)
    assert node.raft is not None
    if delivered:
        assert r.status_code == 204 and len(node.raft.delivered) == 1
    else:
        assert r.status_code == 413 and node.raft.delivered == []
    assert bool(node.refused) == (case in ("other secret", "other length"))  # logged


async def test_a_signed_length_is_good_for_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on the wire (plain HTTP) and replayed, a signed length must not make the node
    buffer the announced size again: the second use is refused before the body is read."""
    monkeypatch.setattr("coordinator.raft_endpoint.MAX_BODY_BYTES", 100)
    body = _batch()[:-1] + b" " * 200 + b"]"
    headers = _length_signed(body, len(body))
    node = FakeNode()
    async with _client(node) as c:
        first = await c.post(RAFT_PATH, content=body, headers=headers)
        again = await c.post(RAFT_PATH, content=body, headers=headers)
    assert first.status_code == 204 and again.status_code == 413
    assert node.raft is not None and len(node.raft.delivered) == 1
    assert any("already used" in why for why in node.refused)


async def test_the_transport_sends_a_big_batch_with_a_signed_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over real HTTP: a batch over the receiver's plain limit arrives; one over the signed
    limit is not sent at all (counted as dropped)."""
    node = FakeNode()
    for module in ("coordinator.raft.transport", "coordinator.raft_endpoint"):
        monkeypatch.setattr(f"{module}.MAX_BODY_BYTES", 100)
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
