"""Lazy transactions against the real coordinator: begun by their commit, which brings the
participants' deferred enlistments (signed with the participant secret), so a whole
transaction is one coordinator call and one log round before phase 2."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sdk_apps import serve_items
from sdk_helpers import items, prepared_gids, record_state
from sdk_real import API_TOKEN, FAST, PARTICIPANT_TOKEN, eventually
from sdk_servers import ServerThread, free_port
from sqlalchemy import Engine, text

from coordinator import migrate
from coordinator.config import Settings
from coordinator.node import build_app
from participant_sdk import (
    ENLISTMENT_HEADER,
    AuthenticationFailed,
    CallbackParticipant,
    InvalidRequest,
    PgResourceManager,
    TransactionAborted,
    TransactionNotFound,
    TxcClient,
    WorkRefused,
)
from participant_sdk.signing import enlistment_signature


def balance(bank: str, account: str) -> int:
    return int(httpx.get(f"{bank}/accounts/{account}").json()["balance"])


def move(bank: str, path: str, account: str, amount: int, tx) -> httpx.Response:
    return httpx.post(
        f"{bank}/transfer/{path}", json={"account": account, "amount": amount}, headers=tx.headers
    )


def test_lazy_transfer_is_one_coordinator_call(coordinator_url: str, two_banks) -> None:
    a, b = two_banks
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        with client.transaction(lazy=True, timeout_s=20, labels={"kind": "lazy"}) as tx:
            for bank, path, account in ((a, "debit", "alice"), (b, "credit", "bob")):
                r = move(bank, path, account, 25, tx)
                assert r.status_code == 200, r.text
                tx.collect(r)
            # The coordinator has not heard of it yet; both banks hold prepared work.
            with pytest.raises(TransactionNotFound):
                client.get(tx.txid)
            assert [e["name"] for e in tx.enlistments] == ["bank-a", "bank-b"]
            assert all(e["vote"] == "yes" and e["sig"].startswith("e1=") for e in tx.enlistments)
        assert tx.outcome == "commit"
        t = client.get(tx.txid)
        assert t["state"] == "committed" and t["labels"] == {"kind": "lazy"}
        assert sorted((p["name"], p["vote"]) for p in t["participants"]) == [
            ("bank-a", "yes"),
            ("bank-b", "yes"),
        ]
        # Repeating the commit (a retry after a lost answer) reports the same outcome.
        assert client.commit(tx.txid, tx.enlistments, tx.lazy_begin)["outcome"] == "commit"
    eventually(lambda: balance(a, "alice") == 975 and balance(b, "bob") == 1025)


def test_lazy_abort_reaches_the_prepared_participant_at_once(
    coordinator_url: str, two_banks
) -> None:
    """The credit fails (unknown account): the abort brings bank A's enlistment, so phase 2
    rolls back its prepared debit now rather than at its next recovery pass."""
    a, b = two_banks
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin_lazy()
        r = move(a, "debit", "alice", 30, tx)
        assert r.status_code == 200
        tx.collect(r)
        assert move(b, "credit", "nobody", 30, tx).status_code == 404
        assert balance(a, "alice") == 1000  # prepared, not visible
        tx.abort()
        t = client.get(tx.txid)
        assert t["outcome"] == "abort" and [p["name"] for p in t["participants"]] == ["bank-a"]
        eventually(lambda: client.get(tx.txid)["state"] == "aborted")
        with pytest.raises(TransactionAborted):
            client.commit(tx.txid, tx.enlistments, tx.lazy_begin)
    assert balance(a, "alice") == 1000


def test_forged_or_unsigned_enlistment_is_refused(coordinator_url: str) -> None:
    """Only a participant (holder of the participant secret) can enlist: a client cannot
    name a participant, or a URL for signed phase-2 messages, on its own. Nothing is
    proposed: the coordinator still does not know the transaction."""
    txid = str(uuid.uuid4())
    url = f"http://127.0.0.1:{free_port()}/txc"
    good = enlistment_signature(PARTICIPANT_TOKEN, txid, "svc", url, "yes")
    cases = [
        {"name": "svc", "url": url, "vote": "yes"},  # unsigned
        {"name": "svc", "url": url, "vote": "yes", "sig": "e1=" + "0" * 64},
        {"name": "svc", "url": url + "/elsewhere", "vote": "yes", "sig": good},  # URL changed
        {"name": "svc", "url": url, "sig": good},  # vote dropped
    ]
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        for entry in cases:
            with pytest.raises(AuthenticationFailed) as e:
                client.commit(txid, [entry], {})
            assert e.value.status == 403 and e.value.code == "bad_enlistment_signature"
        with pytest.raises(TransactionNotFound):
            client.get(txid)
        # An abort with a forged enlistment still aborts (without that enlistment).
        t = client.abort(txid, [cases[0]], {})
        assert t["outcome"] == "abort" and t["participants"] == []


def test_malformed_commit_bodies(coordinator_url: str) -> None:
    txid = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    url = f"{coordinator_url}/v1/transactions/{txid}/commit"
    twice = {"participants": [{"name": "a", "url": "http://h/txc"}] * 2, "begin": {}}
    r = httpx.post(url, json=twice, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(url, json={"begin": {"timeout_s": -1}}, headers=headers)
    assert r.status_code == 422
    r = httpx.post(url, json={"begin": {}, "surprise": 1}, headers=headers)
    assert r.status_code == 422
    json_headers = {**headers, "content-type": "application/json"}
    r = httpx.post(url, content=b"{not json", headers=json_headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    # Without a begin, an unknown transaction is not created by its commit.
    r = httpx.post(url, json={"participants": []}, headers=headers)
    assert r.status_code == 404
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        with pytest.raises(InvalidRequest):
            client.commit(txid, [{"name": "bad name!", "url": "http://h"}], {})


def test_enlistment_left_out_follows_the_outcome_through_recovery(
    coordinator_url: str, engine: Engine, svc: PgResourceManager
) -> None:
    """A client that does not bring a participant's enlistment (lost, forgotten): the
    transaction commits without it, and the participant's prepared work follows the outcome
    when its recovery asks. Atomicity holds; only the locks are held longer."""
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin_lazy()
        with svc.work(tx.txid, deferred=True) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('left-out', 1)"))
        assert record_state(engine, "svc", tx.txid) == "prepared"
        tx.commit()  # no enlistment collected
        assert client.get(tx.txid)["participants"] == []
    assert svc.resolve_in_doubt().actions() == {tx.txid: "committed"}
    assert items(engine) == {"left-out": 1} and prepared_gids(engine) == []


def test_presumed_abort_before_the_lazy_commit_wins(
    coordinator_url: str, engine: Engine, svc: PgResourceManager
) -> None:
    """The participant's recovery asked before the client committed (a slow client): the
    unknown transaction became a durable ABORT, the work is rolled back, and the late
    commit is told so (DESIGN §3 rule 3)."""
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        tx = client.begin_lazy()
        with svc.work(tx.txid, deferred=True) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('late', 1)"))
        tx.enlistments.append(json.loads(svc.enlistment(tx.txid)))
        assert svc.resolve_in_doubt().actions() == {tx.txid: "rolled_back"}
        with pytest.raises(TransactionAborted):
            tx.commit()
        assert client.get(tx.txid)["outcome"] == "abort"
    assert items(engine) == {} and prepared_gids(engine) == []


def test_sync_join_hands_over_the_enlistment(engine: Engine, coord) -> None:
    """`join()` (a `def` endpoint) with `Txc-Enlist: deferred`: the answer carries the
    enlistment and the participant did not call the coordinator."""
    with (
        serve_items(engine, coord.url, deferred_enlistment=True) as svc,
        TxcClient(coord.url) as client,
    ):
        tx = client.begin_lazy()
        r = httpx.post(f"{svc.url}/items/a?value=3", headers=tx.headers)
        assert r.status_code == 200, r.text
        assert tx.txid not in coord.fake.txs
        tx.collect(r)
        [entry] = tx.enlistments
        assert entry == {"name": "svc", "url": f"{svc.url}/txc", "vote": "yes"}  # no secret
        assert r.headers[ENLISTMENT_HEADER]
        assert record_state(engine, "svc", tx.txid) == "prepared"
        # Without the request header, the same endpoint enlists itself as before.
        tx2 = client.begin()
        r = httpx.post(f"{svc.url}/items/b", headers=tx2.headers)
        assert r.status_code == 200 and ENLISTMENT_HEADER not in r.headers
        assert "svc" in coord.fake.txs[tx2.txid].participants
        # A failed request hands over nothing (its work was rolled back).
        tx3 = client.begin_lazy()
        r = httpx.post(f"{svc.url}/items/c?fail=true", headers=tx3.headers)
        assert r.status_code == 422 and ENLISTMENT_HEADER not in r.headers
        assert record_state(engine, "svc", tx3.txid) is None


def test_deferred_enlistment_is_off_unless_the_participant_turns_it_on(
    engine: Engine, coord
) -> None:
    """Off (the default), `Txc-Enlist: deferred` is ignored: the participant enlists, and a
    txid the coordinator never issued is refused at once, with nothing left prepared."""
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin_lazy()
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "enlistment_refused"
        assert ENLISTMENT_HEADER not in r.headers
        assert prepared_gids(engine) == [] and items(engine) == {}


def test_a_callback_participant_never_signs_an_enlistment(tmp_path) -> None:
    """Its work is prepared only when the coordinator asks: a signed "yes" from it would let
    a commit skip that question."""
    from sqlalchemy import create_engine

    cp = CallbackParticipant(
        "cb",
        prepare=lambda txid: "yes",
        commit=lambda txid: None,
        abort=lambda txid: None,
        record_engine=create_engine(f"sqlite:///{tmp_path}/r.db"),
        public_url="http://127.0.0.1:1",
        coordinator_url="http://127.0.0.1:2",
        participant_token=PARTICIPANT_TOKEN,
    )
    with pytest.raises(WorkRefused) as e:
        cp.enlistment(str(uuid.uuid4()))
    assert e.value.code == "deferred_not_supported"
    with pytest.raises(WorkRefused) as e:
        with cp.work(str(uuid.uuid4()), deferred=True):
            raise AssertionError("the work must not start")
    assert e.value.code == "deferred_not_supported"


def test_abort_with_a_body_but_no_begin_of_an_unknown_txid_is_404(coordinator_url: str) -> None:
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        txid = str(uuid.uuid4())
        sig = enlistment_signature(PARTICIPANT_TOKEN, txid, "x", "http://h/txc", None)
        with pytest.raises(TransactionNotFound):
            client.abort(txid, [{"name": "x", "url": "http://h/txc", "sig": sig}])
        with pytest.raises(TransactionNotFound):
            client.get(txid)
        # With a begin, the abort records it (its participants then hear it in phase 2).
        assert client.abort(txid, [], {})["outcome"] == "abort"


def test_tokens_without_a_participant_secret_refuse_carried_enlistments(pg) -> None:
    """API tokens on but no participant secret: nothing proves a participant made the
    enlistment, and a client token may not enlist: refused, nothing proposed."""
    db = pg.new_database("coord")
    migrate.upgrade(db, "coordinator")
    port = free_port()
    settings = Settings(database_url=db, port=port, api_token=API_TOKEN, **FAST)
    server = ServerThread(build_app(settings, run_migrations=False), port).start()
    try:
        with TxcClient(server.url, token=API_TOKEN) as client:
            txid = str(uuid.uuid4())
            entry = {"name": "svc", "url": "http://127.0.0.1:9/txc", "vote": "yes"}
            with pytest.raises(AuthenticationFailed) as e:
                client.commit(txid, [entry], {})
            assert e.value.code == "enlistment_unverifiable"
            with pytest.raises(TransactionNotFound):
                client.get(txid)
            # An abort is not lost for it: it goes ahead without the enlistment.
            assert client.abort(txid, [entry], {})["outcome"] == "abort"
            # A lazy transaction with no participant still works (nothing to verify).
            other = str(uuid.uuid4())
            assert client.commit(other, [], {})["outcome"] == "commit"
    finally:
        server.stop()


def test_demo_transfer_lazy(coordinator_url: str, two_banks) -> None:
    """`python -m txc_demo.transfer --lazy`: the same transfer, one coordinator call."""
    from txc_demo.transfer import TransferFailed, transfer

    a, b = two_banks
    result = transfer(coordinator_url, a, "alice", b, "bob", 7, token=API_TOKEN, lazy=True)
    assert result["outcome"] == "commit"
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        t = client.get(result["txid"])
        assert t["state"] in ("committing", "committed") and len(t["participants"]) == 2
    eventually(lambda: balance(a, "alice") == 993 and balance(b, "bob") == 1007)
    with pytest.raises(TransferFailed):  # unknown account (the lazy abort: test above)
        transfer(coordinator_url, a, "alice", b, "nobody", 5, token=API_TOKEN, lazy=True)


def test_deferred_work_needs_the_opt_in(coordinator_url: str, engine: Engine) -> None:
    """Outside FastAPI too: `work(txid, deferred=True)` and `enlistment()` are refused
    unless `deferred_enlistment=True`, before any work."""
    rm = PgResourceManager(
        "off",
        engine,
        public_url=f"http://127.0.0.1:{free_port()}",
        coordinator_url=coordinator_url,
        token=API_TOKEN,
        participant_token=PARTICIPANT_TOKEN,
    )
    try:
        txid = str(uuid.uuid4())
        with pytest.raises(WorkRefused) as e:
            with rm.work(txid, deferred=True):
                raise AssertionError("the work must not start")
        assert e.value.code == "deferred_not_enabled"
        with pytest.raises(WorkRefused):
            rm.enlistment(txid)
        assert prepared_gids(engine) == []
    finally:
        rm.close()
