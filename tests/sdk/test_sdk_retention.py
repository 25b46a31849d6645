"""Forgetting, seen from the SDK, against a real coordinator with a short retention (a
standalone node, and a Raft group of one whose applied state is checkpointed): once a finished
transaction has left the replicated state, every answer a client or a participant can get
about it is the one it got before (docs/retention.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sdk_helpers import items, prepared_gids, record_state
from sdk_real import API_TOKEN, eventually, serve_coordinator
from sqlalchemy import Engine, text

from participant_sdk import PgResourceManager, TransactionAborted, TxcClient

RETENTION = {"retention_s": 0.2, "tombstone_retention_s": 30.0, "checkpoint_interval_s": 0.2}
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WITHIN_S = 15.0


@pytest.fixture(params=[False, True], ids=["standalone", "raft"])
def coordinator_url(pg, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Overrides the SDK tests' coordinator (and so the demo banks' one)."""
    with serve_coordinator(pg, raft=request.param, **RETENTION) as url:
        yield url


def get(url: str, txid: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{url}/v1/transactions/{txid}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_forgotten(url: str, txid: str) -> dict:  # type: ignore[type-arg]
    eventually(lambda: get(url, txid)["forgotten_at"] is not None, WITHIN_S)
    return get(url, txid)


def move(bank: str, path: str, account: str, amount: int, tx) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(
        f"{bank}/transfer/{path}", json={"account": account, "amount": amount}, headers=tx.headers
    )


def test_a_forgotten_commit_answers_as_before(
    coordinator_url: str, two_banks: tuple[str, str]
) -> None:
    bank_a, bank_b = two_banks
    url = coordinator_url
    with TxcClient(url, token=API_TOKEN) as client:
        tx = client.begin(idempotency_key="order-17", labels={"kind": "transfer"})
        assert move(bank_a, "debit", "alice", 5, tx).status_code == 200
        assert move(bank_b, "credit", "bob", 5, tx).status_code == 200
        tx.commit()
        doc = wait_forgotten(url, tx.txid)
        # Read from this node's history: the full record, with its participants.
        assert doc["source"] == "history" and doc["state"] == "committed"
        assert sorted(p["name"] for p in doc["participants"]) == ["bank-a", "bank-b"]
        assert doc["labels"] == {"kind": "transfer"}
        # A participant in doubt, a client repeating its commit: the decided outcome.
        assert client.outcome(tx.txid) == "commit"
        assert client.commit(tx.txid)["outcome"] == "commit"
        # A late enlistment is refused: the transaction is over.
        r = httpx.post(
            f"{url}/v1/transactions/{tx.txid}/participants",
            json={"name": "late", "url": "http://127.0.0.1:1/txc", "vote": "yes"},
            headers=AUTH,
        )
        assert r.status_code == 409, r.text
        # The same idempotency key finds the same, committed transaction (200, not 201).
        r = httpx.post(f"{url}/v1/transactions", json={"idempotency_key": "order-17"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["txid"] == tx.txid, r.text
        assert r.json()["outcome"] == "commit"
        # Its timeline and the history list still show it.
        events = httpx.get(f"{url}/v1/transactions/{tx.txid}/timeline", headers=AUTH).json()
        assert [e["kind"] for e in events["events"]][-1] == "forget"
        listed = httpx.get(f"{url}/v1/transactions?finished=true", headers=AUTH).json()
        assert tx.txid in [t["txid"] for t in listed["items"]]
        live = httpx.get(f"{url}/v1/transactions", headers=AUTH).json()
        assert tx.txid not in [t["txid"] for t in live["items"]]
        sizes = httpx.get(f"{url}/v1/cluster/retention", headers=AUTH).json()
        assert sizes["records"] == 0 and sizes["tombstones"] == 1 and sizes["history_rows"] == 1
    assert httpx.get(f"{bank_a}/accounts/alice").json()["balance"] == 995
    assert httpx.get(f"{bank_b}/accounts/bob").json()["balance"] == 1005


def test_a_participant_left_out_of_a_lazy_commit_learns_it_after_forgetting(
    coordinator_url: str, engine: Engine, svc: PgResourceManager
) -> None:
    """Its enlistment never reached the coordinator, so nothing waits for it and the record is
    forgotten; its recovery asks later and is told COMMIT, by the tombstone."""
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin_lazy()
        with svc.work(tx.txid, deferred=True) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('left-out', 1)"))
        tx.commit()  # without the enlistment
        doc = wait_forgotten(coordinator_url, tx.txid)
        assert doc["participants"] == [] and doc["outcome"] == "commit"
    assert record_state(engine, "svc", tx.txid) == "prepared"
    assert svc.resolve_in_doubt().actions() == {tx.txid: "committed"}
    assert items(engine) == {"left-out": 1} and prepared_gids(engine) == []


def test_a_presumed_abort_stands_after_forgetting(
    coordinator_url: str, engine: Engine, svc: PgResourceManager
) -> None:
    """The participant's recovery asked first (presumed abort, recorded); once that record is
    forgotten, the client's late lazy commit (which carries a begin) still cannot make a new
    transaction of the same txid: it is told ABORT."""
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin_lazy()
        with svc.work(tx.txid, deferred=True) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('late', 1)"))
        tx.enlistments.append(json.loads(svc.enlistment(tx.txid)))
        assert svc.resolve_in_doubt().actions() == {tx.txid: "rolled_back"}
        wait_forgotten(coordinator_url, tx.txid)
        with pytest.raises(TransactionAborted):
            tx.commit()
        assert client.outcome(tx.txid) == "abort"
    assert items(engine) == {} and prepared_gids(engine) == []


def test_an_unfinished_transaction_is_never_forgotten(
    coordinator_url: str, engine: Engine, svc: PgResourceManager
) -> None:
    """A committed transaction whose participant cannot be reached stays in the replicated
    state, with its phase 2 retried, however long past the retention; its prepared work is
    still resolved by the participant's recovery."""
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin()
        with svc.work(tx.txid) as w:  # enlists itself at a URL nobody serves
            w.connection.execute(text("INSERT INTO items VALUES ('stuck', 1)"))
        tx.commit()
        eventually(lambda: get(coordinator_url, tx.txid)["state"] == "committing", WITHIN_S)
        # Several retention passes later it is still a live record, retried.
        eventually(
            lambda: get(coordinator_url, tx.txid)["participants"][0]["attempts"] >= 3, WITHIN_S
        )
        doc = get(coordinator_url, tx.txid)
        assert doc["source"] == "state" and doc["forgotten_at"] is None
    assert svc.resolve_in_doubt().actions() == {tx.txid: "committed"}
    assert items(engine) == {"stuck": 1}
