"""Retention on a node, against real PostgreSQL: forgotten records leave the replicated state
for this node's history, tombstones keep their decisions through checkpoints, restarts and
snapshots, a purge hides tombstones at once (their rows go later), and a snapshot's size
follows what is live, not how many transactions ever finished."""

from __future__ import annotations

import time

import orjson
import pytest

from coordinator import history, snapshot_codec
from coordinator.commands import Begin, Command, Decide, Forget, PurgeTombstones, encode_batch
from coordinator.history import HistoryKeeper
from coordinator.log import SingleNodeLog
from coordinator.model import Outcome, TxState
from coordinator.raft.messages import Entry
from coordinator.retention import Retention
from coordinator.statemachine import Status
from tests.test_checkpoint import _commit, _db, _entries
from tests.test_raft_shell import close, make_log, node_db

__all__ = ["node_db"]  # the fixture, imported for pytest


def _entry(index: int, *cmds: Command) -> Entry:
    return Entry(index, 1, data=encode_batch(list(cmds)))


async def test_a_forgotten_record_leaves_a_tombstone_and_its_history(node_db: str) -> None:
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "t1"))
    await _commit(rl, [_entry(5, Forget(txid="t1", at=time.time()))])
    t = await rl.store.get("t1")
    assert t is not None and t.forgotten_at is not None and t.outcome is Outcome.COMMIT
    await rl.checkpoint.flush()
    # The record left the replicated state; its tombstone and its full record are written.
    assert _db(node_db, "SELECT txid FROM txc_transactions") == []
    assert _db(node_db, "SELECT txid, outcome FROM txc_tombstones") == [("t1", "commit")]
    [(state, doc)] = _db(node_db, "SELECT state, doc FROM txc_archive")
    assert state == "committed" and [p["name"] for p in doc["participants"]] == ["bank-a"]
    kept = await history.archived(rl.engine, "t1")
    assert kept is not None and kept.txn.participants[0].name == "bank-a"
    # Its timeline stays too (with the forgetting as its last event).
    kinds = [e["kind"] for e in await rl.store.history("t1")]
    assert kinds == ["begin", "enlist", "decide", "ack", "forget"]
    await close(rl)

    # After a restart the tombstone is read from the database (a cold lookup), and a begin
    # with the same txid (an idempotency key reused) finds the decided transaction.
    again, _ = await make_log(node_db)
    await again.store.load_inflight()
    stone = await again.store.get("t1")
    assert stone is not None and stone.state is TxState.COMMITTED and stone.participants == []
    results, changed, _rows = await again.store.apply_batch(
        again.apply_db,
        [_log_entry(6, Begin(txid="t1", at=time.time(), idempotency_key="k"))],
    )
    assert results[0].status is Status.OK and not changed
    assert results[0].txn is not None and results[0].txn.outcome is Outcome.COMMIT
    await close(again)


def _log_entry(index: int, cmd: Command):  # type: ignore[no-untyped-def]
    from coordinator.store import LogEntry

    return LogEntry(index, 1, cmd)


async def test_a_purge_hides_tombstones_before_their_rows_go(node_db: str) -> None:
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "t1"))
    now = time.time()
    await _commit(rl, [_entry(5, Forget(txid="t1", at=now))])
    await rl.checkpoint.flush()
    await _commit(rl, [_entry(6, PurgeTombstones(txid="", at=now, before=now + 1))])
    # Unknown at once, in memory and through the database, although the row is still there.
    assert rl.store.tombstone_horizon == now + 1
    assert await rl.store.get("t1") is None
    assert _db(node_db, "SELECT count(*) FROM txc_tombstones") == [(1,)]
    # Presumed abort now records a new transaction under the old txid (documented).
    await _commit(rl, [_entry(7, Decide(txid="t1", at=now + 2, outcome=Outcome.ABORT))])
    t = await rl.store.get("t1")
    assert t is not None and t.outcome is Outcome.ABORT and t.forgotten_at is None
    await rl.checkpoint.flush()
    assert _db(node_db, "SELECT tombstone_horizon FROM txc_applied") == [(now + 1,)]
    # The history keeper deletes the rows of purged tombstones (under the checkpointed
    # horizon); the old record's history stays for its own retention.
    deleted = await HistoryKeeper(rl.engine, history_retention_days=1).run_once()
    assert deleted == (0, 1)
    assert _db(node_db, "SELECT count(*) FROM txc_tombstones") == [(0,)]
    assert _db(node_db, "SELECT txid, state FROM txc_archive") == [("t1", "committed")]
    await close(rl)


async def test_history_is_deleted_after_its_retention_in_bounded_batches(
    node_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rl, _ = await make_log(node_db)
    index = 1
    for n in range(5):
        await _commit(rl, _entries(index, f"t{n}"))
        index += 4
    day = 86_400.0
    old = time.time() - 3 * day
    for n in range(5):
        # Three forgotten three days ago, two just now.
        at = old if n < 3 else time.time()
        await _commit(rl, [_entry(index, Forget(txid=f"t{n}", at=at))])
        index += 1
    await rl.checkpoint.flush()
    batches: list[int] = []
    real = history.delete_old

    async def counting(*args, **kw):  # type: ignore[no-untyped-def]
        kw["batch"] = 2
        n = await real(*args, **kw)
        batches.append(n)
        return n

    monkeypatch.setattr(history, "delete_old", counting)
    keeper = HistoryKeeper(rl.engine, history_retention_days=2)
    assert await keeper.run_once() == (3, 0)
    assert sorted(r[0] for r in _db(node_db, "SELECT txid FROM txc_archive")) == ["t3", "t4"]
    # Their timelines went with them; the others' stay.
    timelines = {r[0] for r in _db(node_db, "SELECT DISTINCT txid FROM txc_history")}
    assert timelines == {"t3", "t4"}
    await close(rl)


async def test_a_snapshot_does_not_grow_with_finished_transactions(node_db: str) -> None:
    """What a snapshot holds is what is live: records in flight or finished within the
    retention, and tombstones within theirs. Finished, forgotten, purged transactions cost
    it nothing, however many."""
    rl, _ = await make_log(node_db)
    rl.snapshot_entries = 10**9  # no applier task runs here: every entry is applied inline
    await _commit(rl, [_entry(1, Begin(txid="live", at=time.time(), timeout_s=600))])
    index = 2
    sizes: list[tuple[int, int]] = []
    for k, batch in enumerate((20, 200)):
        at = 1000.0 * (k + 1)  # each batch forgotten after the previous purge's horizon
        for n in range(batch):
            txid = f"b{batch}-{n}"
            await _commit(rl, _entries(index, txid))
            index += 4
            await _commit(rl, [_entry(index, Forget(txid=txid, at=at))])
            index += 1
        async with rl.checkpoint.frozen(), rl.engine.begin() as conn:
            with_tombstones, _ = await rl.store.dump(conn)
        await _commit(rl, [_entry(index, PurgeTombstones(txid="", at=at, before=at + 1))])
        index += 1
        async with rl.checkpoint.frozen(), rl.engine.begin() as conn:
            data, records = await rl.store.dump(conn)
        doc = orjson.loads(snapshot_codec.unpack(data))
        assert doc["tombstones"] == [] and [t["txid"] for t in doc["transactions"]] == ["live"]
        assert records == 1
        sizes.append((len(data), len(with_tombstones)))
    (small, _), (large, large_t) = sizes
    # 10x the finished transactions, and the purged snapshot is the same: only the live record
    # (and the horizon, whose digits differ).
    assert abs(large - small) <= 8, sizes
    # Before the purge, each forgotten transaction costs only its tombstone: a few tens of
    # compressed bytes, not its record.
    per_tombstone = (large_t - large) / 200
    assert per_tombstone < 60, sizes
    await close(rl)


async def test_a_snapshot_taken_after_forgetting_restores_the_decisions(
    node_db: str,
    db_url: str,
    pg,  # type: ignore[no-untyped-def]
) -> None:
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "gone"))
    await _commit(rl, _entries(5, "kept"))
    now = time.time()
    await _commit(rl, [_entry(9, Forget(txid="gone", at=now))])
    await _commit(rl, [_entry(10, PurgeTombstones(txid="", at=now, before=now - 10))])
    async with rl.checkpoint.frozen(), rl.engine.begin() as conn:
        data, records = await rl.store.dump(conn)
    assert records == 2
    await close(rl)

    from coordinator import migrate

    other = pg.new_database("restored")
    migrate.upgrade(other, "coordinator")
    fresh, _ = await make_log(other)
    async with fresh.engine.begin() as conn:
        live, horizon, extra = await fresh.store.restore(conn, data)
    fresh.store.reset_inflight(live, horizon)
    assert horizon == now - 10 and set(live) == {"kept"} and extra == {}
    stone = await fresh.store.get("gone")
    assert stone is not None and stone.forgotten_at == now and stone.outcome is Outcome.COMMIT
    assert _db(other, "SELECT tombstone_horizon FROM txc_applied") == [(now - 10,)]
    await close(fresh)


async def test_the_leader_forgets_only_finished_records_past_their_retention(
    db_url: str,
) -> None:
    """Retention through a real (single-node) log: a pass forgets what finished more than
    `retention_s` ago, never an unfinished record whatever its age, and purges tombstones
    past theirs."""
    from coordinator import migrate
    from coordinator.db import make_engine
    from coordinator.store import Store

    migrate.upgrade(db_url, "coordinator")
    engine = make_engine(db_url)
    store = Store(engine)
    log = SingleNodeLog(engine, store, node_id="n1", advertise_url="http://n1")
    await log.start()
    clock = [1000.0]
    try:
        for txid, at in (("old-done", 0.0), ("new-done", 990.0), ("old-open", 0.0)):
            await log.propose([Begin(txid=txid, at=at, timeout_s=86_000)])
            if txid.endswith("done"):
                await log.propose([Decide(txid=txid, at=at, outcome=Outcome.ABORT)])
        retention = Retention(
            log, store, retention_s=60, tombstone_retention_s=600, clock=lambda: clock[0]
        )
        assert await retention.run_once() == 1
        stone = await store.get("old-done")
        assert stone is not None and stone.forgotten_at == 1000.0
        assert (await store.get("new-done")).forgotten_at is None  # type: ignore[union-attr]
        assert (await store.get("old-open")).state is TxState.ACTIVE  # type: ignore[union-attr]
        assert await retention.run_once() == 0  # nothing more is due
        clock[0] = 2000.0
        assert await retention.run_once() == 1  # new-done is due now
        # One purge, to 1400, past old-done's tombstone (1000); none before (nothing was due).
        assert retention.purges == 1 and store.tombstone_horizon == 2000.0 - 600
        assert await store.get("old-done") is None
        assert (await store.get("new-done")).forgotten_at == 2000.0  # type: ignore[union-attr]
    finally:
        await log.stop()
        await engine.dispose()


async def test_a_standalone_node_keeps_only_the_end_of_its_log(db_url: str) -> None:
    """Its entries are applied in the statement that writes them: none is needed to recover,
    and it keeps the last ones for inspection. A restart still finds where it was."""
    from coordinator import migrate
    from coordinator.db import make_engine
    from coordinator.store import Store

    migrate.upgrade(db_url, "coordinator")
    engine = make_engine(db_url)
    log = SingleNodeLog(engine, Store(engine), node_id="n1", advertise_url="http://n1")
    await log.start()
    try:
        for n in range(30):
            await log.propose([Begin(txid=f"t{n}", at=time.time(), timeout_s=60)])
        keeper = HistoryKeeper(engine, history_retention_days=1, standalone_log_keep=10)
        await keeper.run_once()
        rows = _db(db_url, 'SELECT min("index"), max("index"), count(*) FROM txc_log')
        assert rows == [(21, 30, 10)]
    finally:
        await log.stop()
    again = SingleNodeLog(engine, Store(engine), node_id="n1", advertise_url="http://n1")
    await again.start()
    try:
        assert again.last_index == 30
        assert (await again.propose([Begin(txid="t30", at=time.time(), timeout_s=60)]))[0].ok
    finally:
        await again.stop()
        await engine.dispose()
