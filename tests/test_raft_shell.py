"""The Raft shell's side of the durability pitfalls (DESIGN §7), against real PostgreSQL:
nothing that depends on a term, a vote or log entries leaves the node before they are
committed to its database, and a failed write sends nothing at all."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from coordinator import migrate
from coordinator.db import make_engine
from coordinator.raft.messages import Entry, EntryKind, HardState, Message, MsgType
from coordinator.raft.ready import Ready
from coordinator.raft.storage import load
from coordinator.replicated_log import RaftLog
from coordinator.store import Store

PEERS = {1: "http://127.0.0.1:1", 2: "http://127.0.0.1:2", 3: "http://127.0.0.1:3"}


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def ready(**kw: Any) -> Ready:
    base: dict[str, Any] = dict(
        hard_state=None,
        entries=[],
        snapshot=None,
        committed=[],
        messages=[],
        read_states=[],
        soft_state=None,
    )
    return Ready(**(base | kw))


@pytest.fixture
def node_db(db_url: str) -> str:
    migrate.upgrade(db_url, "coordinator")
    return db_url


async def make_log(db_url: str) -> tuple[RaftLog, list[tuple[list[Message], Any]]]:
    engine = make_engine(db_url)
    rl = RaftLog(
        engine,
        Store(engine),
        raft_id=1,
        peer_urls=PEERS,
        secret="s",
        tick_s=0.05,
        election_ticks=10,
        heartbeat_ticks=1,
        snapshot_entries=1000,
    )
    sent: list[tuple[list[Message], Any]] = []

    def record(msgs: list[Message]) -> None:
        # What the database holds at the moment the messages go out.
        with psycopg.connect(_dsn(db_url)) as c:
            hs = c.execute("SELECT term, vote FROM txc_hard_state").fetchone()
            idx = [r[0] for r in c.execute("SELECT index FROM txc_log ORDER BY index")]
        sent.append((msgs, (hs, idx)))

    rl.transport.send = record  # type: ignore[method-assign]
    return rl, sent


async def close(rl: RaftLog) -> None:
    await rl.persist_db.close()
    await rl.apply_db.close()
    await rl.checkpoint_db.close()
    await rl.engine.dispose()


async def test_vote_or_term_not_durable_before_reply(node_db: str) -> None:
    rl, sent = await make_log(node_db)
    vote_resp = Message(MsgType.VOTE_RESP, 1, 2, term=5)
    await rl._process(ready(hard_state=HardState(term=5, vote=2, commit=0), messages=[vote_resp]))
    [(msgs, (hs, _))] = sent
    assert msgs == [vote_resp] and hs == (5, "2"), "the vote left before it was durable"
    await close(rl)


async def test_log_acknowledged_before_fsync(node_db: str) -> None:
    rl, sent = await make_log(node_db)
    entries = [Entry(1, 1, EntryKind.EMPTY), Entry(2, 1, EntryKind.EMPTY)]
    ack = Message(MsgType.APPEND_RESP, 1, 2, term=1, index=2)
    await rl._process(ready(entries=entries, hard_state=HardState(1, 2, 0), messages=[ack]))
    [(_, (_, idx))] = sent
    assert idx == [1, 2], "the append was acknowledged before the entries were stored"
    await close(rl)


async def test_a_failed_write_sends_nothing(node_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rl, sent = await make_log(node_db)

    async def broken(*_a: Any, **_k: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(rl.persist_db, "execute", broken)
    with pytest.raises(OSError):
        await rl._process(
            ready(
                hard_state=HardState(7, 3, 0), messages=[Message(MsgType.VOTE_RESP, 1, 3, term=7)]
            )
        )
    assert sent == []
    await close(rl)


async def test_commit_index_persisted_ahead_of_log_is_refused_at_start(node_db: str) -> None:
    """A stored commit index beyond the stored log means committed entries were lost: the
    node refuses to start instead of serving with a hole."""
    engine = make_engine(node_db)
    state = await load(engine, frozenset(PEERS))  # bootstraps entry 1
    assert [e.index for e in state.entries] == [1]
    with psycopg.connect(_dsn(node_db), autocommit=True) as c:
        c.execute("UPDATE txc_hard_state SET commit_index = 9")
    rl, _ = await make_log(node_db)
    from coordinator.raft.errors import CorruptState

    with pytest.raises(CorruptState):
        await rl.start()
    await rl.stop()
    await engine.dispose()


async def test_a_leader_sends_appends_before_its_own_write_but_never_a_new_term(
    node_db: str,
) -> None:
    """Raft thesis §10.2.1: the leader's own write may overlap its followers'. Only appends
    and heartbeats of a term already durable go early; everything else waits."""
    from coordinator.raft.ready import Role

    rl, sent = await make_log(node_db)
    rl.role, rl.term = Role.LEADER, 3
    append = Message(MsgType.APPEND, 1, 2, term=3, index=0, entries=(Entry(1, 3, EntryKind.EMPTY),))
    await rl._process(ready(entries=[Entry(1, 3, EntryKind.EMPTY)], messages=[append]))
    [(msgs, (_, idx))] = sent
    assert msgs == [append] and idx == []  # sent before the entry was stored
    sent.clear()
    # A Ready that changes the term: nothing leaves before it is durable.
    newer = Message(MsgType.APPEND, 1, 2, term=4)
    await rl._process(ready(hard_state=HardState(4, 1, 0), messages=[newer]))
    [(msgs, (hs, _))] = sent
    assert msgs == [newer] and hs == (4, "1")
    await close(rl)


async def test_a_commit_index_that_moved_alone_is_not_written_but_survives_a_restart(
    node_db: str,
) -> None:
    """Most follower Readys only move the commit index: the shell skips that write (Raft's
    commit index may be volatile), and a restarted node reads it as at least `last_applied`."""
    rl, _ = await make_log(node_db)
    entries = [Entry(1, 1, EntryKind.EMPTY), Entry(2, 1, EntryKind.EMPTY)]
    await rl._process(ready(entries=entries, hard_state=HardState(1, 2, 0)))
    await rl._process(ready(hard_state=HardState(1, 2, 2), committed=entries))
    with psycopg.connect(_dsn(node_db)) as c:
        row = c.execute("SELECT term, vote, commit_index FROM txc_hard_state").fetchone()
    assert row == (1, "2", 0), "a commit-only hard state was written"
    await rl._apply(list(entries))
    await rl.checkpoint.flush()
    state = await load(rl.engine, frozenset(PEERS))
    assert state.applied == 2 and state.hard_state == HardState(1, 2, 2)
    # A new vote is written at once, whatever else moved.
    await rl._process(ready(hard_state=HardState(2, 3, 2)))
    with psycopg.connect(_dsn(node_db)) as c:
        row = c.execute("SELECT term, vote, commit_index FROM txc_hard_state").fetchone()
    assert row == (2, "3", 2)
    await close(rl)


async def test_committed_entries_are_applied_with_the_ready_unless_the_applier_is_busy(
    node_db: str,
) -> None:
    """An idle applier: the Ready's committed entries are applied in the Raft loop, right
    after its log and hard state are written. A busy one: they wait in its queue, in order.
    Either way the database's `last_applied` moves only with a checkpoint."""
    rl, _ = await make_log(node_db)
    e1, e2, e3 = (Entry(i, 1, EntryKind.EMPTY) for i in (1, 2, 3))
    await rl._process(ready(entries=[e1, e2], hard_state=HardState(1, 2, 0)))
    await rl._process(ready(entries=[e3], hard_state=HardState(1, 2, 2), committed=[e1, e2]))
    with psycopg.connect(_dsn(node_db)) as c:
        applied = c.execute("SELECT last_applied FROM txc_applied").fetchone()
        idx = [r[0] for r in c.execute("SELECT index FROM txc_log ORDER BY index")]
    assert applied in (None, (0,)) and idx == [1, 2, 3] and rl.applied == 2
    assert rl.apply_queue.empty() and rl.checkpoint.staged_index == 2
    rl._applying = True
    await rl._process(ready(hard_state=HardState(1, 2, 3), committed=[e3]))
    assert rl.apply_queue.qsize() == 1 and rl.applied == 2
    assert await rl.checkpoint.flush() == 2
    with psycopg.connect(_dsn(node_db)) as c:
        assert c.execute("SELECT last_applied FROM txc_applied").fetchone() == (2,)
    rl._applying = False
    await rl._apply(rl.apply_queue.get_nowait())
    assert rl.applied == 3 and rl.checkpoint.index == 2
    await close(rl)
