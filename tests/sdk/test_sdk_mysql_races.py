"""The MariaDB participant's race windows: the lock-free phase-2 commit against an abort, a
request between its XA PREPARE and its record (nobody else may act on the txid meanwhile),
the recovery loop at start-up, and phase 2 through `POST /txc/batch`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mysql_apps import serve_items
from sqlalchemy import Engine, text

from participant_sdk import mysql_record
from participant_sdk.mysql_resource import MySqlResourceManager
from tests.sdk import mariadb_fixture as mdb
from tests.sdk.mariadb_fixture import branches, items, record_state

mariadb, my_url, my_engine, make_my_engine = (
    mdb.mariadb,
    mdb.my_url,
    mdb.my_engine,
    mdb.make_my_engine,
)

RACE_ROUNDS = 6  # commit/abort races per test (each one a fresh txid)
BLOCKED_CHECK_S = 0.5  # how long a step that must wait for the txid lock is watched
THREAD_JOIN_S = 30.0
POLL_TIMEOUT_S = 20.0
POLL_STEP_S = 0.05


@pytest.fixture
def rm(my_engine: Engine, coord: Any) -> Iterator[MySqlResourceManager]:
    coord.fake.drive_phase2 = False
    manager = MySqlResourceManager(
        "svc", my_engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    yield manager
    manager.close()


def _begin(coord: Any) -> str:
    return str(httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"])


def _do_work(rm: MySqlResourceManager, txid: str, key: str) -> None:
    with rm.work(txid) as w:
        w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})


def _commit_and_abort_at_once(rm: MySqlResourceManager, txid: str) -> dict[str, int]:
    start = threading.Barrier(2)
    replies: dict[str, int] = {}

    def run(action: str) -> None:
        start.wait()
        handler: Callable[[str], Any] = getattr(rm, action)
        replies[action] = handler(txid).status

    threads = [threading.Thread(target=run, args=(a,)) for a in ("commit", "abort")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_JOIN_S)
    return replies


def test_concurrent_commit_and_abort_pick_one_outcome(
    my_engine: Engine, coord: Any, rm: MySqlResourceManager
) -> None:
    for i in range(RACE_ROUNDS):
        txid = _begin(coord)
        _do_work(rm, txid, f"k{i}")
        replies = _commit_and_abort_at_once(rm, txid)
        state = record_state(my_engine, "svc", txid)
        if state == "committed":
            assert replies == {"commit": 200, "abort": 409}
            assert f"k{i}" in items(my_engine)
        else:
            assert state == "aborted" and replies == {"commit": 409, "abort": 200}
            assert f"k{i}" not in items(my_engine)
        assert branches(my_engine) == []


def test_nobody_acts_on_a_txid_between_its_prepare_and_its_record(
    my_engine: Engine, coord: Any, rm: MySqlResourceManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a request sits between XA PREPARE and its record (holding the txid lock), an
    abort and recovery wait; afterwards the abort wins cleanly and recovery does not take the
    live request's branch for an orphan."""
    txid = _begin(coord)
    real = mysql_record.insert_if_absent
    during: dict[str, Any] = {}

    def paused(*args: Any, **kwargs: Any) -> bool:
        if args[2] == txid and args[3] == "prepared":
            abort = threading.Thread(target=lambda: during.update(abort=rm.abort(txid).status))
            recover = threading.Thread(
                target=lambda: during.update(recovery=rm.resolve_in_doubt().actions())
            )
            abort.start()
            recover.start()
            time.sleep(BLOCKED_CHECK_S)
            during["blocked"] = abort.is_alive() and recover.is_alive()
            during["threads"] = (abort, recover)
        return real(*args, **kwargs)

    monkeypatch.setattr(mysql_record, "insert_if_absent", paused)
    _do_work(rm, txid, "live")  # the request itself succeeds: its record landed first
    for t in during["threads"]:
        t.join(THREAD_JOIN_S)
    assert during["blocked"], "abort and recovery did not wait for the txid lock"
    assert during["abort"] == 200
    assert during["recovery"].get(txid) in (None, "changed_meanwhile", "rolled_back")
    assert record_state(my_engine, "svc", txid) == "aborted"
    assert branches(my_engine) == [] and items(my_engine) == {}


def test_recovery_loop_resolves_at_start_up(my_url: str, my_engine: Engine, coord: Any) -> None:
    """A participant that died with a prepared, committed-at-the-coordinator branch: the
    next instance's recovery loop (install(app)) commits it on its first pass."""
    from test_sdk_mysql_recovery import run_and_kill

    coord.fake.drive_phase2 = False
    txid = _begin(coord)
    run_and_kill(my_url, coord, txid)
    coord.fake.set_outcome(txid, "commit")
    with serve_items(my_engine, coord.url, recovery=True, recovery_interval_s=0.2):
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while branches(my_engine) and time.monotonic() < deadline:
            time.sleep(POLL_STEP_S)
    assert branches(my_engine) == [] and items(my_engine) == {txid[:8]: 1}


def test_phase2_batch_endpoint(my_engine: Engine, coord: Any) -> None:
    """`POST /txc/batch`: commits decided together, an abort, and an unknown txid, each
    answered as its own request would be."""
    coord.fake.drive_phase2 = False
    with serve_items(my_engine, coord.url) as svc:
        txids = [_begin(coord) for _ in range(3)]
        for i, txid in enumerate(txids):
            headers = {"Txc-Transaction": txid}
            assert httpx.post(f"{svc.url}/items/b{i}", headers=headers).status_code == 200
        body = {
            "participant": "svc",
            "messages": [
                {"action": "commit", "txid": txids[0]},
                {"action": "commit", "txid": txids[1]},
                {"action": "abort", "txid": txids[2]},
                {"action": "commit", "txid": "never-seen"},
            ],
        }
        r = httpx.post(
            f"{svc.url}/txc/batch",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert [x["status"] for x in r.json()["results"]] == [200, 200, 200, 404]
        assert items(my_engine) == {"b0": 1, "b1": 1} and branches(my_engine) == []
