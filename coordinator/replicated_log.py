"""The command log replicated by Raft: the asyncio shell around the pure core.

One task owns the core. It takes events (ticks, peer messages, proposals, reads) from a
bounded inbox, feeds them in, then drains each Ready in the order its contract requires:
persist the log and hard state (one statement, coordinator/batch_sql.py, on a connection of
its own: coordinator/pgconn.py), then send the messages, then apply the committed entries in
memory (in the loop itself when the applier task is idle, else in that task) and answer the
proposals and reads waiting on them. The applied state reaches PostgreSQL in checkpoints
(coordinator/checkpoint.py). Events that arrive while a Ready is being written wait in the
inbox and go into the next one: that is group commit, and one database commit serves many
proposals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import ssl
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import batch_sql, schema, snapshot_codec
from coordinator.batch_sql import ApplyRows
from coordinator.checkpoint import CHECKPOINT_INTERVAL_S, Checkpointer
from coordinator.commands import Command, decode_batch, encode_batch
from coordinator.log import LogUnavailable, NotLeader
from coordinator.model import Transaction
from coordinator.pgconn import HotConnection
from coordinator.raft import storage
from coordinator.raft.config import RaftConfig
from coordinator.raft.core import RaftNode
from coordinator.raft.errors import ConfChangeRefused, ProposalDropped
from coordinator.raft.errors import NotLeader as CoreNotLeader
from coordinator.raft.messages import (
    NONE,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from coordinator.raft.ready import PersistentState, Ready, Role
from coordinator.raft.transport import Transport
from coordinator.statemachine import Result
from coordinator.store import LogEntry, Store

log = logging.getLogger("txc.raft")

MAX_INBOX = 10_000  # events waiting for the Raft task before callers get 503
MAX_EVENTS_PER_ROUND = 256  # events fed to the core before it drains a Ready
# Committed entries applied in one database transaction. An entry can carry a whole batch of
# commands, so this is kept small: one Ready must not hold the event loop for longer than a
# fraction of an election timeout, or heartbeats wait and leadership is lost under load.
MAX_COMMITTED_PER_READY = 64
# What a leader may send before its own write is durable (see `_process`).
EARLY_LEADER_MESSAGES = frozenset({MsgType.APPEND, MsgType.HEARTBEAT})
MAX_APPLY_QUEUE = 1024  # Readys' committed lists waiting to be applied (back-pressure beyond)
MAX_APPLY_BATCH = 256  # committed entries the applier task takes at once
# Log bytes applied since the last snapshot that make the next one due even when the state
# holds more records than that many entries (snapshot_due): bounds the in-memory log.
SNAPSHOT_MAX_LOG_BYTES = 256 * 1024 * 1024
PROMOTE_CHECK_TICKS = 10  # how often the leader looks for learners ready to vote
READ_TIMEOUT_S = 5.0  # a linearizable read the leader cannot confirm in this time fails
PROPOSE_TIMEOUT_S = 10.0  # a proposal not committed in this time fails (it may still commit)


@dataclass
class _ApplyBatch:
    """Committed entries run through the state machine, waiting to be published."""

    entries: list[Entry]
    log_entries: list[LogEntry]
    results: list[Result]
    changed: dict[str, Transaction]
    members: dict[int, str]
    rows: ApplyRows


@dataclass
class _Pending:
    term: int
    future: asyncio.Future[list[Result]]


class RaftLog:
    # Each proposal is one log entry (a Raft entry, a log row on every node): proposals that
    # stand alone gain from sharing one (coordinator/proposal_batch.py).
    entry_per_proposal = True

    def __init__(
        self,
        engine: AsyncEngine,
        store: Store,
        *,
        raft_id: int,
        peer_urls: dict[int, str],
        secret: str,
        tick_s: float,
        election_ticks: int,
        heartbeat_ticks: int,
        snapshot_entries: int,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        join: bool = False,
        on_fatal: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        assert raft_id in peer_urls
        self.engine = engine
        # The hot path's statements: one connection for the Raft loop, one for the applier's
        # reads, one for checkpoints.
        url = engine.url.render_as_string(hide_password=False)
        self.persist_db = HotConnection(url)
        self.apply_db = HotConnection(url)
        self.checkpoint_db = HotConnection(url)
        self.store = store
        self.id = raft_id
        self.urls = dict(peer_urls)
        self.tick_s = tick_s
        self.cfg = RaftConfig(
            id=raft_id,
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            max_committed_per_ready=MAX_COMMITTED_PER_READY,
        )
        self.snapshot_entries = snapshot_entries
        self.transport = Transport(raft_id, secret, lambda: self.urls, ssl_context)
        self.core: RaftNode | None = None
        self.inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=MAX_INBOX)
        self.pending: dict[int, _Pending] = {}
        self.reads: dict[bytes, asyncio.Future[int]] = {}
        self.read_index_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.applied = 0
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.term = 0
        self._epoch = 0
        self._leader_ready_index: int | None = None  # applied must reach this before we lead
        self._tasks: list[asyncio.Task[None]] = []
        self.leader_changes = 0
        self.snapshot_index = 0
        # Records in the last snapshot this node took or installed (0 until it has one), and
        # the bytes of the entries applied since (an estimate after a restart: see start).
        self.snapshot_records = 0
        self.snapshot_bytes = 0
        self.log_bytes_since_snapshot = 0
        self.join = join
        # Crash-only: a node whose storage failed stops (a supervisor restarts it) rather
        # than serve with a core that believes writes happened.
        self.on_fatal = on_fatal or _terminate_process
        self.checkpoint = Checkpointer(
            self.checkpoint_db,
            store,
            index=0,
            term=0,
            on_fatal=lambda: self.on_fatal(),
            interval_s=checkpoint_interval_s,
        )
        self.founders = frozenset(peer_urls)
        self.removed = False  # this node was removed from the group
        self._ticks = 0
        self.messages_refused = 0  # peer messages dropped because the inbox was full
        # A snapshot the applier took, for the Raft loop to compact its log to (a field,
        # not an inbox event: a full inbox must not fail a snapshot already saved).
        self._compact_to: tuple[int, bytes] | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._durable_vote = (0, NONE)  # (term, vote) as last written to the database
        self._applying = False  # the applier task is working on a batch
        # Committed entries wait here for the applier task: applying (the heavy part) does
        # not hold up the Raft loop, so heartbeats and appends keep flowing under load.
        self.apply_queue: asyncio.Queue[list[Entry]] = asyncio.Queue(maxsize=MAX_APPLY_QUEUE)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        # Addresses: configuration first, then what the log has taught this node.
        known = await storage.load_members(self.engine)
        self.urls = {**self.urls, **known}
        async with self.engine.begin() as conn:
            await storage.save_members(conn, self.urls)
        state = await storage.load(self.engine, self.founders, join=self.join)
        self.core = RaftNode(self.cfg, state, random.Random())
        self.applied = state.applied
        self.snapshot_index = state.snapshot.meta.index
        self.term = state.hard_state.term
        self._durable_vote = (state.hard_state.term, state.hard_state.vote)
        await self.store.load_inflight()
        if self.snapshot_index:
            self.snapshot_records = await self.store.record_count()
            self.snapshot_bytes = len(state.snapshot.data)
        self.log_bytes_since_snapshot = sum(len(e.data) for e in state.entries)
        self.checkpoint.resume_at(state.applied, _applied_term(state))
        self.checkpoint.start()
        await self.transport.start()
        self._tasks = [
            asyncio.create_task(self._run(), name="raft-loop"),
            asyncio.create_task(self._ticker(), name="raft-ticker"),
            asyncio.create_task(self._apply_loop(), name="raft-apply"),
        ]
        log.info(
            "raft node %s starting: term %s, applied %s, %s entries after snapshot %s",
            self.id,
            state.hard_state.term,
            state.applied,
            len(state.entries),
            self.snapshot_index,
        )

    async def stop(self) -> None:
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._snapshot_task
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._fail_pending(LogUnavailable("node stopping"))
        await self.checkpoint.stop()
        await self.transport.stop()
        await self.persist_db.close()
        await self.apply_db.close()
        await self.checkpoint_db.close()

    # -- CommandLog -----------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.role is Role.LEADER and self._leader_ready_index is None

    def leading_not_ready(self) -> bool:
        """Elected, but not yet applied up to the log it inherited: it answers nothing yet
        (requests would be forwarded to itself and refused), so it is not ready either."""
        return self.role is Role.LEADER and self._leader_ready_index is not None

    def leader_url(self) -> str | None:
        if self.leader == NONE:
            return None
        return self.urls.get(self.leader)

    def leadership_epoch(self) -> int:
        return self._epoch

    @property
    def members(self) -> frozenset[int]:
        """Voters and learners of this node's current configuration (a change counts once its
        entry is appended); empty before start and while a joining node has none yet."""
        return self.core.conf.members if self.core is not None else frozenset()

    def _put(self, kind: str, payload: Any) -> None:
        try:
            self.inbox.put_nowait((kind, payload))
        except asyncio.QueueFull:
            raise LogUnavailable("the Raft node is overloaded") from None

    async def propose(self, commands: Sequence[Command]) -> list[Result]:
        if not commands:
            return []
        return await self._propose_data(encode_batch(list(commands)))

    async def _propose_data(self, data: bytes) -> list[Result]:
        if not self.is_leader():
            raise NotLeader(self.leader_url())
        fut: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._put("propose", (data, fut))
        try:
            return await asyncio.wait_for(fut, PROPOSE_TIMEOUT_S)
        except TimeoutError:
            raise LogUnavailable(
                "the command was not committed in time; it may still commit"
            ) from None

    async def read_barrier(self) -> None:
        if not self.is_leader():
            raise NotLeader(self.leader_url())
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        ctx = uuid.uuid4().bytes
        self.reads[ctx] = fut
        self._put("read", ctx)
        try:
            index = await asyncio.wait_for(fut, READ_TIMEOUT_S)
            await self._wait_applied(index)
        except TimeoutError:
            raise LogUnavailable("leadership could not be confirmed for a read") from None
        finally:
            self.reads.pop(ctx, None)

    async def _wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.read_index_waiters.append((index, fut))
        await fut

    def deliver(self, messages: list[Message]) -> int:
        """Messages from a peer (the transport's HTTP handler). A full inbox drops the rest
        (Raft resends what is lost: a busy node must not fail its peers' requests); returns
        how many were dropped."""
        for i, m in enumerate(messages):
            try:
                self.inbox.put_nowait(("step", m))
            except asyncio.QueueFull:
                dropped = len(messages) - i
                self.messages_refused += dropped
                return dropped
        return 0

    async def transfer_leadership(self, to: int) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put("transfer", (to, fut))
        await fut

    async def change_membership(self, change: ConfChange) -> None:
        """Propose one membership change and wait until it is committed. Raises the core's
        NotLeader / ConfChangeRefused."""
        fut: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._put("conf", (change, fut))
        await asyncio.wait_for(fut, PROPOSE_TIMEOUT_S)

    async def add_member(self, node: int, url: str) -> None:
        """Add a node as a learner: first its address (so every member can reach it and
        accepts its messages), then the membership change. The leader promotes it to voter
        once it has caught up."""
        if not self.is_leader():
            raise NotLeader(self.leader_url())
        await self._propose_data(encode_member(node, url))
        await self.change_membership(ConfChange(ConfChangeOp.ADD_LEARNER, node))

    async def remove_member(self, node: int) -> None:
        if not self.is_leader():
            raise NotLeader(self.leader_url())
        await self.change_membership(ConfChange(ConfChangeOp.REMOVE, node))

    def status(self) -> dict[str, Any]:
        assert self.core is not None
        st = self.core.status()
        members = []
        for nid in sorted(st.conf.members):
            f = st.followers.get(nid)
            role = (
                "leader"
                if nid == st.leader
                else ("learner" if nid in st.conf.learners else "follower")
            )
            healthy: bool | None
            if nid == self.id:
                healthy = True
                match: int | None = st.last_index
            elif st.role is Role.LEADER:
                healthy = bool(f and f.recent_active)
                match = f.match if f else None
            else:
                # A follower only knows that it hears from the leader.
                healthy = True if nid == st.leader else None
                match = None
            members.append(
                {
                    "id": nid,
                    "node_id": f"node{nid}",
                    "url": self.urls.get(nid, ""),
                    "role": role,
                    "voter": nid in st.conf.voters,
                    "match_index": match,
                    "lag": (f.lag if f else 0) if st.role is Role.LEADER else None,
                    "healthy": healthy,
                }
            )
        return {
            "mode": "raft",
            "node_id": f"node{self.id}",
            "id": self.id,
            "role": st.role.value,
            "leader": f"node{st.leader}" if st.leader != NONE else None,
            "leader_id": st.leader,
            "leader_url": self.leader_url(),
            "term": st.term,
            "commit_index": st.commit,
            "applied_index": self.applied,
            # What the database holds (coordinator/checkpoint.py); at most applied_index.
            "checkpoint_index": self.checkpoint.index,
            "last_index": st.last_index,
            "snapshot_index": st.snapshot_index,
            "snapshot_bytes": self.snapshot_bytes,
            "snapshot_records": self.snapshot_records,
            "messages_refused": self.messages_refused,
            "leader_changes": self.leader_changes,
            "messages_dropped": self.transport.dropped,
            # Batches sent to peers by the stream and by POST (coordinator/raft/transport.py).
            "batches_streamed": self.transport.streamed,
            "batches_posted": self.transport.posted,
            "members": members,
        }

    # -- the Raft task --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            with contextlib.suppress(asyncio.QueueFull):
                self.inbox.put_nowait(("tick", None))

    async def _run(self) -> None:
        assert self.core is not None
        while True:
            kind, payload = await self.inbox.get()
            self._handle(kind, payload)
            n = 1
            while n < MAX_EVENTS_PER_ROUND and not self.inbox.empty():
                kind, payload = self.inbox.get_nowait()
                self._handle(kind, payload)
                n += 1
            if self._compact_to is not None:
                index, data = self._compact_to
                self._compact_to = None
                if index > self.core.log.snap_index:
                    self.core.compact(index, data)
            while self.core.has_ready():
                rd = self.core.ready()
                try:
                    await self._process(rd)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Storage failed: nothing of this Ready is durable, so nothing may be
                    # sent. Stop the node rather than continue with a core that believes
                    # otherwise; the process supervisor (or operator) restarts it.
                    log.critical("raft storage failed; stopping this node", exc_info=True)
                    self._fail_pending(LogUnavailable("storage failure"))
                    self.on_fatal()
                    raise
                self.core.advance(rd)
            self._check_removed()

    def _handle(self, kind: str, payload: Any) -> None:
        core = self.core
        assert core is not None
        if kind == "tick":
            core.tick()
            self._ticks += 1
            if self._ticks % PROMOTE_CHECK_TICKS == 0:
                self._promote_caught_up_learners()
        elif kind == "step":
            core.step(payload)
        elif kind == "propose":
            data, fut = payload
            if fut.done():
                return
            try:
                index, term = core.propose(data)
            except CoreNotLeader:
                fut.set_exception(NotLeader(self.leader_url()))
                return
            except ProposalDropped as e:
                fut.set_exception(LogUnavailable(str(e)))
                return
            self.pending[index] = _Pending(term, fut)
        elif kind == "read":
            try:
                core.read_index(payload)
            except CoreNotLeader:
                fut = self.reads.get(payload)
                if fut is not None and not fut.done():
                    fut.set_exception(NotLeader(self.leader_url()))
        elif kind == "transfer":
            to, fut = payload
            try:
                core.transfer_leadership(to)
                fut.set_result(None)
            except (CoreNotLeader, ConfChangeRefused) as e:
                fut.set_exception(e)
        elif kind == "conf":
            change, fut = payload
            try:
                index, term = core.propose_conf_change(change)
                self.pending[index] = _Pending(term, fut)
            except (CoreNotLeader, ConfChangeRefused, ProposalDropped) as e:
                fut.set_exception(e)
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _check_removed(self) -> None:
        core = self.core
        assert core is not None
        members = core.conf.members  # every loop: not the whole status()
        if members and self.id not in members and not self.removed:
            self.removed = True
            log.warning("node %s is no longer a member of the group; stop this process", self.id)

    def _promote_caught_up_learners(self) -> None:
        core = self.core
        assert core is not None
        if core.role is not Role.LEADER:
            return
        for node in sorted(core.status().conf.learners):
            if core.learner_caught_up(node):
                try:
                    core.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, node))
                    log.info("promoting learner %s to voter", node)
                except (ConfChangeRefused, ProposalDropped):
                    pass  # another change in flight, or not yet allowed: next check
                return

    async def _process(self, rd: Ready) -> None:
        """Persist what `rd` asks (then send), and apply its committed entries: in the same
        statement when the applier task is idle, else by queueing them for it (in order). A
        received snapshot is the exception: it replaces the applied state in the same
        transaction as its metadata, after the applier has caught up."""
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        later = rd.messages
        if self._may_send_early(rd):
            # A leader's appends may leave before its own write (Raft thesis §10.2.1): the
            # leader counts its own log toward commitment only once it is durable (after
            # `advance`), so an entry still commits only when a majority has it on disk; and
            # the term these messages carry was made durable when this node campaigned. The
            # followers' fsyncs then overlap the leader's.
            early = [m for m in rd.messages if m.type in EARLY_LEADER_MESSAGES]
            later = [m for m in rd.messages if m.type not in EARLY_LEADER_MESSAGES]
            self.transport.send(early)
        if rd.snapshot is not None:
            await self.apply_queue.join()
            await self._install_snapshot(rd)
            if rd.hard_state is not None:
                self._durable_vote = (rd.hard_state.term, rd.hard_state.vote)
        else:
            hs = rd.hard_state
            if hs is not None and not rd.entries and (hs.term, hs.vote) == self._durable_vote:
                # Only the commit index moved. It need not be durable (Raft's commit index is
                # volatile; a restarted node learns it again), and what was applied is known
                # committed: the stored commit index is read as at least `last_applied`
                # (raft/storage.py). So no write: most Readys of a follower are these.
                hs = None
            if rd.entries or hs is not None:
                params = batch_sql.raft_persist_params(rd.entries, hs)
                await self.persist_db.execute(batch_sql.RAFT_PERSIST, params)
            if hs is not None:
                self._durable_vote = (hs.term, hs.vote)
            if rd.committed and self.apply_queue.empty() and not self._applying:
                # The applier is idle: apply this Ready's committed entries here, in memory
                # (at most MAX_COMMITTED_PER_READY entries, so heartbeats do not wait long).
                await self.checkpoint.room()
                applied = await self._compute_apply(self.persist_db, list(rd.committed))
                if applied is not None:
                    self._finish_apply(applied)
                if self.snapshot_due():
                    self.apply_queue.put_nowait([])  # the applier takes the snapshot
            elif rd.committed:
                await self.apply_queue.put(list(rd.committed))
        # Durable: now messages may go out.
        if later:
            self.transport.send(later)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        for rs in rd.read_states:
            fut = self.reads.get(rs.ctx)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)

    async def _install_snapshot(self, rd: Ready) -> None:
        assert rd.snapshot is not None
        snap = rd.snapshot
        restored = None
        horizon = 0.0
        members: dict[int, str] = {}
        # Frozen: no checkpoint writes between the restore and the reset of what is staged
        # (which the snapshot supersedes).
        async with self.checkpoint.frozen():
            async with self.engine.begin() as conn:
                await storage.save(conn, snap, rd.entries, rd.hard_state)
                if snap.meta.index > self.applied:
                    restored, horizon, extra = await self.store.restore(conn, snap.data)
                    members = members_of(extra)
                    await storage.set_applied(conn, snap.meta.index, snap.meta.term)
                    await storage.save_members(conn, members)
            if restored is not None:
                self.checkpoint.reset(snap.meta.index, snap.meta.term)
        if restored is not None:
            self.urls.update(members)
            self.store.reset_inflight(restored, horizon)
            self.applied = snap.meta.index
            self.snapshot_index = snap.meta.index
            self.snapshot_records = len(restored)
            self.snapshot_bytes = len(snap.data)
            self.log_bytes_since_snapshot = 0
            self._after_applied()

    async def _apply_loop(self) -> None:
        """Apply committed entries in log order, in memory; then answer the proposals and
        reads waiting on them. Also takes snapshots."""
        while True:
            batch = await self.apply_queue.get()
            self._applying = True
            taken = 1
            while len(batch) < MAX_APPLY_BATCH and not self.apply_queue.empty():
                batch += self.apply_queue.get_nowait()
                taken += 1
            try:
                await self._apply(batch)
                await self._maybe_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.critical("applying committed entries failed; stopping this node", exc_info=True)
                self._fail_pending(LogUnavailable("storage failure"))
                self.on_fatal()
                raise
            finally:
                self._applying = False
                for _ in range(taken):
                    self.apply_queue.task_done()

    async def _apply(self, committed: list[Entry]) -> None:
        await self.checkpoint.room()
        batch = await self._compute_apply(self.apply_db, committed)
        if batch is not None:
            self._finish_apply(batch)

    async def _compute_apply(self, db: HotConnection, committed: list[Entry]) -> _ApplyBatch | None:
        """Run the state machine over the entries not applied yet (the pure part, plus reads
        of transactions not in memory); None when there are none. The caller then calls
        `_finish_apply` (no await in between: nothing else may apply meanwhile)."""
        entries = [e for e in committed if e.index > self.applied]
        if not entries:
            return None
        members = _members_in(entries)
        log_entries = _unpack(entries)
        res, changed, rows = await self.store.apply_batch(db, log_entries)
        return _ApplyBatch(entries, log_entries, res, changed, members, rows)

    def _finish_apply(self, b: _ApplyBatch) -> None:
        """Stage the batch for a checkpoint, publish it, answer the proposals waiting on it.
        The entries are durable in the log (of a majority): what a client sees from here on
        survives any crash (DESIGN §3 rule 4)."""
        assert b.entries[0].index == self.applied + 1, (b.entries[0].index, self.applied)
        last = b.entries[-1]
        self.checkpoint.stage(b.changed, b.rows, last.index, last.term, b.members)
        results: dict[int, list[Result]] = {e.index: [] for e in b.entries}
        for le, r in zip(b.log_entries, b.results, strict=True):
            results[le.index].append(r)
        self.urls.update(b.members)
        self.store.publish(b.changed, b.rows.horizon)
        for e in b.entries:
            self.applied = e.index
            self.log_bytes_since_snapshot += len(e.data)
            p = self.pending.pop(e.index, None)
            if p is not None and not p.future.done():
                if p.term == e.term:
                    p.future.set_result(results[e.index])
                else:
                    p.future.set_exception(NotLeader(self.leader_url()))
        self._after_applied()

    def _after_applied(self) -> None:
        if self._leader_ready_index is not None and self.applied >= self._leader_ready_index:
            self._leader_ready_index = None
            self._epoch += 1
            log.info("node %s leads term %s (applied %s)", self.id, self.term, self.applied)
        if self.read_index_waiters:
            still = []
            for index, w in self.read_index_waiters:
                if self.applied >= index:
                    if not w.done():
                        w.set_result(None)
                else:
                    still.append((index, w))
            self.read_index_waiters = still

    def _may_send_early(self, rd: Ready) -> bool:
        return (
            self.role is Role.LEADER
            and rd.snapshot is None
            and (rd.hard_state is None or rd.hard_state.term == self.term)
        )

    def _on_soft_state(self, role: Role, leader: int) -> None:
        was_leader = self.role is Role.LEADER
        self.role, prev_leader, self.leader = role, self.leader, leader
        if leader != prev_leader:
            self.leader_changes += 1
        if role is Role.LEADER and not was_leader:
            assert self.core is not None
            # Lead only once everything committed before this term is applied locally: the
            # new leader's empty entry is the last one in its log right now.
            self._leader_ready_index = self.core.status().last_index
        elif was_leader and role is not Role.LEADER:
            self._leader_ready_index = None
            self._epoch += 1
            log.info("node %s lost leadership (leader now %s)", self.id, leader or "unknown")
            # Their entries may still commit under the new leader; the callers retry, and
            # every command is idempotent.
            self._fail_pending(NotLeader(self.leader_url()))

    def _fail_pending(self, exc: Exception) -> None:
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self.pending.clear()
        for fut in self.reads.values():
            if not fut.done():
                fut.set_exception(exc)

    def snapshot_due(self) -> bool:
        """Whether enough applied entries follow the last snapshot to take the next one: at
        least `snapshot_entries`, and then at least as many as the last snapshot held
        records, or SNAPSHOT_MAX_LOG_BYTES of entries, whichever comes first.

        Why: a snapshot is the whole applied state (every transaction ever recorded: finished
        ones are kept), so its cost grows with the table. At a fixed interval, total snapshot
        work grew with the square of the transactions recorded; with the interval at least
        the snapshot's size, each applied entry pays for at most one record's share. But the
        log between snapshots is held in memory (and read back at start-up): the byte bound
        keeps it from growing with the state; past it, snapshots cost more per entry again
        (see the README's note on state growth)."""
        since = self.applied - self.snapshot_index
        if since < self.snapshot_entries:
            return False
        return since >= self.snapshot_records or (
            self.log_bytes_since_snapshot >= SNAPSHOT_MAX_LOG_BYTES
        )

    async def _maybe_snapshot(self) -> None:
        """Start a snapshot once `snapshot_due`, unless one is being taken: it runs beside
        applying (`_snapshot`), so neither the applier nor checkpoints wait for the dump."""
        if not self.snapshot_due():
            return
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        self._snapshot_task = asyncio.create_task(self._snapshot(), name="raft-snapshot")

    async def snapshot_settled(self) -> None:
        """Wait for the snapshot being taken, if any (tests, stop)."""
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)

    async def _snapshot(self) -> None:
        try:
            await self._take_snapshot()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing is lost: the log keeps its entries and the next due check tries again.
            log.exception("node %s: snapshot failed; the log is not compacted", self.id)

    async def _take_snapshot(self) -> None:
        """Compact the log up to a checkpoint. The checkpoint lock is held only to write the
        checkpoint and pin a REPEATABLE READ view of it (PostgreSQL's MVCC then keeps that
        state for the dump while later checkpoints write); the dump streams from that view,
        and the lock is taken again, briefly, to save the snapshot and drop the log before
        it, unless a snapshot installed meanwhile went further."""
        core = self.core
        assert core is not None
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            await conn.begin()
            async with self.checkpoint.frozen() as (index, _):
                term = core.log.term(index)
                assert term is not None, f"checkpointed entry {index} is not in the log"
                conf = core.log.conf_at(index)
                pinned = await conn.scalar(select(schema.applied_state.c.last_applied))
                assert pinned == index, (pinned, index)
                members = {str(k): v for k, v in sorted(self.urls.items())}
            data, records = await self.store.dump(conn, {"members": members})
        finally:
            await conn.close()
        snap = Snapshot(SnapshotMeta(index, term, conf), data)
        async with self.checkpoint.frozen():
            if index <= self.snapshot_index:
                return  # a snapshot from the leader was installed meanwhile, further on
            async with self.engine.begin() as wconn:
                await storage.compact(wconn, snap)
            # The core is the Raft loop's: it drops its log prefix there, between two Readys
            # (its next round: a tick comes every tick_s).
            self._compact_to = (index, data)
            self.snapshot_index = index
            self.snapshot_records = records
            self.snapshot_bytes = len(data)
            self.log_bytes_since_snapshot = 0
        log.info(
            "node %s compacted its log up to %s (term %s, %d bytes, %d records)",
            self.id,
            index,
            term,
            len(data),
            records,
        )


def _terminate_process() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


MEMBER_PREFIX = b'{"member"'


def encode_member(node: int, url: str) -> bytes:
    """A NORMAL entry that records a member's address (command batches are JSON lists)."""
    return json.dumps({"member": {"id": node, "url": url}}).encode()


def _members_in(entries: list[Entry]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in entries:
        if e.kind is EntryKind.NORMAL and e.data.startswith(MEMBER_PREFIX):
            m = json.loads(e.data)["member"]
            out[int(m["id"])] = str(m["url"])
    return out


def snapshot_members(data: bytes) -> dict[int, str]:
    if not data:
        return {}
    return members_of(orjson.loads(snapshot_codec.unpack(data)))


def members_of(doc: dict[str, Any]) -> dict[int, str]:
    """The member addresses a snapshot's document carries."""
    return {int(k): str(v) for k, v in doc.get("members", {}).items()}


def _applied_term(state: PersistentState) -> int:
    """The term of the entry at `state.applied` (what the database's checkpoint holds)."""
    if state.applied == state.snapshot.meta.index:
        return state.snapshot.meta.term
    for e in state.entries:
        if e.index == state.applied:
            return e.term
    return 0  # nothing applied yet


def _unpack(entries: list[Entry]) -> list[LogEntry]:
    """The 2PC commands carried by committed entries, in log order."""
    out: list[LogEntry] = []
    for e in entries:
        if e.kind is not EntryKind.NORMAL or not e.data or e.data.startswith(MEMBER_PREFIX):
            continue
        for seq, cmd in enumerate(decode_batch(e.data)):
            out.append(LogEntry(e.index, e.term, cmd, seq))
    return out
