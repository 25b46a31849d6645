"""The Raft state machine: pure, single-threaded, driven by its shell.

The shell calls `tick()` on a timer, `step(msg)` for each message, `propose*`/`read_index`/
`transfer_leadership` for its clients, and drains work with `ready()` + `advance()` (see
`coordinator.raft.ready` for the persistence contract). The core has no clock, no I/O and no
randomness of its own (the election-timeout jitter comes from an injected `random.Random`),
so a seed replays a whole cluster exactly (`coordinator.raft.simulation`).

Choices worth knowing (etcd-io/raft is the model unless said otherwise):

* pre-vote and check-quorum, with the leader-lease guard: a node that heard from a live
  leader within an election timeout ignores (pre-)votes, and answers a stale-term append or
  heartbeat with its own term, so a leader that cannot replicate to a node with a higher term
  steps down instead of livelocking;
* a leader counts its own log for commitment only once it is durable (`advance`), and
  commits only entries of its own term by counting (Figure 8);
* membership changes take effect when appended (not when applied), one at a time, and only
  after the leader committed an entry of its own term; the leader cannot remove itself;
* reads: ReadIndex only (no lease reads), held back until the leader has committed an entry
  of its term.
"""

from __future__ import annotations

import random
from enum import Enum

from coordinator.raft.config import RaftConfig
from coordinator.raft.errors import ConfChangeRefused, CorruptState, NotLeader, ProposalDropped
from coordinator.raft.membership import committed_index, has_quorum, quorum, validate_change
from coordinator.raft.memlog import RaftLog
from coordinator.raft.messages import (
    NONE,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Snapshot,
)
from coordinator.raft.progress import Progress, ProgressState
from coordinator.raft.readindex import ReadQueue, ReadRequest
from coordinator.raft.ready import (
    FollowerStatus,
    PersistentState,
    ReadState,
    Ready,
    Role,
    SoftState,
    Status,
)

# A learner is caught up (may be promoted) when its log is at most this many entries behind
# the leader's commit index.
LEARNER_CATCH_UP_LAG = 16

TRANSFER_CONTEXT = b"transfer"  # marks a vote request that follows a leadership transfer


class _Campaign(Enum):
    PRE_ELECTION = 1
    ELECTION = 2
    TRANSFER = 3


_VOTE_RESP = {MsgType.VOTE: MsgType.VOTE_RESP, MsgType.PRE_VOTE: MsgType.PRE_VOTE_RESP}


class RaftNode:
    def __init__(self, config: RaftConfig, initial: PersistentState, rng: random.Random) -> None:
        self.cfg = config
        self.id = config.id
        self.rng = rng
        hs = initial.hard_state
        last = max(initial.snapshot.meta.index, initial.entries[-1].index if initial.entries else 0)
        if hs.commit > last:
            raise CorruptState(
                f"node {self.id}: stored commit index {hs.commit} is ahead of the stored log "
                f"(last index {last}); committed entries may have been lost"
            )
        self.log = RaftLog(initial.snapshot, list(initial.entries), hs.commit, initial.applied)
        self.term = hs.term
        self.vote = hs.vote
        self.role = Role.FOLLOWER
        self.leader = NONE
        self.conf = self.log.conf_at(self.log.last_index())
        self._conf_version = self.log.conf_version
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._draw_timeout()
        self.lead_transferee = NONE
        self.reads = ReadQueue(config.max_pending_reads)
        # Reads that arrived before this leader committed an entry of its term.
        self.reads_waiting_for_commit: list[tuple[bytes, int]] = []
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.prev_hard_state = hs
        self.prev_soft_state = SoftState()
        self.ready_outstanding = False
        self._check()

    # -- the shell's calls -------------------------------------------------------------

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()
        self._check()

    def step(self, m: Message) -> None:
        assert m.dst == self.id, (m.dst, self.id)
        assert m.src != self.id and m.src != NONE, m
        self._step(m)
        self._sync_conf()
        self._check()

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append a command; returns its (index, term). It is committed once that index is
        committed with that term still at that index."""
        return self._propose_entry(EntryKind.NORMAL, data)

    def forward_proposal(self, data: bytes) -> None:
        """On a follower: send the proposal to the leader (proposal forwarding). Nothing
        tells the caller whether it was appended; it must watch the applied state."""
        if self.role is Role.LEADER:
            self.propose(data)
            return
        if self.leader == NONE:
            raise NotLeader(NONE)
        self._send(Message(MsgType.PROPOSE, self.id, self.leader, self.term, context=data))

    def propose_conf_change(self, change: ConfChange) -> tuple[int, int]:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.log.term(self.log.commit) != self.term:
            raise ConfChangeRefused("the leader has not committed an entry of its term yet")
        if self.log.last_conf_index() > self.log.commit:
            raise ConfChangeRefused("a previous membership change is not committed yet")
        validate_change(self.conf, change, self.id)
        if change.op is ConfChangeOp.PROMOTE and not self.learner_caught_up(change.node):
            raise ConfChangeRefused(f"learner {change.node} has not caught up")
        return self._propose_entry(EntryKind.CONF_CHANGE, change.encode())

    def learner_caught_up(self, node: int) -> bool:
        """Replicating steadily and close to the commit index: promoting it now does not
        leave the group waiting on a voter that cannot acknowledge new entries yet."""
        pr = self.progress.get(node)
        return (
            pr is not None
            and pr.state is ProgressState.REPLICATE
            and pr.match + LEARNER_CATCH_UP_LAG >= self.log.commit
        )

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read; answered later as a ReadState with this `ctx` (the
        caller makes it unique). A read that cannot be confirmed is never answered: the
        shell times it out."""
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader != NONE:
            self._send(Message(MsgType.READ_INDEX, self.id, self.leader, self.term, context=ctx))
        else:
            raise NotLeader(NONE)
        self._check()

    def transfer_leadership(self, to: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id or to == self.lead_transferee:
            return
        if to not in self.conf.voters:
            raise ConfChangeRefused(f"node {to} is not a voter")
        self.lead_transferee = to
        # The transfer must finish within an election timeout, or it is abandoned (tick).
        self.election_elapsed = 0
        if self.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)
        self._check()

    def compact(self, index: int, snapshot_data: bytes) -> None:
        """The shell has durably saved a snapshot of its applied state at `index`."""
        self.log.compact(index, snapshot_data)
        self._check()

    def has_ready(self) -> bool:
        return (
            bool(self.msgs or self.read_states or self.log.pending_snapshot)
            or self.log.stable_last < self.log.last_index()
            or self.log.applied < self.log.commit
            or self._hard_state() != self.prev_hard_state
            or SoftState(self.role, self.leader) != self.prev_soft_state
        )

    def ready(self) -> Ready:
        assert not self.ready_outstanding, "advance() the previous Ready first"
        hs = self._hard_state()
        ss = SoftState(self.role, self.leader)
        rd = Ready(
            hard_state=hs if hs != self.prev_hard_state else None,
            entries=self.log.unstable(),
            snapshot=self.log.pending_snapshot,
            committed=self.log.to_apply(self.cfg.max_committed_per_ready),
            messages=self.msgs,
            read_states=self.read_states,
            soft_state=ss if ss != self.prev_soft_state else None,
        )
        if rd.hard_state is not None:
            assert rd.hard_state.commit <= self.log.last_index()
        self.msgs = []
        self.read_states = []
        self.prev_soft_state = ss
        self.ready_outstanding = True
        return rd

    def advance(self, rd: Ready) -> None:
        assert self.ready_outstanding, "advance() without ready()"
        self.ready_outstanding = False
        if rd.snapshot is not None and self.log.pending_snapshot is rd.snapshot:
            self.log.pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.hard_state is not None:
            self.prev_hard_state = rd.hard_state
        if rd.committed:
            self.log.applied_to(rd.committed[-1].index)
        if self.role is Role.LEADER:
            me = self.progress[self.id]
            me.maybe_update(self.log.stable_last)
            if self._maybe_commit():
                self._bcast_append(send_if_empty=False)
        self._check()

    def status(self) -> Status:
        followers: dict[int, FollowerStatus] = {}
        if self.role is Role.LEADER:
            last = self.log.last_index()
            for nid, pr in self.progress.items():
                if nid == self.id:
                    continue
                followers[nid] = FollowerStatus(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                    caught_up=self.learner_caught_up(nid),
                    lag=last - pr.match,
                )
        return Status(
            id=self.id,
            term=self.term,
            vote=self.vote,
            role=self.role,
            leader=self.leader,
            commit=self.log.commit,
            applied=self.log.applied,
            first_index=self.log.first_index(),
            last_index=self.log.last_index(),
            snapshot_index=self.log.snap_index,
            conf=self.conf,
            lead_transferee=self.lead_transferee,
            followers=followers,
        )

    # -- roles ---------------------------------------------------------------------------

    def _draw_timeout(self) -> int:
        return self.cfg.election_ticks + self.rng.randrange(self.cfg.election_ticks)

    def _reset(self, term: int) -> None:
        if term != self.term:
            assert term > self.term, (term, self.term)
            self.term = term
            self.vote = NONE
        self.leader = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._draw_timeout()
        self.lead_transferee = NONE
        self.votes = {}
        self.progress = {}
        self.reads.clear()
        self.reads_waiting_for_commit = []

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER
        # Neither term nor vote change: a pre-vote disturbs nobody if it fails.
        self.votes = {}
        self.leader = NONE
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE and self.id in self.conf.voters
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._rebuild_progress()
        # The no-op of this term: committing it commits everything before it (§5.4.2), and
        # until it commits the leader neither answers reads nor changes membership.
        self._append(EntryKind.EMPTY, b"")
        self._bcast_append()

    def _rebuild_progress(self) -> None:
        last = self.log.last_index()
        old = self.progress
        self.progress = {}
        for nid in self.conf.members | {self.id}:
            pr = old.get(nid)
            if pr is None:
                pr = Progress(match=0, next=last + 1, max_inflight=self.cfg.max_inflight_msgs)
                if nid == self.id:
                    pr.maybe_update(self.log.stable_last)
                    pr.become_replicate()
                    pr.next = last + 1
            pr.is_learner = nid in self.conf.learners
            self.progress[nid] = pr
        if self.lead_transferee not in self.conf.voters:
            self.lead_transferee = NONE

    def _sync_conf(self) -> None:
        """Membership is a fold of the log's conf entries; refresh it when they changed."""
        if self._conf_version == self.log.conf_version:
            return
        self._conf_version = self.log.conf_version
        self.conf = self.log.conf_at(self.log.last_index())
        if self.role is Role.LEADER:
            assert self.id in self.conf.voters, "a leader never removes itself"
            self._rebuild_progress()

    def _promotable(self) -> bool:
        return self.id in self.conf.voters

    # -- ticks ---------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(_Campaign.PRE_ELECTION if self.cfg.pre_vote else _Campaign.ELECTION)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = {nid for nid, pr in self.progress.items() if pr.recent_active}
                active.add(self.id)
                for nid, pr in self.progress.items():
                    pr.recent_active = nid == self.id
                if not has_quorum(self.conf.voters, active):
                    self._become_follower(self.term, NONE)
                    return
            self.lead_transferee = NONE  # a transfer that took a whole timeout is abandoned
        for nid, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self.cfg.snapshot_retry_ticks:
                    pr.become_probe()
                    self._send_append(nid)
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.reads.last_ctx())

    # -- elections -----------------------------------------------------------------------

    def _campaign(self, kind: _Campaign) -> None:
        if kind is _Campaign.PRE_ELECTION:
            self._become_pre_candidate()
            msg_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            msg_type, term = MsgType.VOTE, self.term
        self.votes[self.id] = True
        if self._tally() == 1:
            self._won(kind)
            return
        ctx = TRANSFER_CONTEXT if kind is _Campaign.TRANSFER else b""
        for nid in sorted(self.conf.voters - {self.id}):
            self._send(
                Message(
                    msg_type,
                    self.id,
                    nid,
                    term,
                    log_term=self.log.last_term(),
                    index=self.log.last_index(),
                    context=ctx,
                )
            )

    def _won(self, kind: _Campaign) -> None:
        if kind is _Campaign.PRE_ELECTION:
            self._campaign(_Campaign.ELECTION)
        else:
            self._become_leader()

    def _tally(self) -> int:
        """1 when the votes received make a quorum, -1 when the rejections do, else 0."""
        voters = self.conf.voters
        granted = [n for n, v in self.votes.items() if v and n in voters]
        rejected = [n for n, v in self.votes.items() if not v and n in voters]
        if has_quorum(voters, granted):
            return 1
        if len(rejected) >= len(voters) - quorum(len(voters)) + 1:
            return -1
        return 0

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote == NONE and self.leader == NONE)
            or (m.type is MsgType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A pre-vote answer carries the term asked for, so the asker can count it.
            self._send(Message(_VOTE_RESP[m.type], self.id, m.src, m.term))
            if m.type is MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.src
        else:
            self._send(Message(_VOTE_RESP[m.type], self.id, m.src, self.term, reject=True))

    # -- the message dispatcher --------------------------------------------------------

    def _step(self, m: Message) -> None:
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                forced = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.cfg.check_quorum
                    and self.leader != NONE
                    and self.election_elapsed < self.cfg.election_ticks
                )
                if in_lease and not forced:
                    return  # a live leader exists: do not let a disruptive node depose it
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # a pre-vote never changes a term; a granted one carries the future term
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (
                MsgType.APPEND,
                MsgType.HEARTBEAT,
            ):
                # Tell the stale leader about our term: without this it keeps its lease over
                # us and we can never win (pre-vote + check-quorum livelock).
                self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term))
            elif m.type is MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self.election_elapsed = 0
            self.leader = m.src
            if t is MsgType.APPEND:
                self._handle_append(m)
            elif t is MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif t is MsgType.TIMEOUT_NOW:
            if self._promotable():
                self._campaign(_Campaign.TRANSFER)
        elif t in (MsgType.PROPOSE, MsgType.READ_INDEX):
            if self.leader != NONE:  # forward again; the term check drops it if stale
                self._send(Message(t, self.id, self.leader, self.term, context=m.context))
        elif t is MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.context, m.index))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self._become_follower(m.term, m.src)  # a leader of our term exists
            self._step_follower(m)
            return
        pre = self.role is Role.PRE_CANDIDATE
        if (pre and t is MsgType.PRE_VOTE_RESP) or (not pre and t is MsgType.VOTE_RESP):
            if pre and not m.reject and m.term != self.term + 1:
                return  # a grant for an earlier pre-election
            self.votes.setdefault(m.src, not m.reject)
            result = self._tally()
            if result == 1:
                self._won(_Campaign.PRE_ELECTION if pre else _Campaign.ELECTION)
            elif result == -1:
                self._become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MsgType.PROPOSE:
            try:
                self._propose_entry(EntryKind.NORMAL, m.context)
            except ProposalDropped:
                pass  # the follower's client retries
            return
        if t is MsgType.READ_INDEX:
            self._leader_read(m.context, m.src)
            return
        pr = self.progress.get(m.src)
        if pr is None:
            return  # not (or no longer) a member
        pr.recent_active = True
        if t is MsgType.APPEND_RESP:
            self._handle_append_resp(m, pr)
        elif t is MsgType.HEARTBEAT_RESP:
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first()  # an append or its answer may be lost: unstick
            if pr.match < self.log.last_index():
                self._send_append(m.src)
            if m.context:
                acks = self.reads.ack(m.context, m.src)
                if acks is not None and has_quorum(self.conf.voters, acks):
                    for req in self.reads.release_through(m.context):
                        self._answer_read(req)

    # -- replication: follower side ----------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.commit:
            # Everything up to our commit index already matches the leader: say so, and do
            # not let a stale append touch the committed prefix.
            self._send(
                Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.log.commit)
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=last_new))
            return
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        hint_term = self.log.term(hint)
        assert hint_term is not None
        self._send(
            Message(
                MsgType.APPEND_RESP,
                self.id,
                m.src,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(MsgType.HEARTBEAT_RESP, self.id, m.src, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self._restore(m.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.commit
        self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=index))

    def _restore(self, snap: Snapshot) -> bool:
        meta = snap.meta
        if meta.index <= self.log.commit:
            return False  # stale: we already hold (and committed) everything it covers
        if self.log.match_term(meta.index, meta.term):
            # We hold its last entry, so we hold everything before it: keep the entries
            # after it (appended meanwhile) and only move the commit index.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snap)
        return True

    # -- replication: leader side ------------------------------------------------------

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append(send_if_empty=False)
        elif was_paused:
            self._send_append(m.src)
        while self._send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.src)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            # The entries it needs are compacted away: InstallSnapshot.
            snap = self.log.snapshot
            self._send(Message(MsgType.SNAPSHOT, self.id, to, self.term, snapshot=snap))
            pr.become_snapshot(snap.meta.index)
            return True
        last = self.log.last_index()
        ents = (
            self.log.slice(
                pr.next, last + 1, self.cfg.max_bytes_per_msg, self.cfg.max_entries_per_msg
            )
            if pr.next <= last
            else []
        )
        if not ents and not send_if_empty:
            return False
        self._send(
            Message(
                MsgType.APPEND,
                self.id,
                to,
                self.term,
                log_term=prev_term,
                index=prev_index,
                entries=tuple(ents),
                commit=self.log.commit,
            )
        )
        pr.sent_entries(len(ents), ents[-1].index if ents else prev_index)
        return True

    def _bcast_append(self, send_if_empty: bool = True) -> None:
        """`send_if_empty=False` when only the commit index moved: it then rides on the next
        append or heartbeat instead of costing every follower a message and an answer per
        commit (with one HTTP request each, that doubled the messages of a lightly loaded
        group). Followers learn it at most a heartbeat later; nothing waits on that: the
        leader answers clients, and a new leader applies all it has committed before it
        serves."""
        for nid in sorted(self.progress):
            if nid != self.id:
                self._send_append(nid, send_if_empty)

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for nid in sorted(self.progress):
            if nid == self.id:
                continue
            commit = min(self.progress[nid].match, self.log.commit)
            self._send(
                Message(MsgType.HEARTBEAT, self.id, nid, self.term, commit=commit, context=ctx)
            )

    def _send_timeout_now(self, to: int) -> None:
        self._send(Message(MsgType.TIMEOUT_NOW, self.id, to, self.term))

    def _maybe_commit(self) -> bool:
        match = {nid: pr.match for nid, pr in self.progress.items()}
        index = committed_index(self.conf.voters, match)
        # Figure 8: counting replicas commits only an entry of the leader's own term; earlier
        # entries commit with it, by the log matching property.
        if index <= self.log.commit or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        if self.reads_waiting_for_commit:
            waiting, self.reads_waiting_for_commit = self.reads_waiting_for_commit, []
            for ctx, src in waiting:
                self._leader_read(ctx, src)
        return True

    def _propose_entry(self, kind: EntryKind, data: bytes) -> tuple[int, int]:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        if self.log.last_index() - self.log.commit >= self.cfg.max_uncommitted_entries:
            raise ProposalDropped("too many uncommitted entries")
        index = self._append(kind, data)
        self._sync_conf()
        self._bcast_append()
        self._check()
        return index, self.term

    def _append(self, kind: EntryKind, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(index, self.term, kind, data)])
        return index

    # -- reads ----------------------------------------------------------------------------

    def _leader_read(self, ctx: bytes, src: int) -> None:
        if self.log.term(self.log.commit) != self.term:
            # Our commit index may still be behind an earlier leader's: wait for our no-op.
            if len(self.reads_waiting_for_commit) < self.cfg.max_pending_reads:
                self.reads_waiting_for_commit.append((ctx, src))
            return
        if self.conf.voters == {self.id}:
            self._answer_read(ReadRequest(ctx, src, self.log.commit))
            return
        if self.reads.add(ctx, src, self.log.commit, self.id):
            self._bcast_heartbeat(ctx)

    def _answer_read(self, req: ReadRequest) -> None:
        if req.src == self.id:
            self.read_states.append(ReadState(req.ctx, req.index))
        else:
            self._send(
                Message(
                    MsgType.READ_INDEX_RESP,
                    self.id,
                    req.src,
                    self.term,
                    index=req.index,
                    context=req.ctx,
                )
            )

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        assert m.src == self.id and m.dst != self.id, m
        self.msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def _check(self) -> None:
        """Invariants after every call (TigerBeetle style): cheap enough to always run."""
        self.log.check()
        prev = self.prev_hard_state
        assert self.term >= prev.term, "term went backwards"
        assert self.term > prev.term or self.vote == prev.vote or prev.vote == NONE, (
            "vote changed within a term"
        )
        if self.role is Role.LEADER:
            assert self.leader == self.id and self.vote == self.id
            assert self.id in self.conf.voters
            assert set(self.progress) == set(self.conf.members | {self.id})
            last = self.log.last_index()
            for pr in self.progress.values():
                pr.check()
                assert pr.match <= last, (pr.match, last)
        elif self.role is Role.CANDIDATE:
            assert self.vote == self.id and self.leader == NONE
        if self.lead_transferee != NONE:
            assert self.role is Role.LEADER and self.lead_transferee in self.conf.voters
