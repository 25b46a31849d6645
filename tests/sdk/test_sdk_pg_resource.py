"""PostgreSQL resource manager: eager prepare, protocol handlers, record rules (DESIGN §5/§6),
over real HTTP with a real PostgreSQL server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from sdk_apps import serve_items
from sdk_helpers import items, prepared_gids, record_state
from sqlalchemy import Engine, text

from participant_sdk import (
    TRANSACTION_HEADER,
    ParticipantError,
    PgResourceManager,
    TransactionAborted,
    TxcClient,
    WorkRefused,
    make_gid,
    record,
)
from participant_sdk.signing import signed_headers


def _body(txid: str, name: str) -> bytes:
    return json.dumps({"txid": txid, "participant": name}).encode()


def proto(url: str, action: str, txid: str, name: str = "svc", **kw) -> httpx.Response:
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{url}/txc/{action}", content=_body(txid, name), headers=headers, **kw)


def signed(
    secret: str, url: str, action: str, txid: str, name: str = "svc", now: float | None = None
) -> dict[str, str]:
    """The coordinator's signature headers for one protocol request."""
    return signed_headers(secret, "POST", f"{url}/txc/{action}", _body(txid, name), now=now)


def test_work_prepares_then_commit_prepared(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/items/a?value=7", headers=tx.headers)
        assert r.status_code == 200, r.text
        gid = make_gid("svc", tx.txid)
        assert r.json()["gid"] == gid
        # Prepared, recorded, enlisted with vote yes, not yet visible.
        assert prepared_gids(engine) == [gid]
        assert record_state(engine, "svc", tx.txid) == "prepared"
        enlisted = coord.fake.txs[tx.txid].participants["svc"]
        assert enlisted == {"url": f"{svc.url}/txc", "vote": "yes"}
        assert items(engine) == {}

        tx.commit()
        assert items(engine) == {"a": 7}
        assert prepared_gids(engine) == []
        assert record_state(engine, "svc", tx.txid) == "committed"
        # The coordinator skipped prepare for this participant (it voted when enlisting).
        assert [a for _, a, _ in coord.fake.phase2_replies] == ["commit"]


def test_abort_rolls_back_prepared_work(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        tx.abort()
        assert items(engine) == {}
        assert prepared_gids(engine) == []
        assert record_state(engine, "svc", tx.txid) == "aborted"


def test_abort_before_work_refuses_later_work(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert proto(svc.url, "abort", tx.txid).status_code == 200
        assert record_state(engine, "svc", tx.txid) == "aborted"
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "aborted"
        assert items(engine) == {} and prepared_gids(engine) == []
        assert coord.fake.count("enlist") == 0


def test_abort_arriving_during_work_wins(engine: Engine, coord) -> None:
    """The abort lands after the pre-check but before PREPARE: the 'prepared' record cannot be
    written (an 'aborted' one exists), so the work is rolled back and refused."""
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:1", coordinator_url=coord.url
    )
    txid = "tx-race"
    with pytest.raises(WorkRefused) as exc, rm.work(txid) as w:
        w.connection.execute(text("INSERT INTO items VALUES ('a', 1)"))
        assert rm.abort(txid).status == 200
    assert exc.value.code == "aborted"
    assert items(engine) == {} and prepared_gids(engine) == []
    assert coord.fake.count("enlist") == 0
    rm.close()


def test_repeated_commit_and_abort_answer_200(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        committed = client.begin()
        assert httpx.post(f"{svc.url}/items/c", headers=committed.headers).status_code == 200
        for _ in range(3):
            r = proto(svc.url, "commit", committed.txid)
            assert r.status_code == 200 and r.json()["state"] == "committed"
        aborted = client.begin()
        assert httpx.post(f"{svc.url}/items/x", headers=aborted.headers).status_code == 200
        for _ in range(3):
            assert proto(svc.url, "abort", aborted.txid).status_code == 200
        assert items(engine) == {"c": 1}
        assert prepared_gids(engine) == []


def test_concurrent_repeated_commits_commit_once(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/c", headers=tx.headers).status_code == 200
        statuses: list[int] = []

        def hit() -> None:
            statuses.append(proto(svc.url, "commit", tx.txid).status_code)

        threads = [threading.Thread(target=hit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 8
        assert items(engine) == {"c": 1}
        assert record_state(engine, "svc", tx.txid) == "committed"


def test_contradicting_outcomes_are_heuristic(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        assert proto(svc.url, "abort", tx.txid).status_code == 200
        r = proto(svc.url, "commit", tx.txid)
        assert r.status_code == 409 and r.json()["error"]["code"] == "heuristic_abort"

        tx2 = client.begin()
        assert httpx.post(f"{svc.url}/items/b", headers=tx2.headers).status_code == 200
        assert proto(svc.url, "commit", tx2.txid).status_code == 200
        r = proto(svc.url, "abort", tx2.txid)
        assert r.status_code == 409 and r.json()["error"]["code"] == "heuristic_commit"
        assert items(engine) == {"b": 1}


def test_commit_of_unknown_transaction_is_404(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc:
        r = proto(svc.url, "commit", "never-seen")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "unknown_transaction"
        assert record_state(engine, "svc", "never-seen") is None


def test_enlist_refused_rolls_back(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        coord.fake.inject("enlist", 409)
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "enlistment_refused"
        assert prepared_gids(engine) == [] and items(engine) == {}
        assert record_state(engine, "svc", tx.txid) == "aborted"


def test_enlist_unknown_txid_rolls_back(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc:
        r = httpx.post(f"{svc.url}/items/a", headers={TRANSACTION_HEADER: "no-such-tx"})
        assert r.status_code == 409
        assert prepared_gids(engine) == [] and items(engine) == {}


def test_enlist_uncertain_keeps_work_prepared(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        coord.fake.inject("enlist", 503, times=10)
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "enlistment_uncertain"
        # In doubt: kept prepared and recorded, for recovery to resolve with /outcome.
        assert prepared_gids(engine) == [make_gid("svc", tx.txid)]
        assert record_state(engine, "svc", tx.txid) == "prepared"
        coord.fake.set_outcome(tx.txid, "abort")
        report = svc.rm.resolve_in_doubt()
        assert report.actions() == {tx.txid: "rolled_back"}
        assert prepared_gids(engine) == [] and items(engine) == {}


def test_business_exception_rolls_back_and_enlists_nothing(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/items/a?fail=true", headers=tx.headers)
        assert r.status_code == 422
        assert prepared_gids(engine) == [] and items(engine) == {}
        assert record_state(engine, "svc", tx.txid) is None
        assert coord.fake.count("enlist") == 0
        # A database error in the business code, too (duplicate key on the second insert).
        assert httpx.post(f"{svc.url}/local/dup").status_code == 200
        tx2 = client.begin()
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{svc.url}/items/dup", headers=tx2.headers).raise_for_status()
        assert prepared_gids(engine) == []


def test_swallowed_database_error_prepares_nothing(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/items/a?swallow=true", headers=tx.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "work_failed"
        assert prepared_gids(engine) == [] and items(engine) == {}
        assert coord.fake.count("enlist") == 0


def test_second_request_for_same_txid_is_refused(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        r = httpx.post(f"{svc.url}/items/b", headers=tx.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_prepared"
        tx.commit()
        assert items(engine) == {"a": 1}
        r = httpx.post(f"{svc.url}/items/c", headers=tx.headers)
        assert r.status_code == 409


def test_join_requires_header_unless_optional(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc:
        r = httpx.post(f"{svc.url}/items/a")
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_transaction"
        r = httpx.post(f"{svc.url}/items/a", headers={TRANSACTION_HEADER: "bad'txid"})
        assert r.status_code == 400
        r = httpx.post(f"{svc.url}/local/z")
        assert r.status_code == 200 and r.json() == {"txid": None}
        assert items(engine) == {"z": 0}


def test_coordinator_prepare_call(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        r = proto(svc.url, "prepare", tx.txid)
        assert r.status_code == 200 and r.json() == {"vote": "yes"}
        r = proto(svc.url, "prepare", "unknown-tx")
        assert r.status_code == 409 and r.json()["vote"] == "no"
        # Voting no recorded an abort: late work for it is refused.
        assert record_state(engine, "svc", "unknown-tx") == "aborted"


def test_protocol_request_validation_and_token(engine: Engine, coord) -> None:
    coord.fake.token = "s3cret"
    with serve_items(engine, coord.url, token="s3cret") as svc:
        assert proto(svc.url, "commit", "t1").status_code == 401
        bearer = {"Authorization": "Bearer s3cret"}  # a token is not a signature
        assert proto(svc.url, "commit", "t1", headers=bearer).status_code == 401
        forged = signed("not-the-secret", svc.url, "commit", "t1")
        r = proto(svc.url, "commit", "t1", headers=forged)
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
        # A signature made for one request does not authenticate another one.
        other_tx = signed("s3cret", svc.url, "commit", "t2")
        assert proto(svc.url, "commit", "t1", headers=other_tx).status_code == 403
        stale = signed("s3cret", svc.url, "commit", "t1", now=time.time() - 3600)
        r = proto(svc.url, "commit", "t1", headers=stale)
        assert r.status_code == 403 and r.json()["error"]["code"] == "stale_signature"
        good = signed("s3cret", svc.url, "commit", "t1")
        assert proto(svc.url, "commit", "t1", headers=good).status_code == 404
        wrong = signed("s3cret", svc.url, "commit", "t1", name="other")
        r = proto(svc.url, "commit", "t1", name="other", headers=wrong)
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_participant"
        # The whole flow with the token: the SDK sends it when enlisting, the coordinator
        # sends it on phase 2.
        with TxcClient(coord.url, token="s3cret") as client, client.transaction() as tx:
            assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        assert items(engine) == {"a": 1}


def test_failed_commit_through_client_rolls_back(engine: Engine, coord) -> None:
    """A participant that voted no (abort-before-work here) makes commit raise
    TransactionAborted; the other participant's prepared work is rolled back."""
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a", headers=tx.headers).status_code == 200
        client.enlist(tx.txid, "ghost", f"{svc.url}/nowhere")  # will not vote yes
        with pytest.raises(TransactionAborted):
            tx.commit()
        assert items(engine) == {} and prepared_gids(engine) == []


def test_concurrent_work_for_same_txid_prepares_once(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    both_working = threading.Barrier(2)
    results: list[str] = []

    def worker(key: str) -> None:
        try:
            with rm.work(txid) as w:
                w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})
                both_working.wait()
            results.append("ok")
        except WorkRefused as e:
            results.append(e.code)

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already_prepared", "ok"]
    assert prepared_gids(engine) == [make_gid("svc", txid)]
    assert rm.commit(txid).status == 200
    assert len(items(engine)) == 1
    rm.close()


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_work_above_read_committed_is_refused_before_anything_is_done(
    engine: Engine, coord, level: str
) -> None:
    """At REPEATABLE READ the record check under the txid lock reads the transaction's old
    snapshot: a duplicate request could PREPARE the gid of a transaction already committed,
    and a crash before it undid that would leave recovery committing the duplicate's work.
    So the SDK refuses such an engine at the first statement: nothing prepared, nothing
    enlisted, nothing written."""
    rm = PgResourceManager(
        "svc",
        engine.execution_options(isolation_level=level),
        public_url="http://127.0.0.1:9",
        coordinator_url=coord.url,
    )
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    with pytest.raises(ParticipantError) as exc:
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('rr', 1)"))
    assert exc.value.code == "isolation_not_supported" and exc.value.status == 500
    assert level.lower() in str(exc.value)
    assert items(engine) == {} and prepared_gids(engine) == []
    assert record_state(engine, "svc", txid) is None and coord.fake.count("enlist") == 0
    rm.close()


def test_work_refused_before_anything_while_the_tables_are_out_of_date(
    engine: Engine, coord
) -> None:
    """New code on a database the participant migrations have not reached (no
    txc_participant_xid): refused before any work, instead of failing after each PREPARE."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {record.XID_TABLE_NAME}"))
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    try:
        txid = str(httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"])
        with pytest.raises(ParticipantError) as exc:
            with rm.work(txid) as w:
                w.connection.execute(text("INSERT INTO items VALUES ('s', 1)"))
        assert exc.value.code == "schema_out_of_date" and exc.value.status == 503
        assert "txc migrate --branch participant" in exc.value.message
        assert prepared_gids(engine) == [] and items(engine) == {}
        rm.create_tables()
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('s', 1)"))
        assert prepared_gids(engine) == [make_gid("svc", txid)]
    finally:
        rm.close()
