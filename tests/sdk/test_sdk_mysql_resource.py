"""MariaDB resource manager (participant_sdk/mysql_resource.py): the PostgreSQL participant's
contract over XA branches, over real HTTP with a real MariaDB server: eager prepare, the
record's rules, idempotent repeats, abort before work, batched phase 2, deferred enlistment,
and clear refusals."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from mysql_apps import serve_items
from sqlalchemy import Engine, text

from participant_sdk import ENLISTMENT_HEADER, TRANSACTION_HEADER, TxcClient, WorkRefused
from participant_sdk.errors import ParticipantError
from participant_sdk.mysql_resource import MySqlResourceManager
from tests.sdk import mariadb_fixture as mdb
from tests.sdk.mariadb_fixture import branches, items, record_state

# The MariaDB fixtures (one module under one name: one server per session).
mariadb, my_url, my_engine, make_my_engine = (
    mdb.mariadb,
    mdb.my_url,
    mdb.my_engine,
    mdb.make_my_engine,
)

THREAD_JOIN_S = 30.0
INNODB_TRX_CACHE_S = 0.15  # > InnoDB's 0.1 s refresh of information_schema.innodb_trx


def proto(url: str, action: str, txid: str, name: str = "svc") -> httpx.Response:
    body = json.dumps({"txid": txid, "participant": name})
    return httpx.post(
        f"{url}/txc/{action}", content=body, headers={"content-type": "application/json"}
    )


def manager(engine: Engine, coord) -> MySqlResourceManager:
    return MySqlResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )


def test_work_prepares_a_branch_then_commit(my_engine: Engine, coord) -> None:
    with serve_items(my_engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/items/a?value=7", headers=tx.headers)
        assert r.status_code == 200, r.text
        assert r.json()["xid"].startswith(f"'txc:{tx.txid}','svc',")
        # Prepared (XA RECOVER lists it), recorded, enlisted with vote yes, not yet visible.
        assert branches(my_engine) == [tx.txid]
        assert record_state(my_engine, "svc", tx.txid) == "prepared"
        assert coord.fake.txs[tx.txid].participants["svc"]["vote"] == "yes"
        assert items(my_engine) == {}
        tx.commit()
        assert items(my_engine) == {"a": 7} and branches(my_engine) == []
        assert record_state(my_engine, "svc", tx.txid) == "committed"
        assert [a for _, a, _ in coord.fake.phase2_replies] == ["commit"]
        # The async join does the same in one worker-thread call.
        tx2 = client.begin()
        assert httpx.post(f"{svc.url}/async-items/b", headers=tx2.headers).status_code == 200
        tx2.abort()
        assert items(my_engine) == {"a": 7} and branches(my_engine) == []


def test_abort_before_work_refuses_later_work(my_engine: Engine, coord) -> None:
    with serve_items(my_engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert proto(svc.url, "abort", tx.txid).status_code == 200
        assert record_state(my_engine, "svc", tx.txid) == "aborted"
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "aborted"
        assert items(my_engine) == {} and branches(my_engine) == []
        assert coord.fake.count("enlist") == 0


def test_abort_arriving_during_work_wins(my_engine: Engine, coord) -> None:
    rm = manager(my_engine, coord)
    with pytest.raises(WorkRefused) as exc, rm.work("tx-race") as w:
        w.connection.execute(text("INSERT INTO items VALUES ('a', 1)"))
        assert rm.abort("tx-race").status == 200
    assert exc.value.code == "aborted"
    assert items(my_engine) == {} and branches(my_engine) == []
    rm.close()


def test_repeats_and_contradictions(my_engine: Engine, coord) -> None:
    """Repeated commits and aborts answer 200 (concurrent repeats commit once); a commit
    after an abort is a heuristic abort and vice versa; an unknown txid is 404."""
    coord.fake.drive_phase2 = False
    with serve_items(my_engine, coord.url) as svc, TxcClient(coord.url) as client:
        c = client.begin()
        assert httpx.post(f"{svc.url}/items/c", headers=c.headers).status_code == 200
        statuses: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: statuses.append(proto(svc.url, "commit", c.txid).status_code)
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(THREAD_JOIN_S)
        assert statuses == [200] * 6
        a = client.begin()
        assert httpx.post(f"{svc.url}/items/x", headers=a.headers).status_code == 200
        for _ in range(3):
            assert proto(svc.url, "abort", a.txid).status_code == 200
        r = proto(svc.url, "commit", a.txid)
        assert r.status_code == 409 and r.json()["error"]["code"] == "heuristic_abort"
        r = proto(svc.url, "abort", c.txid)
        assert r.status_code == 409 and r.json()["error"]["code"] == "heuristic_commit"
        r = proto(svc.url, "commit", "never-seen")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_transaction"
        assert items(my_engine) == {"c": 1} and branches(my_engine) == []


def test_failures_roll_back_and_enlist_nothing(my_engine: Engine, coord) -> None:
    with serve_items(my_engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        assert httpx.post(f"{svc.url}/items/a?fail=true", headers=tx.headers).status_code == 422
        assert httpx.post(f"{svc.url}/local/dup").status_code == 200
        tx2 = client.begin()
        assert httpx.post(f"{svc.url}/items/dup", headers=tx2.headers).status_code == 500
        coord.fake.inject("enlist", 409)
        tx3 = client.begin()
        r = httpx.post(f"{svc.url}/items/b", headers=tx3.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "enlistment_refused"
        assert record_state(my_engine, "svc", tx3.txid) == "aborted"
        assert items(my_engine) == {"dup": 0} and branches(my_engine) == []
        assert coord.fake.count("enlist") == 1  # only tx3's, refused
        # One request per participant per txid.
        tx4 = client.begin()
        assert httpx.post(f"{svc.url}/items/c", headers=tx4.headers).status_code == 200
        r = httpx.post(f"{svc.url}/items/d", headers=tx4.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_prepared"
        tx4.commit()
        assert items(my_engine) == {"dup": 0, "c": 1}


def test_enlist_uncertain_is_kept_prepared_and_recovered(my_engine: Engine, coord) -> None:
    with serve_items(my_engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        coord.fake.inject("enlist", 503, times=10)
        r = httpx.post(f"{svc.url}/items/a", headers=tx.headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "enlistment_uncertain"
        assert branches(my_engine) == [tx.txid]
        coord.fake.set_outcome(tx.txid, "commit")
        assert svc.rm.resolve_in_doubt().actions() == {tx.txid: "committed"}
        assert items(my_engine) == {"a": 1} and branches(my_engine) == []


def test_concurrent_work_for_same_txid_prepares_once(my_engine: Engine, coord) -> None:
    """A second request of a txid while the first is still working: its XA START of the same
    xid fails at once (XAER_DUPID), and it is refused; the first one prepares."""
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    rm = manager(my_engine, coord)
    first_working, second_done = threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def worker(key: str) -> None:
        try:
            with rm.work(txid) as w:
                w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})
                if key == "a":
                    first_working.set()
                    second_done.wait(THREAD_JOIN_S)
            results[key] = "ok"
        except WorkRefused as e:
            results[key] = e.code
        finally:
            second_done.set() if key == "b" else None

    first = threading.Thread(target=worker, args=("a",))
    first.start()
    assert first_working.wait(THREAD_JOIN_S)
    worker("b")
    first.join(THREAD_JOIN_S)
    assert results == {"a": "ok", "b": "already_prepared"}
    assert branches(my_engine) == [txid]
    assert rm.commit(txid).status == 200
    assert items(my_engine) == {"a": 1}
    rm.close()


def test_batched_phase2_commits_many(my_engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    rm = manager(my_engine, coord)
    txids = [httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"] for _ in range(4)]
    for i, txid in enumerate(txids):
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": f"k{i}"})
    assert rm.abort(txids[3]).status == 200
    replies = rm.commit_many([*txids[:3], txids[3], "never-seen"])
    assert [replies[t].status for t in txids] == [200, 200, 200, 409]
    assert replies["never-seen"].status == 404
    assert sorted(items(my_engine)) == ["k0", "k1", "k2"] and branches(my_engine) == []
    assert rm.commit_many(txids[:3])[txids[0]].status == 200  # a repeated batch
    rm.close()


def test_deferred_enlistment_hands_over_a_signed_yes(my_engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(my_engine, coord.url, deferred_enlistment=True) as svc:
        headers = {TRANSACTION_HEADER: "lazy-1", "Txc-Enlist": "deferred"}
        r = httpx.post(f"{svc.url}/items/a", headers=headers)
        assert r.status_code == 200, r.text
        entry = json.loads(r.headers[ENLISTMENT_HEADER])
        assert entry["name"] == "svc" and entry["vote"] == "yes"
        assert coord.fake.count("enlist") == 0  # the client brings it to the commit
        assert branches(my_engine) == ["lazy-1"]
        # Its commit never comes: recovery asks, the unknown txid is a durable abort.
        assert svc.rm.resolve_in_doubt().actions() == {"lazy-1": "rolled_back"}
        assert branches(my_engine) == [] and items(my_engine) == {}


def test_bad_input_is_refused_clearly(my_engine: Engine, my_url: str, coord) -> None:
    rm = manager(my_engine, coord)
    with pytest.raises(ParticipantError) as exc, rm.work("x" * 61):
        pass
    assert exc.value.code == "invalid_txid" and exc.value.status == 400
    assert "at most 60" in exc.value.message
    with pytest.raises(ValueError, match="needs a MariaDB/MySQL engine"):
        MySqlResourceManager(
            "svc",
            _sqlite(),
            public_url="http://127.0.0.1:9",
        )
    rm.close()
    # A database without the record table: refused before any work.
    with my_engine.begin() as conn:
        conn.execute(text("DROP TABLE txc_participant_record"))
    rm = manager(my_engine, coord)
    with pytest.raises(ParticipantError) as exc, rm.work("t-schema"):
        pass
    assert exc.value.code == "schema_out_of_date" and exc.value.status == 503
    rm.close()


def _sqlite() -> Engine:
    from sqlalchemy import create_engine as sa_create_engine

    return sa_create_engine("sqlite://")


def test_missing_mariadb_is_a_clear_error(tmp_path, monkeypatch) -> None:
    """No MariaDB binaries: the embedded server says what to install (the fixtures turn this
    into a skip with the same message)."""
    from coordinator import embedded_mariadb

    monkeypatch.setattr(embedded_mariadb, "SERVER_NAMES", ("no-such-mariadbd",))
    with pytest.raises(embedded_mariadb.MariaDBNotInstalled, match="apt-get install"):
        embedded_mariadb.EmbeddedMariaDB(tmp_path).start()
    with pytest.raises(pytest.skip.Exception, match="MariaDB is not installed"):
        mdb.start_or_skip(tmp_path)


@pytest.mark.parametrize("level", ["READ COMMITTED", "SERIALIZABLE"])
def test_the_branch_runs_at_the_applications_isolation_level(
    my_engine: Engine, coord, level: str
) -> None:
    """No level is required (the SDK's checks use their own autocommit connection), and the
    level the application asked of its engine is the branch's. At SERIALIZABLE the branch's
    reads take shared locks; none of them touches the SDK's record table, so two txids
    prepared one after the other do not block each other's records."""
    coord.fake.drive_phase2 = False
    rm = manager(my_engine.execution_options(isolation_level=level), coord)
    seen = []
    for key in ("s1", "s2"):
        txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})
            # InnoDB's INFORMATION_SCHEMA transaction tables are a cache refreshed at most
            # every 0.1 s: a transaction this young may not be in it yet.
            time.sleep(INNODB_TRX_CACHE_S)
            seen.append(
                w.connection.execute(
                    text(
                        "SELECT trx_isolation_level FROM information_schema.innodb_trx "
                        "WHERE trx_mysql_thread_id = CONNECTION_ID()"
                    )
                ).scalar_one()
            )
        assert rm.commit(txid).status == 200
    assert seen == [level, level]
    assert items(my_engine) == {"s1": 1, "s2": 1}
    rm.close()
