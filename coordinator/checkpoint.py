"""Checkpoints: the applied state written to PostgreSQL behind the log, not with every batch.

A Raft node applies committed commands in memory (coordinator/store.py) as soon as its log
holds them durably; the log is what makes a command durable (DESIGN §3 rule 4), and the
applied state is a function of it. So the transaction records, their timeline rows, the
audit trail, member addresses and `last_applied` are written here in one synchronous
transaction per checkpoint (DESIGN §7: a batch and `last_applied` together), every
CHECKPOINT_INTERVAL_S or sooner when CHECKPOINT_EARLY_ROWS rows wait.

Why: a transfer is five commands, each one changing its transaction's record; written with
every applied batch that was five upserts of the record (and four index updates each) per
node, the largest share of PostgreSQL's work under load. A checkpoint writes each changed
transaction once, as it is then.

After a crash a node loads the state of its last checkpoint and applies the log entries
after `last_applied` again (the state machine is deterministic, timeline rows are keyed by
log position). Log compaction takes its snapshot from a checkpoint (`frozen`), so the log
always holds every entry after `last_applied`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from coordinator import batch_sql
from coordinator.batch_sql import ApplyRows
from coordinator.model import Transaction
from coordinator.pgconn import HotConnection
from coordinator.store import Store

log = logging.getLogger("txc.checkpoint")

CHECKPOINT_INTERVAL_S = 1.0  # the longest applied changes wait for a checkpoint
CHECKPOINT_EARLY_ROWS = 4096  # staged rows that start a checkpoint before the interval
CHECKPOINT_MAX_ROWS = 16_384  # staged rows beyond which applying waits for a checkpoint
STOP_FLUSH_TIMEOUT_S = 5.0  # the last checkpoint of a stopping node


class Checkpointer:
    def __init__(
        self,
        db: HotConnection,
        store: Store,
        *,
        index: int,
        term: int,
        on_fatal: Callable[[], None],
        interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        assert interval_s > 0
        self.db = db
        self.store = store
        self.index, self.term = index, term  # what the database holds
        self.staged_index, self.staged_term = index, term  # what memory holds
        self.interval_s = interval_s
        self.on_fatal = on_fatal
        self.written = 0  # checkpoints written (status, tests)
        self._members: dict[int, str] = {}
        self._rows = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        store.before_read = self.flush

    def resume_at(self, index: int, term: int) -> None:
        """Where the database's applied state is, as loaded at start (nothing staged yet)."""
        assert self.staged_index == self.index and self._rows == 0
        self.index = self.staged_index = index
        self.term = self.staged_term = term

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="txc-checkpoint")

    async def stop(self) -> None:
        """Write what is staged (a restart then replays nothing), within a bound."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(STOP_FLUSH_TIMEOUT_S):
                async with self._lock:
                    await self._write()
        except Exception as e:  # the log has it all: the next start applies it again
            log.warning("last checkpoint not written (%s: %s)", type(e).__name__, e)

    @property
    def staged_rows(self) -> int:
        return self._rows

    def stage(
        self,
        changed: dict[str, Transaction],
        rows: ApplyRows,
        index: int,
        term: int,
        members: dict[int, str],
    ) -> None:
        """Keep an applied batch (entries up to `index`) for the next checkpoint. Called in
        the same step that publishes the batch, so what is staged always matches `index`."""
        assert index >= self.staged_index, (index, self.staged_index)
        self.store.stage(changed, rows)
        self._members.update(members)
        self.staged_index, self.staged_term = index, term
        self._rows += len(changed) + len(rows.history) + len(rows.audit) + len(rows.archive)
        if self._rows >= CHECKPOINT_EARLY_ROWS:
            self._wake.set()

    async def room(self) -> None:
        """Back-pressure: wait while too much is staged (the database is slower than the
        log), so that memory stays bounded."""
        while self._rows >= CHECKPOINT_MAX_ROWS:
            await self.flush()

    async def flush(self) -> int:
        """Write everything staged so far; returns the index the database now holds."""
        async with self._lock:
            await self._write_or_stop()
            return self.index

    @contextlib.asynccontextmanager
    async def frozen(self) -> AsyncIterator[tuple[int, int]]:
        """Checkpoint, then hold the database's applied state still (no checkpoint writes)
        while the caller reads it (a snapshot) or replaces it (an installed snapshot)."""
        async with self._lock:
            await self._write_or_stop()
            yield self.index, self.term

    def reset(self, index: int, term: int) -> None:
        """The database's applied state was replaced up to `index` (inside `frozen`)."""
        assert self._lock.locked()
        self.store.discard_unflushed()
        self._members.clear()
        self._rows = 0
        self.index = self.staged_index = index
        self.term = self.staged_term = term

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.flush()

    async def _write_or_stop(self) -> None:
        try:
            await self._write()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Memory is ahead of the database and cannot catch up: stop (crash-only, as for
            # any storage failure); the log holds every applied entry for the next start.
            log.critical("checkpoint failed; stopping this node", exc_info=True)
            self.on_fatal()
            raise

    async def _write(self) -> None:
        assert self._lock.locked()
        if self.staged_index == self.index:
            return
        index, term, members = self.staged_index, self.staged_term, self._members
        rows = self.store.take_unflushed()
        self._members, self._rows = {}, 0
        try:
            await self.db.execute(
                batch_sql.APPLY, batch_sql.apply_params(rows, index, term, members)
            )
        except BaseException:
            # Not written (or not known to be): keep it staged, it is still the newest.
            self._restage(rows, members)
            raise
        self.store.flushed()
        self.index, self.term = index, term
        self.written += 1

    def _restage(self, rows: ApplyRows, members: dict[int, str]) -> None:
        self.store.restage(rows)
        self._members = {**members, **self._members}
        self._rows += (
            len(rows.transactions) + len(rows.tombstones) + len(rows.history) + len(rows.audit)
        ) + len(rows.archive)
