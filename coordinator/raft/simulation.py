"""Deterministic simulation of a txc Raft group running the real 2PC state machine.

One seed fixes everything: cluster size, fault rates, the network's drops, duplicates and
delays, partitions, crashes (also in the middle of handling a Ready: between writes, after
the sync, after sending), pauses, leadership transfers, membership changes, compactions and
the clients' transactions. A chaos phase is followed by a calm one (network healed, crashed
nodes restarted, no new faults) in which a leader must be elected and every transaction must
end within LIVENESS_MS of virtual time. Safety invariants (`simcheck`) run after every step.

Retention runs as on a node (coordinator/retention.py), in virtual time: every leader, stale
ones included, proposes `Forget` for the records its applied state shows finished more than
the seed's retention ago (in bounded batches) and `PurgeTombstones` for tombstones older than
the tombstone retention. These go through Raft like client commands, so they are lost,
repeated and re-proposed after leader changes. Late askers (simclients) come back after a
transaction is done and must get its decision, from the record or its tombstone.

    python -m coordinator.raft.simulation --seeds 5000 [--start N]
    python -m coordinator.raft.simulation --seed S --verbose
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from coordinator.commands import (
    Ack,
    Command,
    Decide,
    Forget,
    PurgeTombstones,
    decode_batch,
    encode_batch,
)
from coordinator.model import Outcome, Transaction
from coordinator.raft.config import RaftConfig
from coordinator.raft.core import RaftNode
from coordinator.raft.errors import ConfChangeRefused, NotLeader, ProposalDropped
from coordinator.raft.messages import ConfChange, ConfChangeOp, EntryKind, Message, MsgType
from coordinator.raft.ready import PersistentState, Ready, Role
from coordinator.raft.simcheck import Checker, InvariantViolation
from coordinator.raft.simclients import (
    ASK_PATIENCE_MS,
    CLIENT_RETRY_MS,
    PARTICIPANTS,
    Ask,
    LateAsker,
    SimTxn,
    late_askers,
    new_txn,
    pending_acks,
    step_done,
)
from coordinator.raft.simnet import NetParams, SimNet
from coordinator.raft.simstore import SimStore
from coordinator.statemachine import Machine, Result

TICK_MS = 10  # one Raft tick of virtual time
ELECTION_TICKS = 10
HEARTBEAT_TICKS = 2
READ_EVERY_MS = 50
FAULT_EVERY_MS = 60  # mean time between fault draws during chaos
LIVENESS_MS = 8_000  # after the chaos phase, everything must end within this
FULL_CHECK_EVERY = 500  # steps between whole-log checks
MAX_STEPS = 400_000  # a bound on one run, so a livelocked simulation stops
RETENTION_EVERY_MS = 50  # a leader's retention pass (coordinator/retention.py: every second)
RETENTION_RESEND_MS = 200  # a leader re-proposes what it does not see applied after this
MAX_FORGET_PROPOSALS_PER_PASS = 2  # entries of Forget commands per pass (the batch: per seed)
# A purge is proposed once the horizon lags the due one by this share of the tombstone
# retention (coordinator/retention.py `purge_before`, with a coarser step).
PURGE_STEP_SHARE = 0.1
# Late askers that wait for the record to be forgotten do so only if that happens before
# calm + this: the run waits for its askers, and must not last much longer for them.
LATE_CALM_MS = 100


class SimulationFailure(AssertionError):
    pass


def replay_command(seed: int) -> str:
    return f"python -m coordinator.raft.simulation --seed {seed} --verbose"


@dataclass(frozen=True)
class SimParams:
    seed: int
    nodes: int
    chaos_ms: int
    txns: int
    net: NetParams
    crash_p: float  # per fault draw
    partition_p: float
    pause_p: float
    transfer_p: float
    membership_p: float
    ready_crash_p: float  # per Ready handled: crash somewhere inside it
    compact_every: int  # entries applied between snapshots
    max_entries_per_msg: int
    max_inflight_msgs: int
    retention_ms: int  # a finished record is forgotten this long after it finished
    tombstone_retention_ms: int  # a tombstone is purged this long after it was forgotten
    forget_batch: int  # Forget commands per log entry, at most

    @classmethod
    def from_seed(cls, seed: int) -> SimParams:
        r = random.Random(seed * 7919 + 17)
        return cls(
            seed=seed,
            nodes=3 if seed % 2 == 0 else 5,
            chaos_ms=r.randint(600, 1500),
            txns=r.randint(3, 8),
            net=NetParams(
                min_delay_ms=1,
                max_delay_ms=r.choice([3, 8, 20]),
                drop_p=r.choice([0.0, 0.02, 0.1]),
                dup_p=r.choice([0.0, 0.02, 0.05]),
                json_p=0.05,
            ),
            crash_p=r.choice([0.0, 0.1, 0.25]),
            partition_p=r.choice([0.0, 0.1, 0.2]),
            pause_p=r.choice([0.0, 0.05]),
            transfer_p=r.choice([0.0, 0.05]),
            membership_p=r.choice([0.0, 0.1, 0.3]),
            ready_crash_p=r.choice([0.0, 0.002, 0.01]),
            compact_every=r.choice([5, 20, 1000]),
            max_entries_per_msg=r.choice([1, 4, 64]),
            max_inflight_msgs=r.choice([1, 4, 64]),
            # Drawn last, so that the earlier parameters of a seed stay what they were.
            retention_ms=r.choice([100, 150, 250, 500, 1000, 2000]),
            tombstone_retention_ms=r.choice([300, 600, 1500]),
            forget_batch=r.choice([1, 3, 8]),
        )


@dataclass
class SimNode:
    id: int
    store: SimStore
    raft: RaftNode | None = None  # None while crashed
    paused_until: int = 0
    machine: Machine = field(default_factory=Machine)
    applied: int = 0
    # Retention as leader (process memory: lost on a crash): when each Forget and the last
    # purge were proposed, so that what is in flight is not proposed again at every pass.
    forget_sent: dict[str, int] = field(default_factory=dict)
    purge_sent: int = -RETENTION_RESEND_MS

    @property
    def up(self) -> bool:
        return self.raft is not None


@dataclass
class Stats:
    steps: int = 0
    elections: int = 0
    crashes: int = 0
    ready_crashes: int = 0
    partitions: int = 0
    pauses: int = 0
    transfers: int = 0
    conf_changes: int = 0
    promotions: int = 0
    snapshots_sent: int = 0
    compactions: int = 0
    reads_answered: int = 0
    committed: int = 0
    aborted: int = 0
    heal_to_done_ms: int = 0
    forget_proposals: int = 0
    purge_proposals: int = 0
    forgotten: int = 0  # records that became tombstones
    purged: int = 0  # tombstones dropped
    late_asks: int = 0
    late_answers: int = 0
    late_tombstone_answers: int = 0  # answered from a tombstone: the point of the check
    late_after_purge: int = 0  # applied after the purge: a new life, not compared
    late_unanswered: int = 0  # gave up (chaos) before the tombstone could be purged
    # The worst of a run (and, added up, of a campaign): how close liveness came to its bound,
    # and the longest uncommitted tail of a leader's log (proposals outgrowing the log, or a
    # leader cut off from its group during the chaos).
    max_heal_to_done_ms: int = 0
    max_uncommitted: int = 0

    def add(self, other: Stats) -> None:
        """Fold another run's figures in: counts add up, the `max_` figures keep the worst."""
        for k, v in vars(other).items():
            mine = getattr(self, k)
            setattr(self, k, max(mine, v) if k.startswith("max_") else mine + v)


class Simulation:
    def __init__(self, params: SimParams, verbose: bool = False) -> None:
        self.p = params
        self.verbose = verbose
        self.rng = random.Random(params.seed)
        self.now = 0
        self.stats = Stats()
        self.check = Checker()
        self.net = SimNet(self.rng, params.net)
        self.ids = list(range(1, params.nodes + 1))
        boot = PersistentState.bootstrap(frozenset(self.ids))
        self.nodes = {
            i: SimNode(i, SimStore(boot.snapshot, boot.hard_state, list(boot.entries)))
            for i in self.ids
        }
        self.events: list[tuple[int, int, str, Any]] = []
        self._seq = 0
        self.txns: list[SimTxn] = []
        self.reads: dict[bytes, int] = {}  # ctx -> commit watermark when asked
        self.askers: list[LateAsker] = []
        self.asking: dict[bytes, LateAsker] = {}  # an asker's proposed entry -> the asker
        self.calm = False
        self.touched: set[int] = set()  # nodes that handled a Ready in this step
        for i in self.ids:
            self._start(i)
            self._at(self.rng.randint(0, TICK_MS - 1), "tick", i)
        for n in range(params.txns):
            start = self.rng.randint(0, int(params.chaos_ms * 0.8))
            self._at(start, "txn", n)
        self._at(self.rng.randint(1, READ_EVERY_MS), "read", None)
        self._at(self.rng.randint(1, FAULT_EVERY_MS), "fault", None)
        self._at(self.rng.randint(1, RETENTION_EVERY_MS), "retention", None)
        self._at(params.chaos_ms, "calm", None)

    # -- event queue ---------------------------------------------------------------------

    def _at(self, t: int, kind: str, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, arg))

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"{self.now:7d} {text}")

    def run(self) -> Stats:
        deadline = self.p.chaos_ms + LIVENESS_MS
        while self.events:
            t, _, kind, arg = heapq.heappop(self.events)
            if t > deadline:
                break
            self.now = t
            self._handle(kind, arg)
            self.stats.steps += 1
            if self.stats.steps > MAX_STEPS:
                raise InvariantViolation(f"more than {MAX_STEPS} steps")
            if self.touched:
                # Only the nodes that handled a Ready in this step: a node's term, role and
                # commit index change only with one (its hard or soft state), so the others'
                # checks would find nothing new; `_full_check` checks every node anyway.
                self.check.check_nodes(
                    {i: r for i in self.touched if (r := self.nodes[i].raft) is not None}
                )
                self.touched.clear()
            if self.stats.steps % FULL_CHECK_EVERY == 0:
                self._full_check()
            if self.calm and self._all_done():
                self.stats.heal_to_done_ms = self.now - self.p.chaos_ms
                self.stats.max_heal_to_done_ms = self.stats.heal_to_done_ms
                self.stats.late_unanswered = sum(1 for a in self.askers if not a.answer)
                self._full_check()
                self._check_converged()
                return self.stats
        unfinished = [t.txid for t in self.txns if t.finished_ms is None]
        leaders = [i for i, n in self.nodes.items() if n.raft and n.raft.role is Role.LEADER]
        raise InvariantViolation(
            f"liveness: {len(unfinished)} transactions unfinished {LIVENESS_MS} ms after the "
            f"network healed ({unfinished[:5]}); leaders now: {leaders}; "
            f"{self.p.txns - len(self.txns)} never started"
        )

    def _all_done(self) -> bool:
        return (
            len(self.txns) == self.p.txns
            and all(t.finished_ms is not None for t in self.txns)
            and all(a.answer or self.now > a.until_ms for a in self.askers)
        )

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "tick":
            self._tick(arg)
        elif kind == "deliver":
            self._deliver(arg)
        elif kind == "txn":
            txn = new_txn(self.rng, arg, self.now, self.ids)
            self.txns.append(txn)
            self.log(f"client starts {txn.txid} votes={dict(txn.votes)} want={txn.want}")
            self._at(self.now, "client", txn)
        elif kind == "client":
            self._client(arg)
        elif kind == "read":
            self._read()
        elif kind == "retention":
            self._retention()
        elif kind == "late":
            self._late(arg)
        elif kind == "fault":
            if not self.calm:
                self._fault()
                self._at(self.now + self.rng.randint(1, 2 * FAULT_EVERY_MS), "fault", None)
        elif kind == "restart":
            self._start(arg)
        elif kind == "heal":
            if not self.calm:
                self.log("network heals")
                self.net.heal()
        elif kind == "calm":
            self._calm()
        else:  # pragma: no cover
            raise AssertionError(kind)

    # -- nodes -----------------------------------------------------------------------------

    def _config(self, i: int) -> RaftConfig:
        return RaftConfig(
            id=i,
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
            max_entries_per_msg=self.p.max_entries_per_msg,
            max_inflight_msgs=self.p.max_inflight_msgs,
            snapshot_retry_ticks=2 * ELECTION_TICKS,
        )

    def _start(self, i: int) -> None:
        node = self.nodes[i]
        if node.up:
            return
        state = node.store.restore()
        node.raft = RaftNode(self._config(i), state, random.Random(self.rng.random()))
        node.machine = _machine_from(state.snapshot.data)
        node.applied = state.snapshot.meta.index
        node.paused_until = 0
        node.forget_sent = {}
        node.purge_sent = -RETENTION_RESEND_MS
        self.check.on_restart(i, node.raft)
        self.check.check_machine(node.machine, node.applied, f"node {i} restored")
        self.log(
            f"node {i} starts: term={state.hard_state.term} vote={state.hard_state.vote} "
            f"commit={state.hard_state.commit} last={node.store.last_index()}"
        )

    def _crash(self, i: int, why: str) -> None:
        node = self.nodes[i]
        node.raft = None
        self.stats.crashes += 1
        self.log(f"node {i} crashes ({why})")
        if self.calm:
            self._at(self.now + 1, "restart", i)
        else:
            self._at(self.now + self.rng.randint(20, 400), "restart", i)

    def _live(self, i: int) -> RaftNode | None:
        node = self.nodes[i]
        if node.raft is None or node.paused_until > self.now:
            return None
        return node.raft

    def _tick(self, i: int) -> None:
        self._at(self.now + TICK_MS, "tick", i)
        raft = self._live(i)
        if raft is None:
            return
        raft.tick()
        self._drain(i)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.dst]
        if node.raft is None or not self.net.connected(m.src, m.dst):
            return
        if node.paused_until > self.now:
            self._at(node.paused_until, "deliver", m)  # a paused process reads its socket later
            return
        if self.verbose:
            self.log(f"{m.src}->{m.dst} {_show(m)}")
        node.raft.step(m)
        self._drain(m.dst)

    def _drain(self, i: int) -> None:
        """The shell's Ready loop: persist, sync, send, apply, advance (crashes anywhere)."""
        node = self.nodes[i]
        while node.raft is not None and node.raft.has_ready():
            raft = node.raft
            rd = raft.ready()
            self._observe(raft, rd)
            crash = not self.calm and self.rng.random() < self.p.ready_crash_p
            point = self.rng.randrange(4) if crash else -1
            if point == 0:  # some writes reached the disk, the sync did not happen
                node.store.write(rd, durable_ops=self.rng.randrange(3))
                self.stats.ready_crashes += 1
                self._crash(i, "before sync")
                return
            node.store.write(rd)
            if point == 1:
                self.stats.ready_crashes += 1
                self._crash(i, "after sync, before send")
                return
            for m in rd.messages:
                self.check.on_send(m)
                if m.type is MsgType.SNAPSHOT:
                    self.stats.snapshots_sent += 1
                for at, mm in self.net.route(m, self.now):
                    self._at(at, "deliver", mm)
            if point == 2:
                self.stats.ready_crashes += 1
                self._crash(i, "after send, before apply")
                return
            self._apply(node, rd)
            raft.advance(rd)
            self._maybe_compact(node)
            if point == 3:
                self.stats.ready_crashes += 1
                self._crash(i, "after advance")
                return

    def _observe(self, raft: RaftNode, rd: Ready) -> None:
        self.touched.add(raft.id)
        if raft.role is Role.LEADER:
            tail = raft.log.last_index() - raft.log.commit
            self.stats.max_uncommitted = max(self.stats.max_uncommitted, tail)
        if rd.entries:
            self.check.on_persist(raft, rd.entries)
        if rd.soft_state is not None:
            self.log(
                f"node {raft.id} is {rd.soft_state.role} "
                f"(leader {rd.soft_state.leader}, term {raft.term})"
            )
            if rd.soft_state.role is Role.LEADER:
                self.stats.elections += 1
                self.check.on_leader(raft)
        for rs in rd.read_states:
            watermark = self.reads.pop(rs.ctx, None)
            if watermark is not None:
                self.check.on_read(raft.id, rs.ctx, rs.index, watermark)
                self.stats.reads_answered += 1

    def _apply(self, node: SimNode, rd: Ready) -> None:
        if rd.snapshot is not None:
            node.machine = _machine_from(rd.snapshot.data)
            node.applied = rd.snapshot.meta.index
            self.log(f"node {node.id} installs snapshot at {node.applied}")
            self.check.check_machine(node.machine, node.applied, f"node {node.id} installed")
        for e in rd.committed:
            if e.index <= node.applied:
                continue
            assert e.index == node.applied + 1, (e.index, node.applied)
            assert node.raft is not None
            self.check.on_apply(node.raft, e)
            node.applied = e.index
            if e.kind is EntryKind.NORMAL:
                self._apply_entry(node, e.index, e.data)

    def _apply_entry(self, node: SimNode, index: int, data: bytes) -> None:
        """One entry's commands, applied in order. The txid each one touches is checked
        against its first decision: a node's state changes only here (and when restored or
        installing a snapshot, which `check_machine` checks whole), so every txid a node
        knows shows its first decision after every step."""
        who = f"node {node.id}"
        m = node.machine
        results: list[Result] = []
        cmds = decode_batch(data)
        for cmd in cmds:
            if isinstance(cmd, PurgeTombstones):
                # Alone in its entry (see `_retain`), so that "after the purge" is "from
                # its index on", which is how simcheck tells a txid's lives apart.
                assert len(cmds) == 1, cmds
                known = set(m.transactions)
                results.append(m.apply(cmd))
                dropped = frozenset(known - m.transactions.keys())
                if self.check.on_purge(index, dropped, m.tombstone_horizon, who):
                    self.stats.purged += len(dropped)
                    if dropped:
                        self.log(f"{who} purges tombstones {sorted(dropped)}")
                continue
            result = m.apply(cmd)
            results.append(result)
            txn = result.txn
            if txn is not None and txn.outcome is not None:
                self.check.on_outcome(txn.txid, txn.outcome, who, index)
            if isinstance(cmd, Forget) and result.changed:
                if self.check.on_forget(cmd.txid, index):
                    self.stats.forgotten += 1
                    self.log(f"{who} forgets {cmd.txid}")
        asker = self.asking.get(data)
        if asker is not None:
            answer = self.check.on_answer(asker.kind, asker.txid, results, who, index)
            self._answered(asker, answer)

    def _answered(self, asker: LateAsker, answer: str) -> None:
        if asker.answer:
            return
        asker.answer = answer
        self.stats.late_answers += 1
        self.stats.late_tombstone_answers += answer == "tombstone"
        self.stats.late_after_purge += answer == "purged"
        self.log(f"late {asker.kind} of {asker.txid} answered from its {answer}")

    def _maybe_compact(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        log = raft.log
        if node.applied - log.snap_index < self.p.compact_every:
            return
        if node.applied != log.applied or node.applied > log.stable_last:
            return
        raft.compact(node.applied, _machine_data(node.machine))
        node.store.save_snapshot(log.snapshot)
        self.stats.compactions += 1

    # -- retention (the leader's) ----------------------------------------------------------

    def _retention(self) -> None:
        self._at(self.now + RETENTION_EVERY_MS, "retention", None)
        for node in self.nodes.values():
            raft = self._live(node.id)
            if raft is not None and raft.role is Role.LEADER:
                self._retain(node, raft)

    def _retain(self, node: SimNode, raft: RaftNode) -> None:
        """One pass of a leader's retention (coordinator/retention.py `run_once`): what its
        applied state shows finished before now - retention is forgotten, in bounded
        batches; a purge is proposed when due. The state machine checks again when they
        are applied, so a stale leader's or a lagging state's choice does no harm."""
        now_s = self.now / 1000.0
        due = now_s - self.p.retention_ms / 1000.0
        resend = self.now - RETENTION_RESEND_MS
        todo = sorted(
            (t.updated_at, txid)
            for txid, t in node.machine.transactions.items()
            if t.forgotten_at is None
            and t.finished
            and t.updated_at < due
            and node.forget_sent.get(txid, resend) <= resend
        )
        batch = self.p.forget_batch
        for k in range(0, min(len(todo), batch * MAX_FORGET_PROPOSALS_PER_PASS), batch):
            txids = [txid for _, txid in todo[k : k + batch]]
            if not self._leader_proposes(raft, [Forget(txid, now_s) for txid in txids]):
                return
            self.stats.forget_proposals += 1
            for txid in txids:
                node.forget_sent[txid] = self.now
        before = now_s - self.p.tombstone_retention_ms / 1000.0
        step = PURGE_STEP_SHARE * self.p.tombstone_retention_ms / 1000.0
        if (
            before - node.machine.tombstone_horizon >= step
            and node.purge_sent <= resend
            # Unlike a node (which moves the horizon on schedule), only when a tombstone
            # is due: fewer entries, and the same horizon moves when there is something.
            and any(
                t.forgotten_at is not None and t.forgotten_at < before
                for t in node.machine.transactions.values()
            )
        ):
            # Alone in its entry: simcheck's lives of a txid change at a purge's index.
            if self._leader_proposes(raft, [PurgeTombstones(txid="", at=now_s, before=before)]):
                self.stats.purge_proposals += 1
                node.purge_sent = self.now

    def _leader_proposes(self, raft: RaftNode, cmds: list[Command]) -> bool:
        if self.nodes[raft.id].raft is not raft:
            return False  # it crashed in this pass
        try:
            raft.propose(encode_batch(cmds))
        except (NotLeader, ProposalDropped):
            return False
        self.log(f"leader {raft.id} proposes {cmds[0].kind} x{len(cmds)}")
        self._drain(raft.id)
        return True

    # -- clients ---------------------------------------------------------------------------

    def _client(self, txn: SimTxn) -> None:
        at = self.now / 1000.0
        node, view = self._view(txn.txid, best=True)
        if view is None and node is not None and self.check.life(txn.txid, node.applied):
            # Decided, finished, forgotten and purged before this client looked again (its
            # nodes were all down for that long): it ended. Re-proposing its steps now
            # would start a new transaction with the same txid.
            self._finished(txn, self.check.decision(txn.txid), None)
            return
        steps = txn.steps(at)
        while txn.step < len(steps) and step_done(txn.step, view):
            txn.step += 1
        if view is not None and view.outcome is None and at >= view.expires_at:
            # Expired: enlisting is refused now, so the coordinator's timeout aborts it.
            txn.want, txn.step = Outcome.ABORT, len(steps) - 1
            steps = txn.steps(at)
        decided = view is not None and view.outcome is not None
        if decided:
            self._participants_learn(txn)
            if txn.finished_ms is not None:
                return
        elif txn.step < len(steps):
            self._retry(txn, txn.step, [steps[txn.step]])
        if (
            txn.rival_abort_at is not None
            and self.now >= txn.rival_abort_at
            # A timeout sweep or an operator aborts what it sees undecided: once the decision
            # shows, it stops (its proposals still in the log are applied after it).
            and not decided
            and (not txn.rival_sent or self.rng.random() < 0.3)
        ):
            txn.rival_sent = True
            self._propose(txn, [Decide(txn.txid, at, outcome=Outcome.ABORT, reason="rival")])
        self._at(self.now + self.rng.randint(CLIENT_RETRY_MS // 2, CLIENT_RETRY_MS), "client", txn)

    def _participants_learn(self, txn: SimTxn) -> None:
        """Each participant asks a random node; a node that has not applied the decision
        yet says nothing. Those that know acknowledge, together in one entry (as the engine's
        phase-2 round proposes all its acknowledgements at once), re-proposed with the
        client's backoff until the transaction completes."""
        for name in PARTICIPANTS:
            if name in txn.local:
                continue
            node, t = self._view(txn.txid, best=False)
            if node is not None and t is not None and t.outcome is not None:
                txn.local[name] = t.outcome
                self.check.on_local(txn.txid, name, t.outcome, txn.votes[name], node.applied)
                self.log(f"participant {name} of {txn.txid} does {t.outcome}")
        _, best = self._view(txn.txid, best=True)
        assert best is not None
        if best.state.terminal:
            assert best.completed_at is not None
            self._finished(txn, best.outcome, best.completed_at)
            return
        names = [name for name in pending_acks(best) if name in txn.local]
        if names:
            at = self.now / 1000.0
            self._retry(txn, frozenset(names), [Ack(txn.txid, at, name=name) for name in names])

    def _retry(self, txn: SimTxn, what: Hashable, cmds: list[Command]) -> None:
        """Propose `cmds` (for `what`: a step, the acknowledgements) when the client's backoff
        allows; a repeat of a forwarded proposal goes to where it was forwarded (`_redirect`)."""
        if not txn.retry_due(what, self.now):
            return
        if txn.attempts > 1:
            _redirect(txn)
        self._propose(txn, cmds)

    def _finished(self, txn: SimTxn, outcome: Outcome | None, completed_s: float | None) -> None:
        """The client saw its transaction end (`completed_s`: when its record completed, also
        kept by its tombstone; None when it was purged already)."""
        txn.finished_ms = self.now
        if outcome is Outcome.COMMIT:
            self.stats.committed += 1
        else:
            self.stats.aborted += 1
        if completed_s is None:
            return  # too late for late askers
        # Who comes back, and when. Not after the tombstone may be purged: a leader forgets
        # a record more than the retention after it last changed (at or after it completed)
        # and purges a tombstone more than the tombstone retention after it was forgotten,
        # so until completed + retention + tombstone retention it lives; the askers stop
        # half a tombstone retention before that, leaving time for their commands to be
        # applied. One applied later still is not compared (simcheck: a purged txid's new
        # life) and is counted in `late_after_purge`, which stays 0 in practice.
        completed_ms = int(completed_s * 1000)
        forget_ms = completed_ms + self.p.retention_ms + RETENTION_EVERY_MS
        safe_ms = completed_ms + self.p.retention_ms + self.p.tombstone_retention_ms // 2
        for a in late_askers(
            self.rng,
            txn,
            self.now,
            forget_ms,
            safe_ms,
            self.p.chaos_ms + LATE_CALM_MS,
            self.ids,
        ):
            self.askers.append(a)
            self.stats.late_asks += 1
            self._at(a.ask_ms, "late", a)

    def _late(self, a: LateAsker) -> None:
        """A late asker asks (again), until answered or it is too late to ask."""
        if a.answer:
            return
        if self.now > a.until_ms:
            # Its proposals may still be applied (and answer it, checked all the same).
            self.log(f"late {a.kind} of {a.txid} gives up")
            return
        if a.kind is Ask.OUTCOME and a.read_first:
            # Engine.outcome: the outcome if the node knows it, a proposal otherwise.
            node, t = self._view(a.txid, best=False)
            if node is not None and t is not None and t.outcome is not None:
                answer = self.check.on_read_answer(t, f"node {node.id}", node.applied)
                self._answered(a, answer)
                return
        if self.now - a.proposed_at >= a.backoff_ms:
            _redirect(a)
            a.proposed_at = self.now
            a.backoff_ms = min(2 * max(a.backoff_ms, CLIENT_RETRY_MS // 2), ASK_PATIENCE_MS)
            data = self._propose(a, a.commands(self.now / 1000.0))
            if data is not None:
                self.asking[data] = a
        if not a.answer:
            self._at(self.now + self.rng.randint(CLIENT_RETRY_MS // 2, CLIENT_RETRY_MS), "late", a)

    def _view(self, txid: str, best: bool) -> tuple[SimNode | None, Transaction | None]:
        """A node (the one that applied most, or any) and what it holds of `txid`."""
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            return None, None
        node = max(up, key=lambda n: (n.applied, n.id)) if best else self.rng.choice(up)
        return node, node.machine.transactions.get(txid)

    def _propose(self, who: SimTxn | LateAsker, cmds: list[Command]) -> bytes | None:
        """Propose one entry through the node `who` talks to (or forward it from there);
        returns the entry's data, or None when that node is down."""
        raft = self._live(who.target)
        if raft is None:
            who.target = self.rng.choice(self.ids)
            return None
        data = encode_batch(cmds)
        try:
            who.forwarded_to = 0
            if raft.role is Role.LEADER:
                raft.propose(data)
            elif raft.leader != 0 and self.rng.random() < 0.5:
                raft.forward_proposal(data)
                who.forwarded_to = raft.leader
            else:
                raise NotLeader(raft.leader)
        except NotLeader as e:
            who.target = e.leader_hint or self.rng.choice(self.ids)
            who.proposed_at = 0  # not proposed: try the hinted node at the next round
        except ProposalDropped:
            pass
        self.log(f"client proposes {'+'.join(c.kind for c in cmds)} {cmds[0].txid} via {raft.id}")
        self._drain(raft.id)
        return data

    def _read(self) -> None:
        self._at(self.now + self.rng.randint(1, READ_EVERY_MS), "read", None)
        i = self.rng.choice(self.ids)
        raft = self._live(i)
        if raft is None:
            return
        ctx = f"read-{self.now}-{i}-{self.rng.random()}".encode()
        try:
            raft.read_index(ctx)
        except NotLeader:
            return
        self.reads[ctx] = self.check.max_commit
        self._drain(i)

    # -- faults ----------------------------------------------------------------------------

    def _fault(self) -> None:
        r = self.rng.random()
        p = self.p
        if r < p.crash_p:
            i = self.rng.choice(self.ids)
            if self.nodes[i].up:
                self._crash(i, "fault")
        elif r < p.crash_p + p.partition_p:
            shuffled = self.ids[:]
            self.rng.shuffle(shuffled)
            cut = self.rng.randint(1, len(shuffled) - 1)
            groups = [shuffled[:cut], shuffled[cut:]]
            self.net.partition(groups)
            self.stats.partitions += 1
            self.log(f"network partition {groups}")
            self._at(self.now + self.rng.randint(50, 600), "heal", None)
        elif r < p.crash_p + p.partition_p + p.pause_p:
            i = self.rng.choice(self.ids)
            node = self.nodes[i]
            if node.up and node.paused_until <= self.now:
                node.paused_until = self.now + self.rng.randint(50, 500)
                self.stats.pauses += 1
                self.log(f"node {i} pauses until {node.paused_until}")
        elif r < p.crash_p + p.partition_p + p.pause_p + p.transfer_p:
            leader = self._leader()
            if leader is not None:
                to = self.rng.choice(sorted(leader.conf.voters))
                try:
                    leader.transfer_leadership(to)
                    self.stats.transfers += 1
                    self.log(f"leader {leader.id} transfers leadership to {to}")
                except (NotLeader, ConfChangeRefused):
                    pass
                self._drain(leader.id)
        elif r < p.crash_p + p.partition_p + p.pause_p + p.transfer_p + p.membership_p:
            self._membership()

    def _membership(self) -> None:
        """An operator cycles one node out and back in: remove, add as learner, promote."""
        leader = self._leader()
        if leader is None:
            return
        conf = leader.conf
        others = sorted(set(self.ids) - conf.members)
        if conf.learners:
            cc = ConfChange(ConfChangeOp.PROMOTE, min(conf.learners))
        elif others:
            cc = ConfChange(ConfChangeOp.ADD_LEARNER, others[0])
        elif len(conf.voters) >= 3:
            cc = ConfChange(ConfChangeOp.REMOVE, self.rng.choice(sorted(conf.voters - {leader.id})))
        else:
            return
        try:
            leader.propose_conf_change(cc)
            self.stats.conf_changes += 1
            self.stats.promotions += cc.op is ConfChangeOp.PROMOTE
            self.log(f"leader {leader.id} proposes {cc.op} {cc.node}")
        except (ConfChangeRefused, ProposalDropped, NotLeader) as e:
            self.log(f"leader {leader.id} refuses {cc.op} {cc.node}: {e}")
        self._drain(leader.id)

    def _leader(self) -> RaftNode | None:
        leaders = [
            n.raft for n in self.nodes.values() if n.raft is not None and n.raft.role is Role.LEADER
        ]
        return max(leaders, key=lambda r: r.term) if leaders else None

    def _calm(self) -> None:
        self.log("calm: network heals, crashed nodes restart, faults stop")
        self.calm = True
        self.net.heal()
        self.net.params = NetParams(
            self.p.net.min_delay_ms,
            self.p.net.max_delay_ms,
            0.0,
            self.p.net.dup_p,
            self.p.net.json_p,
        )
        for node in self.nodes.values():
            node.paused_until = 0
            if not node.up:
                self._start(node.id)

    # -- end of run -----------------------------------------------------------------------

    def _full_check(self) -> None:
        up = {i: n.raft for i, n in self.nodes.items() if n.raft is not None}
        self.check.check_nodes(up)
        self.check.full_check(up)
        for node in self.nodes.values():
            if node.up:
                self.check.check_machine(node.machine, node.applied, f"node {node.id}")

    def _check_converged(self) -> None:
        """Nodes that applied the same prefix hold the same transactions."""
        by_applied: dict[int, Any] = {}
        for node in self.nodes.values():
            state = (
                node.machine.tombstone_horizon,
                {k: v.to_dict() for k, v in node.machine.transactions.items()},
            )
            seen = by_applied.setdefault(node.applied, state)
            if seen != state:
                raise InvariantViolation(
                    f"nodes applied up to {node.applied} hold different states"
                )


def _redirect(who: SimTxn | LateAsker) -> None:
    """A client proposing again what it forwarded through a node goes to the leader that node
    named, as the real shell's followers redirect (NotLeader with the leader's URL) instead of
    forwarding. A forwarded proposal tells the client nothing, and the node may be cut off for
    good: one whose re-admission was truncated away still believes the old leader, which drops
    its stale-term proposals, and nothing ever tells it. A client that stayed with it waited out
    half of its re-proposals, one backoff each (seed 206171: 4.2 s after the heal)."""
    if who.forwarded_to:
        who.target, who.forwarded_to = who.forwarded_to, 0


def _machine_data(m: Machine) -> bytes:
    """A snapshot of the applied state: records and tombstones (`forgotten_at` set, only the
    decision kept), and the tombstone horizon."""
    return json.dumps(
        {
            "tombstone_horizon": m.tombstone_horizon,
            "transactions": {k: v.to_dict() for k, v in sorted(m.transactions.items())},
        }
    ).encode()


def _machine_from(data: bytes) -> Machine:
    m = Machine()
    if data:
        d = json.loads(data)
        m.tombstone_horizon = d["tombstone_horizon"]
        m.transactions = {k: Transaction.from_dict(v) for k, v in d["transactions"].items()}
    return m


def _show(m: Message) -> str:
    parts = [f"{m.type} t{m.term}"]
    if m.type in (MsgType.APPEND, MsgType.VOTE, MsgType.PRE_VOTE):
        parts.append(f"i{m.index}/t{m.log_term}")
    if m.entries:
        parts.append(f"[{m.entries[0].index}..{m.entries[-1].index}]")
    if m.type is MsgType.APPEND_RESP:
        parts.append(
            f"i{m.index}" + (f" reject hint {m.reject_hint}/t{m.log_term}" if m.reject else "")
        )
    if m.commit:
        parts.append(f"c{m.commit}")
    if m.reject and m.type is not MsgType.APPEND_RESP:
        parts.append("reject")
    if m.snapshot is not None:
        parts.append(f"snap@{m.snapshot.meta.index}")
    return " ".join(parts)


def run_seed(seed: int, verbose: bool = False) -> Stats:
    """Run one seed; any violation (of an invariant here or an assertion in the core) is
    re-raised with the command that replays it."""
    try:
        return Simulation(SimParams.from_seed(seed), verbose=verbose).run()
    except AssertionError as e:
        raise SimulationFailure(f"seed {seed} failed: {e!r}\nreplay: {replay_command(seed)}") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--seed", type=int, help="run only this seed")
    ap.add_argument("--verbose", action="store_true", help="trace every event")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    started = time.monotonic()
    total = Stats()
    failures = 0
    for seed in seeds:
        try:
            st = run_seed(seed, verbose=args.verbose)
        except SimulationFailure as e:
            failures += 1
            print(e, file=sys.stderr)
            continue
        total.add(st)
    n = len(seeds)
    print(f"{n} seeds, {failures} failed, {time.monotonic() - started:.1f}s; totals: {vars(total)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
