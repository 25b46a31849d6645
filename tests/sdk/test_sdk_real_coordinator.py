"""The SDK against the real coordinator (one standalone node, in-process): demo transfers,
aborts driven by the coordinator, and recovery through the real /outcome, with the API token
and the participant token set to different values."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sdk_helpers import items, prepared_gids
from sdk_real import API_TOKEN, PARTICIPANT_TOKEN, eventually
from sdk_servers import ServerThread, free_port
from sqlalchemy import Engine, text

from participant_sdk import (
    CallbackParticipant,
    CallbackWork,
    PgResourceManager,
    TransactionAborted,
    TxcClient,
    create_tables,
    record,
)
from txc_demo.bank import SEED_ACCOUNTS
from txc_demo.transfer import TransferFailed, transfer


def balance(bank: str, account: str) -> int:
    return int(httpx.get(f"{bank}/accounts/{account}").json()["balance"])


def test_transfer_through_real_coordinator(coordinator_url: str, two_banks) -> None:
    a, b = two_banks
    result = transfer(coordinator_url, a, "alice", b, "bob", 40, token=API_TOKEN)
    assert result["outcome"] == "commit"
    eventually(lambda: balance(a, "alice") == 960 and balance(b, "bob") == 1040)
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.get(result["txid"])
        assert tx["state"] == "committed"
        assert sorted(p["name"] for p in tx["participants"]) == ["bank-a", "bank-b"]
        assert all(p["vote"] == "yes" for p in tx["participants"])

    with pytest.raises(TransferFailed):
        transfer(
            coordinator_url, a, "alice", b, "bob", 10 * SEED_ACCOUNTS["alice"], token=API_TOKEN
        )
    assert balance(a, "alice") == 960


def test_refused_credit_aborts_prepared_debit(coordinator_url: str, two_banks) -> None:
    a, b = two_banks
    with pytest.raises(TransferFailed):
        transfer(coordinator_url, a, "alice", b, "nobody", 10, token=API_TOKEN)
    # The coordinator drives the abort to bank A's prepared debit.
    eventually(lambda: balance(a, "alice") == 1000)
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin()
        client.abort(tx.txid)
        with pytest.raises(TransactionAborted):
            client.commit(tx.txid)


def test_recovery_asks_the_real_coordinator(coordinator_url: str, engine: Engine) -> None:
    """Prepared and enlisted, but the coordinator cannot reach the participant for phase 2
    (its public URL is dead): the participant resolves it through /outcome."""
    dead = f"http://127.0.0.1:{free_port()}"
    rm = PgResourceManager(
        "svc", engine, public_url=dead, coordinator_url=coordinator_url, token=API_TOKEN
    )
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin()
        with rm.work(tx.txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('r', 1)"))
        assert rm.resolve_in_doubt().actions() == {tx.txid: "left_pending"}
        client.commit(tx.txid)
    assert rm.resolve_in_doubt().actions() == {tx.txid: "committed"}
    assert items(engine) == {"r": 1} and prepared_gids(engine) == []
    rm.close()


def test_callback_prepared_but_not_answered_gets_a_courtesy_abort(
    coordinator_url: str, pg, make_engine, monkeypatch
) -> None:
    """The prepare callback made the work durable, then the SDK failed before its record
    said so (a 503 to the coordinator). The coordinator counts it as NO but, unlike an
    explicit NO (a participant that rolled back on its own), sends it a courtesy abort, and
    the abort callback releases the work at once (recovery would otherwise, see
    test_sdk_callbacks)."""
    reserved: dict[str, list[str]] = {}
    released: list[str] = []
    engine = make_engine(pg.new_database("cb"))
    create_tables(engine)
    port = free_port()
    cp = CallbackParticipant(
        "reserver",
        prepare=lambda txid: "yes",  # the reservation is already durable in `reserved`
        commit=lambda txid: None,
        abort=lambda txid: released.append(txid) or reserved.pop(txid, None),
        record_engine=engine,
        public_url=f"http://127.0.0.1:{port}",
        coordinator_url=coordinator_url,
        token=API_TOKEN,
        participant_token=PARTICIPANT_TOKEN,
    )
    app = FastAPI()
    cp.install(app, recovery=False)

    @app.post("/reserve/{item}")
    def reserve(item: str, work: CallbackWork = cp.join()) -> dict:
        assert work.txid is not None
        reserved.setdefault(work.txid, []).append(item)
        return {"txid": work.txid}

    def lost(*args, **kwargs):
        raise ConnectionError("record store went away")

    server = ServerThread(app, port).start()
    try:
        with TxcClient(coordinator_url, token=API_TOKEN) as client:
            tx = client.begin()
            r = httpx.post(f"{server.url}/reserve/seat-1", headers=tx.headers)
            assert r.status_code == 200
            with monkeypatch.context() as m:
                m.setattr(record, "finish_preparing", lost)
                with pytest.raises(TransactionAborted):
                    client.commit(tx.txid)
            eventually(lambda: released == [tx.txid])
            assert tx.txid not in reserved
            [p] = client.get(tx.txid)["participants"]
            assert p["vote"] == "no" and client.get(tx.txid)["state"] == "aborted"
    finally:
        server.stop()
        cp.close()
