"""`join_async()`: the joined unit of an `async def` endpoint in one worker-thread call, with
the same outcomes as `join()` (prepare + enlist, refusals, rollback on failure), over real
HTTP with a real PostgreSQL server."""

from __future__ import annotations

import logging

import httpx
from sdk_apps import serve_items
from sdk_helpers import items, prepared_gids, record_state
from sqlalchemy import Engine
from test_sdk_pg_resource import proto

from participant_sdk import TRANSACTION_HEADER, PgResourceManager, TxcClient, make_gid


def test_async_join_prepares_enlists_then_commits(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/async-items/a?value=7", headers=tx.headers)
        assert r.status_code == 200, r.text
        gid = make_gid("svc", tx.txid)
        assert r.json() == {"txid": tx.txid, "gid": gid}
        assert prepared_gids(engine) == [gid]
        assert record_state(engine, "svc", tx.txid) == "prepared"
        assert coord.fake.txs[tx.txid].participants["svc"] == {
            "url": f"{svc.url}/txc",
            "vote": "yes",
        }
        assert items(engine) == {}
        tx.commit()
        assert items(engine) == {"a": 7} and prepared_gids(engine) == []
        assert record_state(engine, "svc", tx.txid) == "committed"


def test_async_join_refuses_after_abort_and_second_request(engine: Engine, coord) -> None:
    coord.fake.drive_phase2 = False
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        aborted = client.begin()
        assert proto(svc.url, "abort", aborted.txid).status_code == 200
        r = httpx.post(f"{svc.url}/async-items/a", headers=aborted.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "aborted"
        tx = client.begin()
        assert httpx.post(f"{svc.url}/async-items/b", headers=tx.headers).status_code == 200
        r = httpx.post(f"{svc.url}/async-items/c", headers=tx.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "already_prepared"
        assert prepared_gids(engine) == [make_gid("svc", tx.txid)]
        assert coord.fake.count("enlist") == 1


def test_async_join_business_failure_rolls_back(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        tx = client.begin()
        r = httpx.post(f"{svc.url}/async-items/a?fail=true", headers=tx.headers)
        assert r.status_code == 422
        assert prepared_gids(engine) == [] and items(engine) == {}
        assert record_state(engine, "svc", tx.txid) is None
        assert coord.fake.count("enlist") == 0


def test_async_join_enlistment_refused_and_uncertain(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        refused = client.begin()
        coord.fake.inject("enlist", 409)
        r = httpx.post(f"{svc.url}/async-items/a", headers=refused.headers)
        assert r.status_code == 409 and r.json()["error"]["code"] == "enlistment_refused"
        assert record_state(engine, "svc", refused.txid) == "aborted"
        uncertain = client.begin()
        coord.fake.inject("enlist", 503, times=10)
        r = httpx.post(f"{svc.url}/async-items/b", headers=uncertain.headers)
        assert r.status_code == 503 and r.json()["error"]["code"] == "enlistment_uncertain"
        assert prepared_gids(engine) == [make_gid("svc", uncertain.txid)]


def test_async_join_headers_local_work_and_single_use(engine: Engine, coord) -> None:
    with serve_items(engine, coord.url) as svc, TxcClient(coord.url) as client:
        r = httpx.post(f"{svc.url}/async-items/a")
        assert r.status_code == 400 and r.json()["error"]["code"] == "missing_transaction"
        r = httpx.post(f"{svc.url}/async-items/a", headers={TRANSACTION_HEADER: "bad'txid"})
        assert r.status_code == 400
        r = httpx.post(f"{svc.url}/async-local/z")
        assert r.status_code == 200 and r.json()["txid"] is None
        assert items(engine) == {"z": 0}
        # No run(): no part in the transaction.
        tx = client.begin()
        r = httpx.post(f"{svc.url}/async-items/s?skip=true", headers=tx.headers)
        assert r.status_code == 200 and coord.fake.count("enlist") == 0
        # A second run() in one request is a programming error: the first unit stands.
        tx2 = client.begin()
        r = httpx.post(f"{svc.url}/async-items/t?twice=true", headers=tx2.headers)
        assert r.status_code == 500
        assert prepared_gids(engine) == [make_gid("svc", tx2.txid)]


def test_quiet_protocol_access_log_drops_only_successful_protocol_lines(engine: Engine) -> None:
    rm = PgResourceManager("svc", engine, public_url="http://127.0.0.1:1")
    logger = logging.getLogger("test.access")
    rm.quiet_protocol_access_log("test.access")
    rm.quiet_protocol_access_log("test.access")  # idempotent
    assert len(logger.filters) == 1
    (quiet,) = logger.filters

    def line(path: str, status: int) -> logging.LogRecord:
        args = ("127.0.0.1:5000", "POST", path, "1.1", status)
        return logging.LogRecord("test.access", logging.INFO, "", 0, "%s %s %s %s %d", args, None)

    assert not quiet.filter(line("/txc/commit", 200))
    assert quiet.filter(line("/txc/commit", 503))  # failures stay visible
    assert quiet.filter(line("/transfer/debit", 200))  # business requests too
    assert quiet.filter(line("/txcx/commit", 200))
    assert quiet.filter(logging.LogRecord("test.access", logging.INFO, "", 0, "hi", None, None))
    logger.removeFilter(quiet)
    rm.close()
