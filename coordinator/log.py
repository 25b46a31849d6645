"""The command log: the interface the 2PC engine writes through, and its single-node form.

A command takes effect only once the log has committed it durably; `propose` returns the
results of applying the commands, in order, after that. The Raft group implements the same
interface with a replicated log; the engine and the API do not know which one they use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import batch_sql, schema
from coordinator.commands import Command, encode
from coordinator.pgconn import HotConnection
from coordinator.statemachine import Result
from coordinator.store import LogEntry, Store, fill_rows

log = logging.getLogger("txc.log")

SINGLE_NODE_TERM = 1


class NotLeader(Exception):
    """This node cannot accept the command; `leader_url` says where to go, when known."""

    def __init__(self, leader_url: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_url or 'unknown'})")
        self.leader_url = leader_url


class LogUnavailable(Exception):
    """The log cannot take commands now (queue full, storage unreachable). Safe to retry."""


class CommandLog(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def propose(self, commands: Sequence[Command]) -> list[Result]: ...
    async def read_barrier(self) -> None:
        """Return once the local applied state includes every command committed before the
        call (a linearizable read point). Raises NotLeader when that cannot be known here."""
        ...

    def is_leader(self) -> bool: ...
    def leader_url(self) -> str | None: ...
    def leadership_epoch(self) -> int:
        """Changes whenever this node gains or loses leadership (the engine restarts its
        work when it changes)."""
        ...

    def status(self) -> dict[str, Any]: ...


@dataclass
class _Proposal:
    commands: Sequence[Command]
    future: asyncio.Future[list[Result]] = field(repr=False)


class SingleNodeLog:
    """A log of one node: an entry is committed when its PostgreSQL transaction commits.

    Group commit: a single writer task drains the queue and writes up to `batch_max` commands
    (log rows, their application and `last_applied`) in one synchronous statement."""

    # Each command is its own row and the writer already commits everything queued at once:
    # nothing to gain from merging proposals (coordinator/proposal_batch.py).
    entry_per_proposal = False

    def __init__(
        self,
        engine: AsyncEngine,
        store: Store,
        *,
        node_id: str,
        advertise_url: str,
        batch_max: int = 512,
        queue_max: int = 10_000,
    ) -> None:
        assert batch_max > 0 and queue_max > 0
        self.engine = engine
        # The writer's statement (entries, their application, commit index) runs here.
        self.db = HotConnection(engine.url.render_as_string(hide_password=False))
        self.store = store
        self.node_id = node_id
        self.advertise_url = advertise_url
        self.batch_max = batch_max
        self.queue: asyncio.Queue[_Proposal] = asyncio.Queue(maxsize=queue_max)
        self.last_index = 0
        self.last_applied = 0
        self._writer: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                pg_insert(schema.hard_state)
                .values(id=1, term=SINGLE_NODE_TERM, vote=self.node_id, commit_index=0)
                .on_conflict_do_nothing()
            )
            await conn.execute(
                pg_insert(schema.applied_state)
                .values(id=1, last_applied=0, last_applied_term=0)
                .on_conflict_do_nothing()
            )
            self.last_index = int(
                (
                    await conn.execute(
                        select(func.coalesce(func.max(schema.log_entries.c.index), 0))
                    )
                ).scalar_one()
            )
            self.last_applied = int(
                (await conn.execute(select(schema.applied_state.c.last_applied))).scalar_one()
            )
        # In the single-node log, entries and their application commit together.
        assert self.last_applied == self.last_index, (self.last_applied, self.last_index)
        await self.store.load_inflight()
        self._writer = asyncio.create_task(self._write_loop(), name="txc-log-writer")
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        while not self.queue.empty():
            p = self.queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(LogUnavailable("node stopping"))
        await self.db.close()

    async def propose(self, commands: Sequence[Command]) -> list[Result]:
        if not commands:
            return []
        if not self._started:
            raise LogUnavailable("log not started")
        fut: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Proposal(commands, fut))
        except asyncio.QueueFull:
            raise LogUnavailable("too many commands waiting for the log") from None
        return await fut

    async def read_barrier(self) -> None:
        # One node: everything committed is applied before `propose` returns.
        return None

    def is_leader(self) -> bool:
        return self._started

    def leader_url(self) -> str | None:
        return self.advertise_url

    def leadership_epoch(self) -> int:
        return 1 if self._started else 0

    def status(self) -> dict[str, Any]:
        return {
            "mode": "single-node",
            "node_id": self.node_id,
            "leader": self.node_id,
            "leader_url": self.advertise_url,
            "term": SINGLE_NODE_TERM,
            "commit_index": self.last_index,
            "applied_index": self.last_applied,
            "members": [
                {
                    "id": self.node_id,
                    "url": self.advertise_url,
                    "role": "leader",
                    "voter": True,
                    "match_index": self.last_index,
                    "lag": 0,
                    "healthy": True,
                }
            ],
        }

    async def _write_loop(self) -> None:
        while True:
            first = await self.queue.get()
            batch = [first]
            n = len(first.commands)
            while n < self.batch_max and not self.queue.empty():
                p = self.queue.get_nowait()
                batch.append(p)
                n += len(p.commands)
            try:
                results = await self._write(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(LogUnavailable("node stopping"))
                raise
            except Exception as e:  # storage failure: nothing of the batch took effect
                log.exception("log write failed; %d proposals refused", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(LogUnavailable(f"storage error: {type(e).__name__}"))
                await asyncio.sleep(0.1)  # do not spin against a storage that is down
                continue
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)

    async def _write(self, batch: list[_Proposal]) -> list[list[Result]]:
        entries: list[LogEntry] = []
        index = self.last_index
        for p in batch:
            for c in p.commands:
                index += 1
                entries.append(LogEntry(index, SINGLE_NODE_TERM, c))
        results, changed, rows = await self.store.apply_batch(self.db, entries)
        # One node: the entries and their application are written together, at once.
        fill_rows(rows, changed.values())
        if rows.horizon is None:
            rows.horizon = self.store.tombstone_horizon
        params = batch_sql.apply_params(rows, index, SINGLE_NODE_TERM, {})
        params |= {
            "idx": [e.index for e in entries],
            "terms": [e.term for e in entries],
            "kinds": ["normal"] * len(entries),
            "datas": [encode(e.command) for e in entries],
        }
        await self.db.execute(batch_sql.SINGLE_NODE_WRITE, params)
        self.last_index = self.last_applied = index
        self.store.publish(changed, rows.horizon)
        out: list[list[Result]] = []
        i = 0
        for p in batch:
            out.append(results[i : i + len(p.commands)])
            i += len(p.commands)
        return out
