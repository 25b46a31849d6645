"""This node's history of forgotten transactions: the `txc_archive` table.

When retention forgets a finished transaction (coordinator/retention.py), its full record goes
to this node's own history table in the checkpoint that removes it from the replicated state.
The table is append-only, not replicated, not in snapshots and never held in memory: an
operator looks an old transaction up here (`txc show`, `txc list --finished`, the dashboard),
and its timeline rows (`txc_history`) stay beside it. A node that caught up by snapshot has no
history of what was forgotten while it was away (the leader or another node has it).

Rows older than `history_retention_days` are deleted, with their timelines, in batches of at
most HISTORY_DELETE_BATCH rows, so that one pass never holds locks or the disk for long. The
same task deletes the rows of purged tombstones (those under the checkpointed horizon, which
every read already ignores) and, on a standalone node, its log but the last
STANDALONE_LOG_KEEP entries (a Raft node's log is compacted by snapshots).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, text, true
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import schema
from coordinator.model import Transaction
from coordinator.periodic import Periodic
from coordinator.store import ListFilter, filter_conditions, page

log = logging.getLogger("txc.history")

HISTORY_DELETE_BATCH = 5000  # rows one deleting statement removes
HISTORY_DELETE_PAUSE_S = 0.05  # between two deleting statements of one pass
HISTORY_MAX_BATCHES_PER_PASS = 200  # a pass stops after this many (the next one goes on)
HISTORY_INTERVAL_S = 60.0  # how often the deletion pass runs

_DELETE_ARCHIVE = text(
    """WITH gone AS (
  DELETE FROM txc_archive WHERE ctid IN (
    SELECT ctid FROM txc_archive WHERE forgotten_at < :before LIMIT :limit)
  RETURNING txid
), timelines AS (
  DELETE FROM txc_history h USING gone WHERE h.txid = gone.txid
    AND NOT EXISTS (SELECT 1 FROM txc_transactions t WHERE t.txid = gone.txid)
)
SELECT count(*) FROM gone"""
)
_DELETE_TOMBSTONES = text(
    """WITH gone AS (
  DELETE FROM txc_tombstones WHERE ctid IN (
    SELECT ctid FROM txc_tombstones
    WHERE forgotten_at < (SELECT tombstone_horizon FROM txc_applied WHERE id = 1)
    LIMIT :limit)
  RETURNING 1
)
SELECT count(*) FROM gone"""
)


# A standalone node's log (coordinator/log.py) is written with its application in one
# statement, so no entry is needed to recover; it keeps this many for `txc raft log`.
STANDALONE_LOG_KEEP = 100_000
_DELETE_STANDALONE_LOG = text(
    """WITH gone AS (
  DELETE FROM txc_log WHERE "index" IN (
    SELECT "index" FROM txc_log
    WHERE "index" <= (SELECT max("index") FROM txc_log) - :keep
    ORDER BY "index" LIMIT :limit)
  RETURNING 1
)
SELECT count(*) FROM gone"""
)


@dataclass(frozen=True)
class ArchivedTransaction:
    """A forgotten transaction's full record, as this node kept it."""

    txn: Transaction
    forgotten_at: float


async def archived(engine: AsyncEngine, txid: str) -> ArchivedTransaction | None:
    """The newest history row of `txid` on this node (a txid is forgotten again only after
    its tombstone was purged and it was recorded anew, e.g. by a presumed abort)."""
    a = schema.archive.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(a.doc, a.forgotten_at)
                .where(a.txid == txid)
                .order_by(a.forgotten_at.desc())
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return ArchivedTransaction(Transaction.from_dict(row[0]), float(row[1]))


async def list_page(
    engine: AsyncEngine, f: ListFilter, now: float
) -> tuple[list[ArchivedTransaction], str | None]:
    """The history table, newest first, with the filters and the cursor of the live list
    (coordinator/store.py `Store.list_page`)."""
    a = schema.archive.c
    q = (
        select(a.doc, a.forgotten_at)
        .where(and_(true(), *filter_conditions(a, f, now)))
        .order_by(a.created_at.desc(), a.txid.desc())
        .limit(f.limit + 1)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).fetchall()
    items = [ArchivedTransaction(Transaction.from_dict(r[0]), float(r[1])) for r in rows]
    return page(items, f.limit, lambda k: k.txn)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(text("SELECT count(*) FROM txc_archive"))
    return int(n or 0)


async def disk_bytes(engine: AsyncEngine) -> int:
    """What this node's history takes on disk: forgotten records and every timeline, with
    their indexes (the cost `history_retention_days` sets)."""
    async with engine.connect() as conn:
        n = await conn.scalar(
            text(
                "SELECT pg_total_relation_size('txc_archive')"
                " + pg_total_relation_size('txc_history')"
            )
        )
    return int(n or 0)


async def delete_old(
    engine: AsyncEngine,
    statement: Any,
    before: float,
    *,
    params: dict[str, Any] | None = None,
    batch: int = HISTORY_DELETE_BATCH,
    max_batches: int = HISTORY_MAX_BATCHES_PER_PASS,
    pause_s: float = HISTORY_DELETE_PAUSE_S,
) -> int:
    """Delete rows older than `before` with `statement`, `batch` rows per transaction, until
    none is left or `max_batches` ran. Returns how many were deleted."""
    assert batch > 0 and max_batches > 0
    total = 0
    for _ in range(max_batches):
        async with engine.begin() as conn:
            values = {"before": before, "limit": batch, **(params or {})}
            n = int(await conn.scalar(statement, values) or 0)
        total += n
        if n < batch:
            break
        await asyncio.sleep(pause_s)
    return total


class HistoryKeeper(Periodic):
    """This node's housekeeping task: history past its retention, purged tombstones' rows."""

    name = "txc-history"
    log = log

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        history_retention_days: float,
        standalone_log_keep: int | None = None,
        clock: Callable[[], float] = time.time,
        interval_s: float = HISTORY_INTERVAL_S,
    ) -> None:
        assert history_retention_days > 0
        assert standalone_log_keep is None or standalone_log_keep > 0
        super().__init__(interval_s)
        self.engine = engine
        self.standalone_log_keep = standalone_log_keep
        self.retention_s = history_retention_days * 86_400.0
        self.clock = clock
        self.deleted_history = 0
        self.deleted_tombstones = 0

    async def run_once(self) -> tuple[int, int]:
        """One pass; returns (history rows, tombstone rows) deleted."""
        h = await delete_old(self.engine, _DELETE_ARCHIVE, self.clock() - self.retention_s)
        # Under the horizon a tombstone is already gone for every read: its row only waits.
        # The horizon is the checkpointed one, not memory's: a node that restarts applies
        # the log from its checkpoint again, and the commands before the purge must find
        # the tombstones they found the first time.
        t = await delete_old(self.engine, _DELETE_TOMBSTONES, 0.0)
        if self.standalone_log_keep is not None:
            await delete_old(
                self.engine,
                _DELETE_STANDALONE_LOG,
                0.0,
                params={"keep": self.standalone_log_keep},
            )
        self.deleted_history += h
        self.deleted_tombstones += t
        if h or t:
            log.info("deleted %d history rows and %d purged tombstones", h, t)
        return h, t
