"""Raft storage in PostgreSQL: the log, the hard state and the snapshot of one node.

On the hot path (coordinator/replicated_log.py) a Ready's entries and hard state are
written in one statement (coordinator/batch_sql.py) and committed entries are applied with
`last_applied` in another, each one synchronous transaction. So after a crash the node finds
either all of a Ready or none of it, the stored commit index can never be ahead of the stored
log, and nothing is ever applied twice. A commit index that moved alone is not written: on
load the commit index is at least `last_applied`. This module keeps the load, the bootstrap,
snapshots and membership.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import schema
from coordinator.raft.messages import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from coordinator.raft.ready import PersistentState

MAX_ROWS_PER_INSERT = 1000


def _upsert_one_row(table: Any, columns: list[str]) -> Any:
    """INSERT ... ON CONFLICT (id) DO UPDATE for a one-row table, built once: statements on
    the hot path are constants, so SQLAlchemy compiles each a single time."""
    stmt = pg_insert(table)
    return stmt.on_conflict_do_update(
        index_elements=["id"], set_={c: stmt.excluded[c] for c in columns}
    )


HARD_STATE_UPSERT = _upsert_one_row(schema.hard_state, ["term", "vote", "commit_index"])
APPLIED_UPSERT = _upsert_one_row(schema.applied_state, ["last_applied", "last_applied_term"])
SNAPSHOT_UPSERT = _upsert_one_row(schema.snapshot_meta, ["index", "term", "config", "data"])
LOG_INSERT = schema.log_entries.insert()
LOG_TRUNCATE_FROM = delete(schema.log_entries).where(
    schema.log_entries.c.index >= bindparam("first")
)


class StorageMismatch(RuntimeError):
    """The database holds another kind of node's state (e.g. a standalone node's log)."""


async def load(engine: AsyncEngine, voters: frozenset[int], join: bool = False) -> PersistentState:
    """What the node restarts from. A database never used by a Raft node bootstraps a
    founding member of a group whose initial voters are `voters`, and that initial state is
    made durable here, before the core sees it."""
    state = await _load(engine, voters)
    if state is None and join:
        # A node joining a running group: no membership of its own; it waits for the
        # leader to add it and send it the log.
        return PersistentState.join()
    if state is None:
        state = PersistentState.bootstrap(voters)
        async with engine.begin() as conn:
            await save(conn, None, state.entries, state.hard_state)
    return state


async def _load(engine: AsyncEngine, voters: frozenset[int]) -> PersistentState | None:
    async with engine.connect() as conn:
        hs_row = (await conn.execute(select(schema.hard_state))).first()
        snap_row = (await conn.execute(select(schema.snapshot_meta))).first()
        applied_row = (await conn.execute(select(schema.applied_state))).first()
        if hs_row is None and snap_row is None:
            log_count = (await conn.execute(select(schema.log_entries.c.index).limit(1))).first()
            if log_count is not None:
                raise StorageMismatch(
                    "the database has a log but no Raft state: it belongs to a standalone node"
                )
            return None
        if hs_row is not None and hs_row.vote is not None and not str(hs_row.vote).isdigit():
            raise StorageMismatch(
                "the database was used by a standalone (single-node) coordinator; "
                "give the Raft node an empty database"
            )
        hs = (
            HardState(hs_row.term, int(hs_row.vote or 0), hs_row.commit_index)
            if hs_row
            else HardState()
        )
        if snap_row is not None:
            snap = Snapshot(
                SnapshotMeta(
                    snap_row._mapping["index"], snap_row.term, ConfState.from_dict(snap_row.config)
                ),
                bytes(snap_row.data),
            )
        else:
            snap = Snapshot(SnapshotMeta())
        rows = await conn.execute(
            select(schema.log_entries)
            .where(schema.log_entries.c.index > snap.meta.index)
            .order_by(schema.log_entries.c.index)
        )
        entries = tuple(
            Entry(r._mapping["index"], r.term, EntryKind(r.kind), bytes(r.data))
            for r in rows.fetchall()
        )
        applied = max(applied_row.last_applied if applied_row is not None else 0, snap.meta.index)
        if hs.commit < applied <= max(snap.meta.index, entries[-1].index if entries else 0):
            # The shell does not write a commit index that moved alone (replicated_log.py):
            # whatever was applied was committed.
            hs = HardState(hs.term, hs.vote, applied)
        return PersistentState(hard_state=hs, snapshot=snap, entries=entries, applied=applied)


async def save(
    conn: AsyncConnection,
    snapshot: Snapshot | None,
    entries: Sequence[Entry],
    hard_state: HardState | None,
) -> None:
    """Persist a Ready's durable parts inside `conn`'s transaction, in the contract's order."""
    if snapshot is not None:
        await save_snapshot(conn, snapshot)
        # A received snapshot replaces the whole log.
        await conn.execute(delete(schema.log_entries))
    if entries:
        await conn.execute(LOG_TRUNCATE_FROM, {"first": entries[0].index})
        rows = [
            {"index": e.index, "term": e.term, "kind": e.kind.value, "data": e.data}
            for e in entries
        ]
        for i in range(0, len(rows), MAX_ROWS_PER_INSERT):
            await conn.execute(LOG_INSERT, rows[i : i + MAX_ROWS_PER_INSERT])
    if hard_state is not None:
        hs = hard_state
        await conn.execute(
            HARD_STATE_UPSERT,
            {"id": 1, "term": hs.term, "vote": str(hs.vote), "commit_index": hs.commit},
        )


async def save_snapshot(conn: AsyncConnection, snapshot: Snapshot) -> None:
    m = snapshot.meta
    await conn.execute(
        SNAPSHOT_UPSERT,
        {
            "id": 1,
            "index": m.index,
            "term": m.term,
            "config": m.conf.to_dict(),
            "data": snapshot.data,
        },
    )


async def compact(conn: AsyncConnection, snapshot: Snapshot) -> None:
    """Save a snapshot this node took of its own applied state and drop the log it covers."""
    await save_snapshot(conn, snapshot)
    await conn.execute(
        delete(schema.log_entries).where(schema.log_entries.c.index <= snapshot.meta.index)
    )


async def set_applied(conn: AsyncConnection, index: int, term: int) -> None:
    await conn.execute(APPLIED_UPSERT, {"id": 1, "last_applied": index, "last_applied_term": term})


async def load_members(engine: AsyncEngine) -> dict[int, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(schema.members.c.id, schema.members.c.url))
        return {int(r[0]): str(r[1]) for r in rows.fetchall()}


async def save_members(conn: AsyncConnection, urls: dict[int, str]) -> None:
    if not urls:
        return
    stmt = pg_insert(schema.members)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_={"url": stmt.excluded.url}),
        [{"id": k, "url": v} for k, v in urls.items()],
    )
