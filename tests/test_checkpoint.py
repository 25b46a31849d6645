"""Checkpoints (coordinator/checkpoint.py), against real PostgreSQL: a Raft node applies
committed commands in memory and writes the applied state behind the log. Reads never see
less than what was applied, a crash before a checkpoint loses nothing (the log has it), a
failed checkpoint keeps its rows, and log compaction never drops an entry the database's
applied state does not hold."""

from __future__ import annotations

import random
import time

import orjson
import psycopg
import pytest

from coordinator import checkpoint, replicated_log, schema, snapshot_codec
from coordinator.commands import Ack, Begin, Decide, Enlist, encode_batch
from coordinator.model import Outcome, TxState, Vote
from coordinator.raft.core import RaftNode
from coordinator.raft.messages import Entry, HardState
from coordinator.raft.storage import load
from coordinator.replicated_log import snapshot_members
from coordinator.store import ListFilter
from tests.test_raft_shell import PEERS, _dsn, close, make_log, node_db, ready

__all__ = ["node_db"]  # the fixture, imported for pytest


def _entries(first: int, txid: str) -> list[Entry]:
    """A transaction's life as log entries from `first` on: begin, enlist, decide, ack."""
    now = time.time()
    cmds = [
        [Begin(txid=txid, at=now, timeout_s=60)],
        [Enlist(txid=txid, at=now, name="bank-a", url="http://127.0.0.1:1/txc", vote=Vote.YES)],
        [Decide(txid=txid, at=now, outcome=Outcome.COMMIT)],
        [Ack(txid=txid, at=now, name="bank-a")],
    ]
    return [Entry(first + i, 1, data=encode_batch(c)) for i, c in enumerate(cmds)]


def _db(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(_dsn(url)) as c:
        return list(c.execute(sql).fetchall())


async def _commit(rl, entries: list[Entry]) -> None:  # type: ignore[no-untyped-def]
    await rl._process(ready(entries=entries, hard_state=HardState(1, 2, 0)))
    await rl._process(ready(hard_state=HardState(1, 2, entries[-1].index), committed=entries))


async def test_applied_state_is_read_from_memory_and_written_once_per_checkpoint(
    node_db: str,
) -> None:
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "t1"))
    assert rl.applied == 4 and rl.checkpoint.index == 0
    # Not in the database yet, and every read sees it.
    assert _db(node_db, "SELECT txid FROM txc_transactions") == []
    t = await rl.store.get("t1")
    assert t is not None and t.state is TxState.COMMITTED
    # A read the database answers checkpoints first: the list and the timeline see it all.
    items, _ = await rl.store.list_page(ListFilter(), time.time())
    assert [i.txid for i in items] == ["t1"]
    kinds = [h["kind"] for h in await rl.store.history("t1")]
    assert kinds == ["begin", "enlist", "decide", "ack"]
    # One checkpoint wrote the record once, in its final state, with last_applied.
    assert rl.checkpoint.index == 4 and rl.checkpoint.written == 1
    assert _db(node_db, "SELECT state FROM txc_transactions") == [("committed",)]
    assert _db(node_db, "SELECT last_applied, last_applied_term FROM txc_applied") == [(4, 1)]
    await close(rl)


async def test_a_crash_before_a_checkpoint_loses_nothing(node_db: str) -> None:
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "t1"))
    await rl.checkpoint.flush()
    await _commit(rl, _entries(5, "t2"))
    assert rl.applied == 8 and rl.checkpoint.index == 4
    await close(rl)  # a crash: no last checkpoint

    # The next start: the database's state is the checkpoint's, the log has the rest, and
    # applying it again gives the same state.
    rl2, _ = await make_log(node_db)
    state = await load(rl2.engine, frozenset(PEERS))
    assert state.applied == 4 and [e.index for e in state.entries] == list(range(1, 9))
    await rl2.store.load_inflight()
    rl2.applied = state.applied
    rl2.checkpoint.resume_at(state.applied, 1)
    assert await rl2.store.get("t2") is None
    await rl2._apply([e for e in state.entries if e.index > state.applied])
    t2 = await rl2.store.get("t2")
    assert t2 is not None and t2.state is TxState.COMMITTED
    assert await rl2.checkpoint.flush() == 8
    assert _db(node_db, "SELECT txid, state FROM txc_transactions ORDER BY txid") == [
        ("t1", "committed"),
        ("t2", "committed"),
    ]
    # Timeline rows are keyed by log position: none doubled by the second application.
    assert _db(node_db, "SELECT count(*) FROM txc_history") == [(8,)]
    await close(rl2)


async def test_a_failed_checkpoint_keeps_its_rows_and_stops_the_node(
    node_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rl, _ = await make_log(node_db)
    fatal: list[bool] = []
    rl.on_fatal = lambda: fatal.append(True)
    await _commit(rl, _entries(1, "t1"))
    real = rl.checkpoint_db.execute

    async def broken(*a: object, **kw: object) -> None:
        raise psycopg.OperationalError("server closed the connection")

    monkeypatch.setattr(rl.checkpoint_db, "execute", broken)
    with pytest.raises(psycopg.OperationalError):
        await rl.checkpoint.flush()
    assert fatal == [True] and rl.checkpoint.index == 0
    # Still readable, still staged, written by the next checkpoint that works.
    assert (await rl.store.get("t1")) is not None and not rl.store.flushing
    monkeypatch.setattr(rl.checkpoint_db, "execute", real)
    assert await rl.checkpoint.flush() == 4
    assert _db(node_db, "SELECT count(*) FROM txc_history") == [(4,)]
    await close(rl)


async def test_applying_waits_while_too_much_is_staged(
    node_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "CHECKPOINT_MAX_ROWS", 5)
    rl, _ = await make_log(node_db)
    await _commit(rl, _entries(1, "t1"))  # 1 record + 4 timeline rows staged
    assert rl.checkpoint.staged_rows == 5 and rl.checkpoint.index == 0
    await _commit(rl, _entries(5, "t2"))  # must first make room: a checkpoint
    assert rl.checkpoint.index == 4 and rl.applied == 8
    await close(rl)


async def test_a_snapshot_is_taken_from_a_checkpoint(node_db: str) -> None:
    rl, _ = await make_log(node_db)
    rl.snapshot_entries = 4
    await _commit(rl, _entries(1, "t1"))
    rl.core = RaftNode(rl.cfg, await load(rl.engine, frozenset(PEERS)), random.Random(0))
    await rl._maybe_snapshot()
    await rl.snapshot_settled()
    # Everything applied was checkpointed first, and the snapshot is of that state.
    assert rl.snapshot_index == 4 and rl.checkpoint.index == 4
    state = await load(rl.engine, frozenset(PEERS))
    assert state.snapshot.meta.index == 4
    # The snapshot's data is JSON: the records as the database holds them, and the members.
    assert state.snapshot.data.startswith(snapshot_codec.MAGIC)  # compressed JSON
    data = orjson.loads(snapshot_codec.unpack(state.snapshot.data))
    assert [t["txid"] for t in data["transactions"]] == ["t1"]
    assert data["transactions"][0]["state"] == "committed"
    assert data["members"] == {str(k): v for k, v in PEERS.items()}
    assert snapshot_members(state.snapshot.data) == PEERS
    assert state.entries == () or list(state.entries) == []
    await close(rl)


async def test_snapshots_come_no_more_often_than_their_size(
    node_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot holds every record, so the next one waits for at least as many applied
    entries as the last one held records (total snapshot work stays linear in the
    transactions recorded, not quadratic), unless the log since the last one outgrows
    SNAPSHOT_MAX_LOG_BYTES (it is held in memory); a restart knows the size from the
    database."""
    rl, _ = await make_log(node_db)
    index = 1

    async def transaction(txid: str) -> None:
        nonlocal index
        rl.snapshot_entries = 10_000  # no snapshot queued while committing (no applier runs)
        await _commit(rl, _entries(index, txid))
        rl.snapshot_entries = 4
        index += 4

    for n in range(3):  # 3 transactions, 4 entries each
        await transaction(f"t{n}")
    rl.core = RaftNode(rl.cfg, await load(rl.engine, frozenset(PEERS)), random.Random(0))
    await rl._maybe_snapshot()
    await rl.snapshot_settled()
    assert rl.snapshot_index == 12 and rl.snapshot_records == 3

    rl.snapshot_records = 6  # as if the state held 6 records: 4 entries are no longer enough
    await transaction("t3")
    assert not rl.snapshot_due()
    assert 0 < rl.log_bytes_since_snapshot < replicated_log.SNAPSHOT_MAX_LOG_BYTES
    monkeypatch.setattr(replicated_log, "SNAPSHOT_MAX_LOG_BYTES", rl.log_bytes_since_snapshot)
    assert rl.snapshot_due()  # the log's size makes it due before the record count does
    monkeypatch.undo()
    await rl._maybe_snapshot()
    await rl.snapshot_settled()
    assert rl.snapshot_index == 12
    await transaction("t4")
    assert rl.snapshot_due()  # 8 entries >= max(4, 6)
    rl.core = RaftNode(rl.cfg, await load(rl.engine, frozenset(PEERS)), random.Random(0))
    await rl._maybe_snapshot()
    await rl.snapshot_settled()
    assert rl.snapshot_index == 20 and rl.snapshot_records == 5
    assert rl.log_bytes_since_snapshot == 0
    await close(rl)

    again, _ = await make_log(node_db)
    await again.start()
    try:
        assert again.snapshot_index == 20 and again.snapshot_records == 5
    finally:
        await again.stop()
        await again.engine.dispose()


async def test_a_snapshot_streams_its_records_in_batches(
    node_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records go from a server-side cursor into the compressor a batch at a time: every
    record once, in txid order, whatever the batch size."""
    from coordinator import store as store_module

    monkeypatch.setattr(store_module, "DUMP_BATCH_ROWS", 2)
    rl, _ = await make_log(node_db)
    for n in range(5):
        await _commit(rl, _entries(1 + 4 * n, f"t{n}"))
    async with rl.checkpoint.frozen():
        async with rl.engine.begin() as conn:
            data, records = await rl.store.dump(conn, {"members": {"1": "http://a"}})
    doc = orjson.loads(snapshot_codec.unpack(data))
    assert records == 5 and [t["txid"] for t in doc["transactions"]] == [f"t{n}" for n in range(5)]
    assert doc["members"] == {"1": "http://a"}
    async with rl.engine.begin() as conn:
        await conn.execute(schema.transactions.delete())
        empty, none = await rl.store.dump(conn)
    assert none == 0 and orjson.loads(snapshot_codec.unpack(empty)) == {
        "transactions": [],
        "tombstones": [],
        "tombstone_horizon": 0.0,
    }
    await close(rl)


async def test_a_snapshot_is_dumped_while_checkpoints_go_on(node_db: str) -> None:
    """The dump reads a REPEATABLE READ view pinned at its checkpoint: later checkpoints are
    written meanwhile (applying never waits for a snapshot), and the snapshot holds the
    state of its index, not what was written after."""
    import asyncio

    rl, _ = await make_log(node_db)
    rl.snapshot_entries = 10**6  # no applier task runs here: apply inline, snapshot by hand
    await _commit(rl, _entries(1, "t1"))
    rl.core = RaftNode(rl.cfg, await load(rl.engine, frozenset(PEERS)), random.Random(0))
    rl.snapshot_entries = 4
    entered, gate = asyncio.Event(), asyncio.Event()
    real_dump = rl.store.dump

    async def slow_dump(conn, extra=None):  # type: ignore[no-untyped-def]
        entered.set()
        await gate.wait()
        return await real_dump(conn, extra)

    rl.store.dump = slow_dump  # type: ignore[method-assign]
    await rl._maybe_snapshot()
    await asyncio.wait_for(entered.wait(), 5)
    rl.snapshot_entries = 10**6
    await _commit(rl, _entries(5, "t2"))
    assert await asyncio.wait_for(rl.checkpoint.flush(), 5) == 8
    assert _db(node_db, "SELECT count(*) FROM txc_transactions") == [(2,)]
    gate.set()
    await rl.snapshot_settled()
    assert rl.snapshot_index == 4
    state = await load(rl.engine, frozenset(PEERS))
    data = orjson.loads(snapshot_codec.unpack(state.snapshot.data))
    assert state.snapshot.meta.index == 4 and [t["txid"] for t in data["transactions"]] == ["t1"]
    await close(rl)


async def test_a_full_inbox_neither_fails_a_snapshot_nor_a_peer(node_db: str) -> None:
    """A node whose Raft inbox is full (busy: installing a snapshot, a burst): a snapshot it
    takes meanwhile is saved and handed to the Raft loop without going through the inbox
    (it used to raise LogUnavailable there and stop the node), and peers' messages are
    dropped and counted (Raft resends them) instead of failing their request."""
    from coordinator.raft.messages import Message, MsgType

    rl, _ = await make_log(node_db)
    rl.snapshot_entries = 10**6
    await _commit(rl, _entries(1, "t1"))
    rl.core = RaftNode(rl.cfg, await load(rl.engine, frozenset(PEERS)), random.Random(0))
    fatal: list[bool] = []
    rl.on_fatal = lambda: fatal.append(True)
    while not rl.inbox.full():
        rl.inbox.put_nowait(("tick", None))
    rl.snapshot_entries = 4
    await rl._maybe_snapshot()
    await rl.snapshot_settled()
    assert rl.snapshot_index == 4 and rl._compact_to is not None and not fatal
    heartbeat = Message(MsgType.HEARTBEAT, 2, 1, term=1)
    assert rl.deliver([heartbeat, heartbeat, heartbeat]) == 3
    assert rl.messages_refused == 3 and rl.status()["messages_refused"] == 3
    await close(rl)
