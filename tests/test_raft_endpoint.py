"""The Raft receiving endpoint (coordinator/raft_endpoint.py), every row of its status table,
over real ASGI calls: only an authenticated batch from a member, addressed to this node,
reaches the Raft task; everything else is answered with the API's error shape."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from coordinator.raft.messages import Message, MsgType
from coordinator.raft.transport import HEADER_FROM, HEADER_SIG, HEADER_TIME, RAFT_PATH, sign
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


def _batch(src: int = 2, dst: int = 1) -> bytes:
    return json.dumps([Message(MsgType.HEARTBEAT, src, dst, term=3).to_dict()]).encode()


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
