"""coordinator/hot_routes.py over real ASGI calls: the ordinary begin/enlist/commit is
answered by the hot path; every other request reaches the app with its body intact, so the
app's answers (and their error shapes) are the only ones; engine failures are answered with
the app's words and never replayed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from coordinator.api import BeginRequest, EnlistRequest, error_response
from coordinator.auth import Authenticator, Principal, Role, TokenTable
from coordinator.hot_routes import HotRoute, HotRoutes
from coordinator.log import NotLeader
from coordinator.participants import Registry

CLIENT, PARTICIPANT, READER = "c" * 32, "p" * 32, "r" * 32
TXID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass
class Recorder:
    """The inner app: records what reached it, body included."""

    seen: list[tuple[str, bytes]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen.append((scope["path"], body))
        await JSONResponse({"from": "app"}, status_code=299)(scope, receive, send)


@dataclass
class Calls:
    made: list[tuple[str, str | None, Any]] = field(default_factory=list)
    fail: Exception | None = None

    def route(self, name: str, roles: set[Role], model: Any) -> HotRoute:
        async def run(txid: str | None, body: Any, who: Principal) -> Response:
            self.made.append((name, txid, body))
            if self.fail is not None:
                raise self.fail
            return JSONResponse({"from": "hot", "call": name}, status_code=201)

        return HotRoute(roles, model, run)


def _answers(e: Exception) -> Response | None:
    if isinstance(e, NotLeader):
        return error_response(503, "not_leader", str(e), {"Txc-Leader": "http://x"})
    return None


def _client(inner: Recorder, calls: Calls) -> httpx.AsyncClient:
    tokens = TokenTable({CLIENT: Role.CLIENT, PARTICIPANT: Role.PARTICIPANT, READER: Role.READ})
    app = HotRoutes(
        inner,
        auth=Authenticator(tokens, Registry()),
        txid_re=TXID,
        begin=calls.route("begin", {Role.CLIENT}, BeginRequest),
        enlist=calls.route("enlist", {Role.PARTICIPANT}, EnlistRequest),
        commit=calls.route("commit", {Role.CLIENT}, None),
        answers=_answers,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_ordinary_calls_take_the_hot_path() -> None:
    inner, calls = Recorder(), Calls()
    async with _client(inner, calls) as c:
        r1 = await c.post("/v1/transactions", json={"labels": {"a": "b"}}, headers=_auth(CLIENT))
        r2 = await c.post(
            "/v1/transactions/t1/participants",
            json={"name": "bank", "url": "http://127.0.0.1:9", "vote": "yes"},
            headers=_auth(PARTICIPANT),
        )
        r3 = await c.post("/v1/transactions/t1/commit", headers=_auth(CLIENT))
    assert [r.json()["from"] for r in (r1, r2, r3)] == ["hot", "hot", "hot"]
    assert inner.seen == []
    (b_name, _, begin), (e_name, e_txid, enlist), (c_name, c_txid, _) = calls.made
    assert (b_name, e_name, e_txid, c_name, c_txid) == ("begin", "enlist", "t1", "commit", "t1")
    assert begin.labels == {"a": "b"} and enlist.vote == "yes"


@pytest.mark.parametrize(
    ("case", "path", "kwargs"),
    [
        ("no token", "/v1/transactions", {"json": {}}),
        ("unknown token", "/v1/transactions", {"json": {}, "headers": _auth("x" * 32)}),
        ("reader may not begin", "/v1/transactions", {"json": {}, "headers": _auth(READER)}),
        (
            "client may not enlist",
            "/v1/transactions/t1/participants",
            {"json": {"name": "b", "url": "http://h"}, "headers": _auth(CLIENT)},
        ),
        ("bad txid", "/v1/transactions/bad txid!/commit", {"headers": _auth(CLIENT)}),
        ("malformed json", "/v1/transactions", {"content": b"{", "headers": _auth(CLIENT)}),
        (
            "unknown field",
            "/v1/transactions",
            {"json": {"timeout": 5}, "headers": _auth(CLIENT)},
        ),
        (
            "not json",
            "/v1/transactions",
            {"content": b"{}", "headers": {**_auth(CLIENT), "content-type": "text/plain"}},
        ),
        (
            "oversized",
            "/v1/transactions",
            {"json": {"labels": {"k": "v" * 70_000}}, "headers": _auth(CLIENT)},
        ),
    ],
)
async def test_everything_else_reaches_the_app_with_its_body(
    case: str, path: str, kwargs: dict[str, Any]
) -> None:
    inner, calls = Recorder(), Calls()
    async with _client(inner, calls) as c:
        r = await c.post(path, **kwargs)
    assert r.status_code == 299 and r.json() == {"from": "app"}, case
    assert calls.made == []
    [(seen_path, seen_body)] = inner.seen
    sent = kwargs.get("content")
    if sent is None and "json" in kwargs:
        sent = httpx.Request("POST", "http://n", json=kwargs["json"]).content
    assert seen_body == (sent or b"") and seen_path.endswith(path.rsplit("/", 1)[-1])


async def test_other_methods_and_paths_are_the_apps() -> None:
    inner, calls = Recorder(), Calls()
    async with _client(inner, calls) as c:
        await c.get("/v1/transactions", headers=_auth(CLIENT))
        await c.post("/v1/transactions/t1/abort", headers=_auth(CLIENT))
        await c.post("/v1/transactions/t1/participants/extra", headers=_auth(PARTICIPANT))
    assert len(inner.seen) == 3 and calls.made == []


async def test_an_engine_failure_is_answered_not_replayed() -> None:
    inner, calls = Recorder(), Calls(fail=NotLeader("http://x"))
    async with _client(inner, calls) as c:
        r = await c.post("/v1/transactions", json={}, headers=_auth(CLIENT))
    assert r.status_code == 503 and r.headers["Txc-Leader"] == "http://x"
    assert r.json()["error"]["code"] == "not_leader"
    assert len(calls.made) == 1 and inner.seen == []  # the begin ran once
    calls.fail = RuntimeError("boom")
    async with _client(inner, calls) as c:
        with pytest.raises(RuntimeError):  # the server's error handling takes it from here
            await c.post("/v1/transactions", json={}, headers=_auth(CLIENT))
    assert inner.seen == []
