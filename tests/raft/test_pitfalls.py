"""One scripted test per known Raft pitfall (DESIGN §7), each named after it."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.commands import Begin, Decide, Enlist, RecordVote, StartPrepare, decode, encode
from coordinator.model import Outcome, Vote
from coordinator.raft import (
    ConfChange,
    ConfChangeOp,
    ConfChangeRefused,
    CorruptState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    PersistentState,
    RaftConfig,
    RaftNode,
    Role,
)
from coordinator.statemachine import Machine
from tests.raft.harness import Cluster, Filter, isolate


def only(*ids: int) -> Filter:
    group = set(ids)
    return lambda m: m.src in group and m.dst in group


def elect(c: Cluster, i: int, allow: Filter | None = None, tries: int = 5) -> None:
    for _ in range(tries):
        c.campaign(i, allow)
        if c.nodes[i].role is Role.LEADER:
            return
    raise AssertionError(f"node {i} was not elected")


# -- 1 ------------------------------------------------------------------------------------------


def test_vote_or_term_not_durable_before_reply() -> None:
    """A vote leaves the node only in the Ready that also carries the hard state recording
    it; so a crash before persisting loses the vote *and* the reply, and a crash after it
    keeps the vote: a restarted node never votes twice in a term."""
    c = Cluster(3)
    node = c.nodes[1]
    node.step(Message(MsgType.VOTE, 2, 1, term=2, index=1, log_term=1))
    rd = node.ready()
    grant = [m for m in rd.messages if m.type is MsgType.VOTE_RESP and not m.reject]
    assert grant and rd.hard_state == HardState(term=2, vote=2, commit=1)
    # Crash before persisting: nothing of it survives, and the reply was never sent.
    node = c.restart(1)
    assert (node.term, node.vote) == (1, 0)
    # Vote again, persist this time, then crash and let another candidate ask.
    node.step(Message(MsgType.VOTE, 2, 1, term=2, index=1, log_term=1))
    c.process(1)
    node = c.restart(1)
    node.step(Message(MsgType.VOTE, 3, 1, term=2, index=1, log_term=1))
    rd = node.ready()
    assert [(m.dst, m.reject) for m in rd.messages] == [(3, True)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(2, 4), st.integers(2, 4), st.booleans(), st.booleans()),
        min_size=1,
        max_size=30,
    )
)
def test_vote_or_term_not_durable_before_reply_property(
    requests: list[tuple[int, int, bool, bool]],
) -> None:
    """Any order of vote requests, with crashes before or after persisting: the grants that
    went out never name two candidates for one term."""
    c = Cluster(4)
    granted: dict[int, int] = {}
    for candidate, term, persist, crash in requests:
        node = c.nodes[1]
        if candidate == 1:
            continue
        node.step(Message(MsgType.VOTE, candidate, 1, term=term, index=9, log_term=9))
        rd = node.ready()
        if persist:
            c.stores[1].persist(rd)
            for m in rd.messages:  # sent only now, after persisting
                if m.type is MsgType.VOTE_RESP and not m.reject:
                    assert granted.setdefault(m.term, m.dst) == m.dst, "voted twice in a term"
            node.advance(rd)
        if crash or not persist:
            c.restart(1)


# -- 2 ------------------------------------------------------------------------------------------


def _acks_are_durable(c: Cluster, i: int) -> None:
    """After persisting node i's Ready, every append acknowledgement in it names entries
    that are in the store."""
    rd = c.readies[i][-1]
    store = c.stores[i]
    stored = {e.index: e.term for e in store.entries}
    snap = store.snapshot.meta.index if store.snapshot else 0
    for m in rd.messages:
        if m.type is MsgType.APPEND_RESP and not m.reject:
            assert m.index <= max(stored, default=snap) or m.index <= snap
            node_log = c.nodes[i].log
            for idx in range(snap + 1, m.index + 1):
                assert stored[idx] == node_log.term(idx), "acknowledged an entry not persisted"


def test_log_acknowledged_before_fsync() -> None:
    """An append acknowledgement is only ever in the same Ready as the entries it
    acknowledges (or a later one): a shell that persists before sending never acknowledges
    an entry that a crash could lose."""
    c = Cluster(3, max_entries_per_msg=2)
    c.campaign(1)
    rng = random.Random(3)
    for k in range(30):
        c.nodes[1].propose(f"x{k}".encode())
        for _ in range(rng.randint(1, 3)):
            for i in c.ids:
                if c.process(i) is not None:
                    _acks_are_durable(c, i)
            c.deliver(lambda m: rng.random() > 0.2)
    # A follower that receives entries and crashes before its Ready is persisted has sent
    # nothing, and restarts without them.
    c.tick_all(3)
    c.nodes[1].propose(b"last")
    c.process(1)
    c.deliver()
    rd = c.nodes[2].ready()
    assert any(m.type is MsgType.APPEND_RESP and not m.reject for m in rd.messages)
    assert rd.entries and rd.entries[-1].data == b"last"
    node = c.restart(2)  # crash: the Ready was never persisted, its messages never sent
    assert node.log.last_index() < rd.entries[-1].index


# -- 3 ------------------------------------------------------------------------------------------


def test_commit_index_persisted_ahead_of_log() -> None:
    """The hard state's commit index never exceeds the log stored with (or before) it, and a
    node refuses to start from a store whose commit index is ahead of its log."""
    c = Cluster(3, max_entries_per_msg=1)
    c.campaign(1)
    rng = random.Random(5)
    for k in range(20):
        c.nodes[1].propose(f"x{k}".encode())
        for _ in range(3):
            for i in c.ids:
                rd = c.process(i)
                if rd is not None and rd.hard_state is not None:
                    store = c.stores[i]
                    last = store.entries[-1].index if store.entries else 0
                    assert rd.hard_state.commit <= last
            c.deliver(lambda m: rng.random() > 0.3)
    store = c.stores[2]
    broken = PersistentState(
        HardState(store.hard_state.term, store.hard_state.vote, store.entries[-1].index + 5),
        c.boot.snapshot,
        tuple(store.entries),
    )
    with pytest.raises(CorruptState):
        RaftNode(RaftConfig(id=2), broken, random.Random(1))


# -- 4 ------------------------------------------------------------------------------------------


def test_figure8_commit_earlier_term_by_counting() -> None:
    """Raft paper, Figure 8: an entry of an earlier term on a majority is not committed by
    counting; a later leader may still overwrite it."""
    c = Cluster(5, max_entries_per_msg=1)
    elect(c, 1)  # S1 leads term 2
    s1 = c.nodes[1]
    index, term = s1.propose(b"X")  # (a) X reaches S2 only
    assert (index, term) == (3, 2)
    c.pump(only(1, 2))
    # (b) S1 is gone; S5 is elected by S3, S4, S5 and writes its no-op (term 3) at index 3
    # but nothing of it leaves S5.
    votes_only: Filter = lambda m: (  # noqa: E731
        m.src in (3, 4, 5)
        and m.dst in (3, 4, 5)
        and m.type in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP)
    )
    c.forget_leader(3, 4, 5)
    elect(c, 5, votes_only)
    assert c.nodes[5].log.term(3) == 3
    # (c) S5 is gone; S1 comes back, is elected (term 4) and copies X to S3 -- but its own
    # no-op (index 4) reaches nobody: appends carrying it arrive stripped of it.
    c.restart(1)
    s1 = c.nodes[1]
    c.forget_leader(2, 3, 4)

    def no_index4(m: Message) -> bool | Message:
        if m.src == 5 or m.dst == 5:
            return False
        if any(e.index == 4 for e in m.entries):
            return dataclasses.replace(m, entries=tuple(e for e in m.entries if e.index < 4))
        return True

    elect(c, 1, no_index4)
    assert s1.term == 4
    c.tick_all(3, allow=no_index4)
    holders = [i for i in c.ids if c.nodes[i].log.term(3) == 2]
    assert len(holders) >= 3, "X is on a majority"
    assert all(c.nodes[i].log.commit < 3 for i in c.ids), "X must not be committed by counting"
    # (d) S1 is gone again; S5 returns and is elected with S2, S3, S4: it overwrites X.
    c.restart(5)
    c.forget_leader(2, 3, 4)
    elect(c, 5, isolate(1))
    c.tick_all(3, allow=isolate(1))
    assert all(c.nodes[i].log.term(3) == 3 for i in (2, 3, 4, 5))
    for i in c.ids:  # and no node ever applied X
        assert all(e.data != b"X" for e in c.stores[i].applied)


# -- 5 ------------------------------------------------------------------------------------------


def _leader_appends(n_entries: int, seed: int) -> tuple[RaftNode, PersistentState, list[Message]]:
    """Every append a term-2 leader sends to node 2 while committing n entries, in order,
    and node 2's state before the first of them."""
    c = Cluster(3, seed=seed, max_entries_per_msg=2)
    c.campaign(1)
    start = c.stores[2].state(c.boot)
    sent: list[Message] = []

    def spy(m: Message) -> bool:
        if m.dst == 2 and m.type in (MsgType.APPEND, MsgType.HEARTBEAT):
            sent.append(m)
        return True

    for k in range(n_entries):
        c.nodes[1].propose(f"e{k}".encode())
        c.pump(spy)
    return c.nodes[1], start, sent


def test_stale_or_reordered_append_entries_truncating_committed() -> None:
    _, start, sent = _leader_appends(8, seed=1)
    node = RaftNode(RaftConfig(id=2), start, random.Random(2))
    for m in sent:
        node.step(m)
    full = list(node.log.entries)
    commit = node.log.commit
    assert commit >= 8
    # A stale append from before the commit index, a shorter reordered one, a duplicate:
    for m in sent[:5] + sent[2:3] + sent[-1:]:
        node.step(m)
        assert node.log.entries == full, "no truncation by a stale or reordered append"
        assert node.log.commit == commit
    # Entries not yet committed: a shorter append arriving after a longer one (reordered,
    # or duplicated) must not cut the entries the longer one brought -- they were acked.
    fresh = RaftNode(RaftConfig(id=2), PersistentState.bootstrap({1, 2, 3}), random.Random(2))
    ents = [Entry(i, 2, data=b"e%d" % i) for i in range(2, 11)]
    short = Message(MsgType.APPEND, 1, 2, term=2, index=1, log_term=1, entries=tuple(ents[:5]))
    long = Message(MsgType.APPEND, 1, 2, term=2, index=6, log_term=2, entries=tuple(ents[5:]))
    for m in (short, long, short, long, short):
        fresh.step(m)
    assert fresh.log.last_index() == 10 and fresh.log.commit == 1
    # An append of an older term with a conflicting suffix is rejected outright.
    stale = (Entry(3, 1, data=b"?"),)
    old = Message(MsgType.APPEND, 3, 2, term=1, index=2, log_term=1, entries=stale)
    node.step(old)
    assert node.log.entries == full
    assert node.msgs[-1].term == node.term, "the stale sender learns the newer term"


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_stale_or_reordered_append_entries_property(rnd: random.Random, seed: int) -> None:
    """Appends of one leader delivered in any order, some twice: the follower's log stays a
    prefix of the leader's, and its commit index never goes back."""
    leader, start, sent = _leader_appends(6, seed=seed)
    msgs = sent + [rnd.choice(sent) for _ in range(len(sent) // 2)]
    rnd.shuffle(msgs)
    node = RaftNode(RaftConfig(id=2), start, random.Random(2))
    commit = acked = 0
    for m in msgs:
        node.step(m)
        assert node.log.entries == leader.log.entries[: len(node.log.entries)]
        assert node.log.commit >= commit
        commit = node.log.commit
        for r in node.msgs:
            if r.type is MsgType.APPEND_RESP and not r.reject:
                acked = max(acked, r.index)
        node.msgs.clear()
        assert node.log.last_index() >= acked, "an acknowledged entry was dropped"


# -- 6 ------------------------------------------------------------------------------------------


def test_prevote_with_checkquorum_never_electing() -> None:
    """A node whose term ran ahead (forced transfer campaigns) while its log fell behind can
    neither win nor, if everyone ignored it, ever let anyone else win: its higher term
    makes it drop the others' pre-votes while their logs make them refuse its own. The
    core answers a lower-term pre-vote (and append) with its term, so the group recovers."""
    c = Cluster(3)
    elect(c, 1)
    for k in range(3):
        c.nodes[1].propose(f"x{k}".encode())
    c.pump(isolate(3))
    # Node 3 is behind, and its stored term is ahead of everyone's.
    s3 = c.stores[3]
    s3.hard_state = HardState(term=c.nodes[1].term + 3, vote=3, commit=s3.hard_state.commit)
    c.restart(3)
    # Case 1: the leader is alive: its heartbeat meets the higher term, it steps down and a
    # new election (with node 3 unable to win) gets everyone going again.
    c.tick_all(5 * c.nodes[1].cfg.election_ticks)
    leader = c.leader()
    assert leader is not None and leader.id in (1, 2)
    assert c.nodes[3].log.last_index() == leader.log.last_index()
    # Case 2: the leader dies; the two others must still elect one of them.
    c2 = Cluster(3)
    elect(c2, 1)
    for k in range(3):
        c2.nodes[1].propose(f"x{k}".encode())
    c2.pump(isolate(3))
    s3 = c2.stores[3]
    s3.hard_state = HardState(term=c2.nodes[1].term + 3, vote=3, commit=s3.hard_state.commit)
    c2.restart(3)
    dead = isolate(1)
    for _ in range(10 * c2.nodes[2].cfg.election_ticks):
        for i in (2, 3):
            c2.nodes[i].tick()
        c2.pump(dead)
        if c2.nodes[2].role is Role.LEADER:
            break
    assert c2.nodes[2].role is Role.LEADER, "pre-vote + check-quorum livelock"


# -- 7 ------------------------------------------------------------------------------------------


def test_stale_read_from_paused_old_leader() -> None:
    """A leader that was paused while the others elected a new one and committed more must
    not answer a read from its stale state."""
    c = Cluster(3)
    elect(c, 1)
    old = c.nodes[1]
    paused = isolate(1)  # paused: it neither ticks nor hears anything
    c.forget_leader(2, 3)
    elect(c, 2, paused)
    w, _ = c.nodes[2].propose(b"W")
    c.pump(paused)
    assert c.nodes[2].log.commit >= w
    # The old leader wakes up still believing it leads, and is asked for a read.
    assert old.role is Role.LEADER
    old.read_index(b"stale?")
    c.pump()
    assert c.read_states[1] == [], "no answer from the deposed leader"
    assert old.role is Role.FOLLOWER
    # A new leader delays reads until it has committed an entry of its own term.
    c.nodes[3].read_index(b"via-follower")
    c.pump()
    assert [r.index for r in c.read_states[3]] == [c.nodes[2].log.commit]
    assert c.read_states[3][0].index >= w


def test_new_leader_delays_reads_until_it_commits_in_its_term() -> None:
    c = Cluster(3)
    elect(c, 1)
    c.nodes[1].propose(b"a")
    c.pump()
    commit_before = c.nodes[1].log.commit
    c.forget_leader(2, 3)
    # Node 2 wins, but its no-op does not reach anyone yet.
    votes: Filter = lambda m: m.type not in (MsgType.APPEND, MsgType.HEARTBEAT)  # noqa: E731
    elect(c, 2, votes)
    c.nodes[2].read_index(b"early")
    c.pump(votes)
    assert c.read_states[2] == [], "held back until the no-op commits"
    c.tick_all(2)
    assert [r.ctx for r in c.read_states[2]] == [b"early"]
    assert c.read_states[2][0].index > commit_before


# -- 8 ------------------------------------------------------------------------------------------


def test_membership_change_before_leader_committed_entry_of_its_term() -> None:
    c = Cluster(4, learners=[4])
    elect(c, 1)
    c.forget_leader(2, 3)
    hold: Filter = lambda m: m.type not in (MsgType.APPEND, MsgType.HEARTBEAT)  # noqa: E731
    elect(c, 2, hold)
    new = c.nodes[2]
    assert new.log.term(new.log.commit) != new.term
    with pytest.raises(ConfChangeRefused, match="committed an entry of its term"):
        new.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 3))
    c.tick_all(2)
    assert new.log.term(new.log.commit) == new.term
    new.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 3))
    with pytest.raises(ConfChangeRefused, match="previous"):
        new.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 4))
    c.pump()
    new.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 4))


# -- 9 ------------------------------------------------------------------------------------------


def test_snapshot_arriving_during_appends() -> None:
    """A snapshot that covers entries the follower already holds (it was overtaken by
    appends) must not truncate the newer entries, nor move anything back."""
    c = Cluster(3)
    elect(c, 1)
    leader = c.nodes[1]
    for k in range(10):
        leader.propose(f"x{k}".encode())
    # Node 2 gets (and acknowledges) entries 3..12, but not the news that they committed.
    c.pump(lambda m: not (m.dst == 2 and m.commit > 2))
    f = c.nodes[2]
    before = list(f.log.entries)
    assert before[-1].data == b"x9" and f.log.commit == 2
    # The leader compacts at 10 and a snapshot (from a retried probe) arrives late.
    leader.compact(10, b"snap")
    snap = leader.log.snapshot
    f.step(Message(MsgType.SNAPSHOT, 1, 2, term=leader.term, snapshot=snap))
    assert list(f.log.entries) == before, "the snapshot must not truncate newer entries"
    assert f.log.commit == 10
    assert f.log.pending_snapshot is None, "nothing to install: the entries are all there"
    # A snapshot beyond the follower's log replaces it, and appends continue after it.
    g = c.nodes[3]
    c.pump(isolate(3))
    for k in range(3):
        leader.propose(f"z{k}".encode())
    c.pump(isolate(3))
    leader.compact(leader.log.applied, b"snap2")
    snap2 = leader.log.snapshot
    g.step(Message(MsgType.SNAPSHOT, 1, 3, term=leader.term, snapshot=snap2))
    assert g.log.snap_index == snap2.meta.index and g.log.pending_snapshot is snap2
    # ... and once it is there, the old snapshot arriving late is ignored.
    g.step(Message(MsgType.SNAPSHOT, 1, 3, term=leader.term, snapshot=snap))
    assert g.log.snap_index == snap2.meta.index
    c.tick_all(3)
    assert g.log.last_index() == leader.log.last_index()


# -- 10 -----------------------------------------------------------------------------------------


def _machines(c: Cluster) -> dict[int, Machine]:
    out = {}
    for i in c.ids:
        m = Machine()
        for e in c.stores[i].applied:
            if e.kind is EntryKind.NORMAL:
                m.apply(decode(e.data))
        out[i] = m
    return out


@pytest.mark.parametrize("first_decision_survives", [True, False])
def test_decision_reproposed_after_leader_change(first_decision_survives: bool) -> None:
    """The client's Decide(commit) reaches the old leader (and maybe one follower); the
    leader dies, a timeout on the new leader proposes Decide(abort), and the client
    re-proposes Decide(commit). Whatever the log ends up holding, every node applies one
    outcome: the first Decide in the log."""
    c = Cluster(3)
    elect(c, 1)
    setup = [
        Begin("t1", 1.0),
        Enlist("t1", 1.0, name="a", url="http://a"),
        Enlist("t1", 1.0, name="b", url="http://b"),
        StartPrepare("t1", 1.0),
        RecordVote("t1", 1.0, name="a", vote=Vote.YES),
        RecordVote("t1", 1.0, name="b", vote=Vote.YES),
    ]
    for cmd in setup:
        c.nodes[1].propose(encode(cmd))
    c.pump()
    c.nodes[1].propose(encode(Decide("t1", 2.0, outcome=Outcome.COMMIT)))
    c.pump(only(1, 2) if first_decision_survives else only(1))
    # Node 1 is gone; node 2 (or 3) leads, a timeout proposes abort, the client re-proposes.
    c.forget_leader(2, 3)
    new = 2 if first_decision_survives else 3
    elect(c, new, isolate(1))
    c.nodes[new].propose(encode(Decide("t1", 3.0, outcome=Outcome.ABORT, reason="timeout")))
    c.nodes[new].propose(encode(Decide("t1", 3.1, outcome=Outcome.COMMIT)))
    c.pump(isolate(1))
    c.tick_all(3)  # node 1 comes back and catches up
    machines = _machines(c)
    outcomes = {i: m.transactions["t1"].outcome for i, m in machines.items()}
    expected = Outcome.COMMIT if first_decision_survives else Outcome.ABORT
    assert outcomes == {1: expected, 2: expected, 3: expected}
    decides = [
        decode(e.data)
        for e in c.stores[2].applied
        if e.kind is EntryKind.NORMAL and decode(e.data).kind == "decide"
    ]
    assert len(decides) >= 2, "several decisions were logged; one outcome was applied"
