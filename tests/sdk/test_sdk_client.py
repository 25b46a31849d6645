"""Coordinator client: begin/commit/abort, leader following, safe retries, context managers
(sync and async), against the fake coordinator over real HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fake_coordinator import FakeCoordinator
from sdk_servers import free_port, serve

from participant_sdk import (
    COORDINATOR_HEADER,
    TRANSACTION_HEADER,
    AsyncTxcClient,
    AuthenticationFailed,
    CoordinatorUnavailable,
    InvalidRequest,
    TransactionAborted,
    TransactionAlreadyCommitted,
    TransactionNotFound,
    TxcClient,
)


class Boom(Exception):
    pass


def test_begin_get_commit(coord) -> None:
    with TxcClient(coord.url) as client:
        tx = client.begin(timeout_s=5, labels={"kind": "test"})
        assert tx.data["state"] == "active" and tx.expires_at
        assert tx.headers == {TRANSACTION_HEADER: tx.txid, COORDINATOR_HEADER: coord.url}
        assert client.get(tx.txid)["labels"] == {"kind": "test"}
        assert client.outcome(tx.txid) == "pending"
        assert tx.commit()["outcome"] == "commit"
        assert client.commit(tx.txid)["outcome"] == "commit"  # repeated: same outcome
        assert client.outcome(tx.txid) == "commit"
        with pytest.raises(TransactionAlreadyCommitted):
            client.abort(tx.txid)


def test_abort_then_commit_raises_aborted(coord) -> None:
    with TxcClient(coord.url) as client:
        tx = client.begin()
        assert tx.abort()["outcome"] == "abort"
        with pytest.raises(TransactionAborted) as exc:
            client.commit(tx.txid)
        assert exc.value.status == 409 and exc.value.code == "aborted"
        assert client.outcome(tx.txid) == "abort"
        assert client.outcome("never-begun") == "abort"  # presumed abort
        with pytest.raises(TransactionNotFound):
            client.get("nope")


def test_context_manager_commits_or_aborts(coord) -> None:
    with TxcClient(coord.url) as client:
        with client.transaction() as tx:
            pass
        assert coord.fake.txs[tx.txid].outcome == "commit"
        with pytest.raises(Boom), client.transaction() as tx2:
            raise Boom()
        assert coord.fake.txs[tx2.txid].outcome == "abort"
        with client.transaction() as tx3:
            tx3.abort()  # an explicit abort inside: no commit afterwards
        assert coord.fake.count("commit") == 1


def test_token_is_sent(coord) -> None:
    coord.fake.token = "t0k"
    with TxcClient(coord.url) as client, pytest.raises(AuthenticationFailed):
        client.begin()
    with TxcClient(coord.url, token="t0k") as client:
        client.begin()


def test_follows_txc_leader_on_503(coord) -> None:
    follower = FakeCoordinator()
    follower.leader_url = coord.url
    with serve(follower.app) as f, TxcClient(f.url) as client:
        tx = client.begin()
        assert tx.txid in coord.fake.txs
        assert client.base_url == coord.url  # sticky: the next call goes to the leader
        client.commit(tx.txid)
        assert follower.count("begin") == 1 and follower.count("commit") == 0


def _forwarding_follower(leader_url: str, seen: list[str]) -> Any:
    """A follower that serves every call by forwarding it, saying where the leader is."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def forward(request: Request) -> Response:
        seen.append(request.url.path)
        headers = {
            k: v for k, v in request.headers.items() if k in ("authorization", "content-type")
        }
        async with httpx.AsyncClient() as c:
            r = await c.request(
                request.method,
                leader_url + request.url.path,
                content=await request.body(),
                headers=headers,
            )
        return Response(
            r.content,
            r.status_code,
            headers={"content-type": "application/json", "Txc-Leader": leader_url},
        )

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


def test_follows_txc_leader_announced_on_a_forwarded_answer(coord) -> None:
    seen: list[str] = []
    with (
        serve(_forwarding_follower(coord.url, seen)) as f,
        TxcClient([f.url, coord.url]) as client,
    ):
        tx = client.begin()  # forwarded by the follower, which names the leader
        assert client.base_url == coord.url
        client.commit(tx.txid)  # straight to the leader
    assert seen == ["/v1/transactions"]
    assert coord.fake.count("begin") == 1 and coord.fake.count("commit") == 1


def test_a_forwarded_answer_naming_an_unknown_leader_is_not_followed(coord) -> None:
    """The group's own addresses may be unreachable from the client (containers, NAT):
    only a node the client was configured with is followed; forwarding keeps working."""
    seen: list[str] = []
    with serve(_forwarding_follower(coord.url, seen)) as f, TxcClient(f.url) as client:
        tx = client.begin()
        client.commit(tx.txid)
        assert client.base_url == f.url
    assert seen == ["/v1/transactions", f"/v1/transactions/{tx.txid}/commit"]


def test_retries_503_without_leader_then_gives_up(coord) -> None:
    coord.fake.inject("begin", 503, times=2)
    with TxcClient(coord.url, retries=3) as client:
        client.begin()
    assert coord.fake.count("begin") == 3
    coord.fake.inject("commit", 502, times=10)
    with TxcClient(coord.url, retries=2) as client, pytest.raises(CoordinatorUnavailable):
        client.commit("whatever")


def test_retries_connection_errors_on_next_node(coord) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with TxcClient([dead, coord.url]) as client:
        tx = client.begin()
        assert tx.txid in coord.fake.txs
    with TxcClient(dead, retries=2) as client, pytest.raises(CoordinatorUnavailable):
        client.outcome("x")


def test_begin_retry_after_lost_answer_reuses_idempotency_key(coord) -> None:
    """The first begin reaches the coordinator but its answer is lost: the retry carries the
    same idempotency key, so exactly one transaction exists."""
    real = httpx.HTTPTransport()
    keys: list[str] = []

    class LoseFirstAnswer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            keys.append(json.loads(request.content)["idempotency_key"])
            response = real.handle_request(request)
            if len(keys) == 1:
                response.read()
                raise httpx.ReadTimeout("answer lost", request=request)
            return response

    with TxcClient(coord.url, transport=LoseFirstAnswer()) as client:
        tx = client.begin()
    assert len(keys) == 2 and keys[0] == keys[1]
    assert list(coord.fake.txs) == [tx.txid]


def test_4xx_is_not_retried(coord) -> None:
    coord.fake.inject("begin", 422)
    with TxcClient(coord.url) as client, pytest.raises(InvalidRequest) as exc:
        client.begin()
    assert exc.value.status == 422
    assert coord.fake.count("begin") == 1


async def test_async_client(coord) -> None:
    follower = FakeCoordinator()
    follower.leader_url = coord.url
    with serve(follower.app) as f:
        async with AsyncTxcClient(f.url) as client:
            async with client.transaction(labels={"a": "b"}) as tx:
                assert tx.headers[TRANSACTION_HEADER] == tx.txid
            assert coord.fake.txs[tx.txid].outcome == "commit"
            assert await client.outcome(tx.txid) == "commit"
            with pytest.raises(Boom):
                async with client.transaction() as tx2:
                    raise Boom()
            assert coord.fake.txs[tx2.txid].outcome == "abort"
            with pytest.raises(TransactionAborted):
                await client.commit(tx2.txid)
            coord.fake.inject("get", 503, times=1)
            assert (await client.get(tx.txid))["txid"] == tx.txid
