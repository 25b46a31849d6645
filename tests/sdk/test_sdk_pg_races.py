"""The PostgreSQL participant's race and crash windows (participant_sdk/pg_resource.py): the
lock-free phase-2 commit against aborts and repeats, a crash between its two steps, and the
window of a work request between its PREPARE and its record, where nobody else may act on
the (shared) gid."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sdk_helpers import items, prepared_gids, record_state
from sqlalchemy import Engine, event, text

from participant_sdk import PgResourceManager, WorkRefused, make_gid, record
from participant_sdk import pg_fastpath as fast

RACE_ROUNDS = 10  # commit/abort races run per test (each one a fresh txid)
BLOCKED_CHECK_S = 0.5  # how long a step that must wait for the txid lock is watched
THREAD_JOIN_S = 30.0


@pytest.fixture
def rm(engine: Engine, coord: Any) -> Iterator[PgResourceManager]:
    coord.fake.drive_phase2 = False
    manager = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    yield manager
    manager.close()


def _begin(coord: Any) -> str:
    import httpx

    return str(httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"])


def _do_work(rm: PgResourceManager, txid: str, key: str) -> None:
    with rm.work(txid) as w:
        w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})


def _commit_and_abort_at_once(rm: PgResourceManager, txid: str) -> dict[str, int]:
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
    engine: Engine, coord: Any, rm: PgResourceManager
) -> None:
    """The commit decides in the record without the txid lock; the abort decides in it too,
    under the lock. Whatever the interleaving, one of them wins and the other reports the
    heuristic outcome; the data follows the winner."""
    for i in range(RACE_ROUNDS):
        txid = _begin(coord)
        _do_work(rm, txid, f"k{i}")
        replies = _commit_and_abort_at_once(rm, txid)
        state = record_state(engine, "svc", txid)
        if state == "committed":
            assert replies == {"commit": 200, "abort": 409}
            assert f"k{i}" in items(engine)
        else:
            assert state == "aborted"
            assert replies == {"commit": 409, "abort": 200}
            assert f"k{i}" not in items(engine)
        assert prepared_gids(engine) == []


def _finish_committed(rm: PgResourceManager, txid: str, finisher: str) -> None:
    """Whatever meets a txid whose record says 'committed' next: a repeated phase-2 commit,
    an abort (refused: a heuristic), or recovery (which commits without asking)."""
    if finisher == "commit":
        assert rm.commit(txid).status == 200
    elif finisher == "abort":
        reply = rm.abort(txid)
        assert reply.status == 409 and reply.body["error"]["code"] == "heuristic_commit"
    else:
        assert rm.resolve_in_doubt().actions() == {txid: "committed"}


def test_commit_interrupted_after_its_record_is_finished(
    engine: Engine, coord: Any, rm: PgResourceManager
) -> None:
    """A crash between the commit's record update and COMMIT PREPARED leaves 'committed' with
    the work still prepared: a repeated commit finishes it, an abort does not undo it, and
    recovery finishes it without asking the coordinator."""
    for finisher in ("commit", "abort", "recovery"):
        txid = _begin(coord)
        _do_work(rm, txid, finisher)
        with fast.autocommit_driver(engine) as driver:
            assert fast.claim_commit(driver, "svc", txid)  # ... and the process dies here
        assert prepared_gids(engine) == [make_gid("svc", txid)]
        _finish_committed(rm, txid, finisher)
        assert prepared_gids(engine) == []
        assert items(engine)[finisher] == 1
        assert record_state(engine, "svc", txid) == "committed"
    assert coord.fake.count("outcome") == 0


def test_commit_of_a_record_left_prepared_by_an_older_version(
    engine: Engine, coord: Any, rm: PgResourceManager
) -> None:
    """Older versions committed first and recorded after: 'prepared' with nothing prepared
    means committed, and the fast path answers so."""
    txid = _begin(coord)
    _do_work(rm, txid, "old")
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(f"COMMIT PREPARED '{make_gid('svc', txid)}'")
    assert record_state(engine, "svc", txid) == "prepared"
    assert rm.commit(txid).status == 200
    assert record_state(engine, "svc", txid) == "committed"
    assert items(engine) == {"old": 1}


@pytest.fixture
def pause_before_record(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Run `during` in a thread while a work request sits between its PREPARE and its
    record insert (holding the txid lock); the request goes on after BLOCKED_CHECK_S."""

    def install(during: Callable[[], None]) -> None:
        real = fast.record_prepared_and_unlock

        def paused(*args: Any, **kwargs: Any) -> bool:
            threading.Thread(target=during, daemon=True).start()
            threading.Event().wait(BLOCKED_CHECK_S)
            return real(*args, **kwargs)

        monkeypatch.setattr(fast, "record_prepared_and_unlock", paused)

    return install


def test_repeated_commit_never_commits_a_refused_second_request(
    engine: Engine,
    coord: Any,
    rm: PgResourceManager,
    pause_before_record: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a txid committed here, a second request for it can prepare the same gid before
    it finds the record (when the record landed just after the request's checks) and then
    rolls back. A repeated commit arriving in that window must wait for the txid lock rather
    than commit the refused request's work."""
    txid = _begin(coord)
    _do_work(rm, txid, "first")
    assert rm.commit(txid).status == 200
    # Make both of the second request's checks miss the record, as in that interleaving.
    real_start, real_lock = fast.work_start, fast.lock_and_state

    def start_misses(*args: Any) -> tuple[str, str | None]:
        isolation, _ = real_start(*args)
        return isolation, None

    def lock_then_miss(*args: Any) -> tuple[None, int]:
        _, xid = real_lock(*args)
        return None, xid

    monkeypatch.setattr(fast, "work_start", start_misses)
    monkeypatch.setattr(fast, "lock_and_state", lock_then_miss)
    replies: list[int] = []
    done = threading.Event()

    def repeat_commit() -> None:
        replies.append(rm.commit(txid).status)
        done.set()

    pause_before_record(repeat_commit)
    with pytest.raises(WorkRefused) as exc:
        _do_work(rm, txid, "second")
    assert exc.value.code == "already_prepared"
    assert done.wait(THREAD_JOIN_S)
    assert replies == [200]
    assert items(engine) == {"first": 1}
    assert prepared_gids(engine) == []
    assert record_state(engine, "svc", txid) == "committed"


def test_abort_racing_the_record_insert_wins_cleanly(
    engine: Engine, coord: Any, rm: PgResourceManager, pause_before_record: Any
) -> None:
    """An abort arriving while the work sits between PREPARE and its record waits for the
    lock, then finds the record and rolls the work back (record 'aborted' first)."""
    txid = _begin(coord)
    replies: list[int] = []
    done = threading.Event()

    def abort() -> None:
        replies.append(rm.abort(txid).status)
        done.set()

    pause_before_record(abort)
    _do_work(rm, txid, "w")  # prepared, recorded and enlisted before the abort ran
    assert done.wait(THREAD_JOIN_S)
    assert replies == [200]
    assert record_state(engine, "svc", txid) == "aborted"
    assert prepared_gids(engine) == [] and items(engine) == {}
    reply = rm.commit(txid)
    assert reply.status == 409 and reply.body["error"]["code"] == "heuristic_abort"


def test_recovery_does_not_take_a_live_request_for_an_orphan(
    engine: Engine, coord: Any, rm: PgResourceManager, pause_before_record: Any
) -> None:
    """Recovery sees the request's prepared transaction without a record (an orphan, by the
    look of it); rolling it back must wait for the lock, and then it is no orphan."""
    txid = _begin(coord)
    reports: list[dict[str, str]] = []
    done = threading.Event()

    def recover() -> None:
        reports.append(rm.resolve_in_doubt().actions())
        done.set()

    pause_before_record(recover)
    _do_work(rm, txid, "live")
    assert done.wait(THREAD_JOIN_S)
    assert reports == [{txid: "changed_meanwhile"}]
    assert prepared_gids(engine) == [make_gid("svc", txid)]
    assert record_state(engine, "svc", txid) == "prepared"
    assert rm.commit(txid).status == 200
    assert items(engine) == {"live": 1}


def _prepare_stray_duplicate(engine: Engine, gid: str, key: str) -> None:
    """What a duplicate request of a finished transaction leaves when its process dies
    between its PREPARE and the record check that would have rolled it back: its own work,
    prepared under the (shared) gid of the committed original, and no record of its own.
    (It could get that far: its record check rides in the statement that waited for the txid
    lock, whose snapshot may predate the original's record; if it is then descheduled until
    the original's phase 2 is over, the gid is free again.)"""
    with engine.connect() as conn:
        driver = fast.driver_of(conn.connection.dbapi_connection)
        conn.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})
        assert fast.prepare_transaction(driver, gid)
        conn.invalidate()  # the session dies without rolling anything back


def test_a_duplicates_work_prepared_under_a_committed_gid_is_never_committed(
    engine: Engine, coord: Any, rm: PgResourceManager
) -> None:
    """The record says 'committed' and a transaction with its gid is prepared: normally the
    original's, left by a crash between the commit's two steps (committed by every path, see
    above); here another request's. The record knows which prepared transaction it is about
    (its xid), so the stray one is rolled back by whichever path meets it first."""
    for finisher in ("commit", "abort", "recovery"):
        txid = _begin(coord)
        _do_work(rm, txid, finisher)
        assert rm.commit(txid).status == 200  # the original: prepared, recorded, committed
        gid = make_gid("svc", txid)
        _prepare_stray_duplicate(engine, gid, f"dup-{finisher}")
        assert prepared_gids(engine) == [gid]
        _finish_committed(rm, txid, finisher)  # a repeated commit, an abort, or recovery
        assert prepared_gids(engine) == []
        assert items(engine)[finisher] == 1 and f"dup-{finisher}" not in items(engine)
        assert record_state(engine, "svc", txid) == "committed"


def test_recovery_works_on_a_database_before_p0004(engine: Engine, coord: Any) -> None:
    """Recovery (and `txc recover`) may meet a database the p0004 migration has not reached:
    no xid is known there, and a commit interrupted after its record is finished as before."""
    coord.fake.drive_phase2 = False
    setup = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    txid = _begin(coord)
    _do_work(setup, txid, "old-db")  # written by the current code, table still there
    setup.close()
    with fast.autocommit_driver(engine) as driver:
        assert fast.claim_commit(driver, "svc", txid)  # ... and the process dies here
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE txc_participant_xid"))
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    try:
        assert rm.resolve_in_doubt().actions() == {txid: "committed"}
        assert items(engine) == {"old-db": 1} and prepared_gids(engine) == []
    finally:
        rm.close()


def _lock_is_free(engine: Engine, txid: str) -> bool:
    """Whether another session can take the txid lock at once (and gives it back)."""
    with engine.connect() as conn:
        key = record.lock_key("svc", txid)
        taken = conn.execute(
            text("SELECT pg_try_advisory_lock(:cls, hashtext(:key))"),
            {"cls": record.ADVISORY_LOCK_CLASS, "key": key},
        ).scalar_one()
        if taken:
            record.release(conn, "svc", txid)
        conn.commit()
        return bool(taken)


def test_a_lock_that_cannot_be_taken_prepares_nothing(
    engine: Engine, coord: Any, rm: PgResourceManager
) -> None:
    """While another session holds the txid lock, a work request whose statement timeout
    runs out waiting for it is refused (work_failed) with nothing prepared or recorded, and
    its session is dropped (no lock of it lingers); the txid can do its work afterwards."""
    txid = _begin(coord)
    dropped: list[object] = []
    event.listen(engine, "invalidate", lambda conn, rec, exc: dropped.append(exc))
    with record.txid_lock(engine, "svc", txid):
        with pytest.raises(WorkRefused) as exc, rm.work(txid) as w:
            w.connection.execute(text("SET LOCAL statement_timeout = '200ms'"))
            w.connection.execute(text("INSERT INTO items VALUES ('blocked', 1)"))
        assert exc.value.code == "work_failed"
        assert "could not take the transaction's lock" in exc.value.message
    assert len(dropped) == 1  # the work's session, not returned to the pool
    assert prepared_gids(engine) == []
    assert record_state(engine, "svc", txid) is None
    assert _lock_is_free(engine, txid)
    assert items(engine) == {}
    _do_work(rm, txid, "later")
    assert rm.commit(txid).status == 200
    assert items(engine) == {"later": 1}
