"""Unit tests of the pure Raft core, one behaviour each, on the scripted in-memory cluster."""

from __future__ import annotations

import random

import pytest

from coordinator.raft import (
    ConfChange,
    ConfChangeOp,
    ConfChangeRefused,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    Role,
)
from coordinator.raft.progress import ProgressState
from tests.raft.harness import Cluster, isolate


def elected(n: int = 3, leader: int = 1, **cfg: int | bool) -> Cluster:
    c = Cluster(n, **cfg)  # type: ignore[arg-type]  # cfg holds only RaftConfig fields
    c.campaign(leader)
    assert c.nodes[leader].role is Role.LEADER
    c.settle()  # the followers learn that the leader's empty entry committed
    return c


# -- elections -----------------------------------------------------------------------------


def test_single_node_elects_itself_and_commits_after_persisting() -> None:
    node = RaftNode(RaftConfig(id=1), PersistentState.bootstrap({1}), random.Random(1))
    for _ in range(2 * node.cfg.election_ticks):
        node.tick()
    assert node.role is Role.LEADER
    rd = node.ready()
    assert rd.entries and rd.entries[-1].kind is EntryKind.EMPTY and rd.entries[-1].index == 2
    assert node.log.commit == 1, "the leader counts its own entry only once it is durable"
    node.advance(rd)
    assert node.log.commit == 2
    rd = node.ready()
    assert [e.index for e in rd.committed] == [2]
    node.advance(rd)


def test_randomized_election_timeout_is_within_bounds() -> None:
    cfg = RaftConfig(id=1, election_ticks=10)
    node = RaftNode(cfg, PersistentState.bootstrap({1, 2, 3}), random.Random(7))
    seen = set()
    for _ in range(200):
        node._reset(node.term)
        seen.add(node.randomized_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_three_node_election_and_new_leader_appends_empty_entry() -> None:
    c = elected()
    leader = c.nodes[1]
    assert leader.term == 2
    for node in c.nodes.values():
        assert node.log.entry(1).conf_change().op is ConfChangeOp.BOOTSTRAP
        assert node.log.entry(2).kind is EntryKind.EMPTY
        assert node.log.commit == 2
        assert node.leader == 1


def test_prevote_keeps_partitioned_node_from_raising_its_term() -> None:
    c = elected()
    cut = isolate(3)
    for _ in range(10 * c.nodes[3].cfg.election_ticks):
        c.tick_all(allow=cut)
    assert c.nodes[3].term == 2, "pre-vote failed, so the term did not move"
    assert c.nodes[3].role is Role.PRE_CANDIDATE
    c.tick_all(5)  # healed: the node rejoins without disturbing the leader
    assert c.nodes[1].role is Role.LEADER and c.nodes[1].term == 2
    assert c.nodes[3].role is Role.FOLLOWER and c.nodes[3].leader == 1


def test_without_prevote_a_partitioned_node_disrupts_on_rejoin() -> None:
    c = elected(pre_vote=False, check_quorum=False)
    cut = isolate(3)
    for _ in range(5 * c.nodes[3].cfg.election_ticks):
        c.tick_all(allow=cut)
    assert c.nodes[3].term > 2


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    c = elected()
    cut = isolate(1)
    # Activity seen in the current round still counts, so it takes at most two rounds.
    for _ in range(2 * c.nodes[1].cfg.election_ticks):
        c.tick(1)
        c.pump(allow=cut)
    assert c.nodes[1].role is Role.FOLLOWER
    with pytest.raises(NotLeader):
        c.nodes[1].propose(b"x")


def test_leader_lease_follower_ignores_votes_while_leader_is_live() -> None:
    c = elected()
    follower = c.nodes[2]
    vote = Message(MsgType.VOTE, 3, 2, term=5, index=100, log_term=5)
    follower.step(vote)
    assert follower.term == 2 and follower.vote == 1
    assert not follower.msgs, "ignored, not even rejected"


def test_vote_is_granted_once_per_term() -> None:
    node = RaftNode(RaftConfig(id=1), PersistentState.bootstrap({1, 2, 3}), random.Random(1))
    node.step(Message(MsgType.VOTE, 2, 1, term=2, index=1, log_term=1))
    node.step(Message(MsgType.VOTE, 3, 1, term=2, index=1, log_term=1))
    rd = node.ready()
    resps = [m for m in rd.messages if m.type is MsgType.VOTE_RESP]
    assert [(m.dst, m.reject) for m in resps] == [(2, False), (3, True)]
    assert rd.hard_state == HardState(term=2, vote=2, commit=1)


def test_vote_refused_to_a_less_complete_log() -> None:
    c = elected()
    c.nodes[1].propose(b"a")
    c.pump()
    voter = c.nodes[2]
    voter.step(Message(MsgType.VOTE, 3, 2, term=9, index=1, log_term=1, context=b"transfer"))
    resp = voter.msgs[-1]
    assert resp.type is MsgType.VOTE_RESP and resp.reject


# -- replication -----------------------------------------------------------------------


def test_proposals_replicate_and_commit_in_order() -> None:
    c = elected()
    for k in range(10):
        c.nodes[1].propose(f"cmd{k}".encode())
    c.settle()
    for i in c.ids:
        data = [e.data for e in c.stores[i].applied if e.kind is EntryKind.NORMAL]
        assert data == [f"cmd{k}".encode() for k in range(10)]


def test_follower_rejects_append_that_does_not_match_and_hints() -> None:
    node = RaftNode(RaftConfig(id=2), PersistentState.bootstrap({1, 2, 3}), random.Random(1))
    node.step(Message(MsgType.APPEND, 1, 2, term=3, index=5, log_term=3))
    resp = node.msgs[-1]
    assert resp.reject and resp.index == 5 and resp.reject_hint == 1 and resp.log_term == 1


def test_fast_backtracking_skips_a_whole_divergent_term() -> None:
    c = elected()
    old = c.nodes[1]
    # The leader is cut off and appends 50 entries nobody gets (term 1).
    cut = isolate(1)
    for k in range(50):
        old.propose(f"lost{k}".encode())
    c.pump(allow=cut)
    c.forget_leader(2, 3)
    c.campaign(2, allow=cut)
    assert c.nodes[2].role is Role.LEADER
    for k in range(5):
        c.nodes[2].propose(f"new{k}".encode())
    c.pump(allow=cut)
    rejects: list[Message] = []

    def spy(m: Message) -> bool:
        if m.type is MsgType.APPEND_RESP and m.reject:
            rejects.append(m)
        return True

    c.tick_all(3, allow=spy)
    assert old.role is Role.FOLLOWER
    assert [e.data for e in old.log.entries] == [e.data for e in c.nodes[2].log.entries]
    assert len(rejects) <= 3, f"backtracking took {len(rejects)} rejections for 50 entries"


def test_batching_bounds_entries_per_message_and_inflight() -> None:
    c = elected(max_entries_per_msg=3, max_inflight_msgs=2)
    leader = c.nodes[1]
    for k in range(20):
        leader.propose(f"c{k}".encode())
    c.process(1)
    appends = [m for m in c.outbox if m.type is MsgType.APPEND and m.dst == 2]
    assert all(len(m.entries) <= 3 for m in appends)
    assert len([m for m in appends if m.entries]) <= 2, (
        "at most MAX_INFLIGHT_MSGS appends in flight"
    )
    assert leader.progress[2].state is ProgressState.REPLICATE
    assert leader.progress[2].is_paused()
    c.settle()
    assert all(n.log.commit == 22 for n in c.nodes.values())


def test_batching_bounds_bytes_per_message() -> None:
    c = elected(max_bytes_per_msg=300)
    leader = c.nodes[1]
    for k in range(10):
        leader.propose(bytes(100) + bytes([k]))
    c.process(1)
    appends = [m for m in c.outbox if m.type is MsgType.APPEND and m.entries]
    assert appends and all(sum(e.size() for e in m.entries) <= 300 for m in appends)
    c.settle()
    assert all(n.log.commit == 12 for n in c.nodes.values())


def test_a_single_entry_larger_than_the_byte_bound_still_goes() -> None:
    c = elected(max_bytes_per_msg=10)
    c.nodes[1].propose(bytes(1000))
    c.settle()
    assert all(n.log.commit == 3 for n in c.nodes.values())


def test_duplicate_messages_are_harmless() -> None:
    c = elected()
    c.nodes[1].propose(b"x")
    c.process(1)
    msgs = list(c.outbox)
    c.outbox.extend(msgs)  # every message twice
    c.pump()
    c.outbox.extend(msgs)  # and again, late
    c.settle()
    for i in c.ids:
        assert [e.data for e in c.stores[i].applied if e.kind is EntryKind.NORMAL] == [b"x"]
        assert [e.index for e in c.stores[i].applied] == [1, 2, 3]


def test_probe_state_sends_one_append_until_answered() -> None:
    c = elected()
    leader = c.nodes[1]
    c.pump(allow=isolate(3))
    pr = leader.progress[3]
    pr.become_probe()
    leader.propose(b"a")
    leader.propose(b"b")
    c.process(1)
    to3 = [m for m in c.outbox if m.dst == 3 and m.type is MsgType.APPEND]
    assert len(to3) == 1


def test_status_reports_progress_and_lag() -> None:
    c = elected()
    c.pump()
    c.nodes[1].propose(b"a")
    c.process(1)  # not delivered yet
    st = c.nodes[1].status()
    assert st.role is Role.LEADER and st.leader == 1 and st.conf.voters == {1, 2, 3}
    assert st.followers[2].match == 2 and st.followers[2].lag == 1
    assert c.nodes[2].status().followers == {}


# -- reads -----------------------------------------------------------------------------------


def test_read_index_on_leader_needs_a_quorum_heartbeat_round() -> None:
    c = elected()
    leader = c.nodes[1]
    leader.read_index(b"r1")
    c.process(1)
    assert c.read_states[1] == []
    hb = [m for m in c.outbox if m.type is MsgType.HEARTBEAT]
    assert hb and all(m.context == b"r1" for m in hb)
    c.pump()
    assert [(r.ctx, r.index) for r in c.read_states[1]] == [(b"r1", 2)]


def test_read_index_forwarded_from_follower() -> None:
    c = elected()
    c.nodes[3].read_index(b"f")
    c.pump()
    assert [(r.ctx, r.index) for r in c.read_states[3]] == [(b"f", 2)]


def test_read_index_without_leader_raises() -> None:
    node = RaftNode(RaftConfig(id=1), PersistentState.bootstrap({1, 2, 3}), random.Random(1))
    with pytest.raises(NotLeader):
        node.read_index(b"x")


# -- leadership transfer --------------------------------------------------------------------


def test_transfer_to_caught_up_follower() -> None:
    c = elected()
    c.nodes[1].transfer_leadership(2)
    with pytest.raises(ProposalDropped):
        c.nodes[1].propose(b"during transfer")
    c.pump()
    assert c.nodes[2].role is Role.LEADER and c.nodes[2].term == 3
    assert c.nodes[1].role is Role.FOLLOWER


def test_transfer_catches_up_lagging_target_first() -> None:
    c = elected()
    cut = isolate(3)
    for k in range(5):
        c.nodes[1].propose(f"x{k}".encode())
    c.pump(allow=cut)
    c.nodes[1].transfer_leadership(3)
    c.pump()
    assert c.nodes[3].role is Role.LEADER
    assert c.nodes[3].log.commit == 8


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    c = elected()
    cut = isolate(3)
    c.nodes[1].transfer_leadership(3)
    for _ in range(c.nodes[1].cfg.election_ticks):
        c.tick(1)
        c.tick(2)
        c.pump(allow=cut)
    assert c.nodes[1].lead_transferee == 0
    c.nodes[1].propose(b"accepted again")


# -- membership ------------------------------------------------------------------------------


def test_learner_receives_log_but_does_not_vote_or_count() -> None:
    c = Cluster(4, learners=[4])
    c.campaign(1)
    leader = c.nodes[1]
    leader.propose(b"a")
    c.pump(allow=isolate(2, 3))
    assert leader.progress[4].match == 3
    assert leader.log.commit == 2, "the learner's copy does not make a quorum"
    c.tick_all(2)  # heartbeats find the lost appends
    assert c.nodes[4].log.commit == leader.log.commit == 3
    learner = c.nodes[4]
    for _ in range(5 * learner.cfg.election_ticks):
        learner.tick()
    assert learner.role is Role.FOLLOWER and not learner.msgs


def test_add_learner_then_promote_when_caught_up() -> None:
    c = Cluster(4, learners=[])
    c.nodes.pop(4)
    c.ids.remove(4)
    c.boot = PersistentState.bootstrap({1, 2, 3})
    for i in (1, 2, 3):
        c.nodes[i] = c._make(i, c.boot)
    c.campaign(1)
    leader = c.nodes[1]
    c.ids.append(4)
    c.nodes[4] = c._make(4, PersistentState.join())
    c.read_states[4] = []
    c.readies[4] = []
    leader.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, 4))
    with pytest.raises(ConfChangeRefused, match="previous"):
        leader.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, 4))
    assert leader.conf.learners == {4}, "effective when appended"
    c.process(1)
    assert not leader.learner_caught_up(4)
    c.pump()
    assert leader.learner_caught_up(4) and leader.status().followers[4].caught_up
    leader.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, 4))
    c.pump()
    assert {i: set(n.conf.voters) for i, n in c.nodes.items()} == {i: {1, 2, 3, 4} for i in c.ids}


def test_promotion_refused_for_a_lagging_learner() -> None:
    c = Cluster(4, learners=[4])
    c.campaign(1)
    leader = c.nodes[1]
    cut = isolate(4)
    for k in range(40):
        leader.propose(f"x{k}".encode())
    c.pump(allow=cut)
    with pytest.raises(ConfChangeRefused, match="caught up"):
        leader.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, 4))


def test_remove_node_and_leader_cannot_remove_itself() -> None:
    c = elected()
    leader = c.nodes[1]
    with pytest.raises(ConfChangeRefused, match="leader"):
        leader.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 1))
    leader.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 3))
    c.pump()
    assert leader.conf.voters == {1, 2}
    assert 3 not in leader.progress
    # Effective when appended: the leader stops replicating to node 3 at once, so node 3 may
    # never learn it was removed. Its campaigns must not disturb the group (leader lease).
    for _ in range(5 * c.nodes[3].cfg.election_ticks):
        c.tick_all()
    assert leader.role is Role.LEADER and leader.term == 2
    assert c.nodes[2].term == 2


def test_truncated_conf_change_is_undone() -> None:
    c = elected()
    old = c.nodes[1]
    cut = isolate(1)
    old.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, 3))
    assert old.conf.voters == {1, 2}
    c.pump(allow=cut)
    c.forget_leader(2, 3)
    c.campaign(2, allow=cut)
    c.tick_all(3)
    assert old.role is Role.FOLLOWER
    assert old.conf.voters == {1, 2, 3}, "the uncommitted removal was truncated away"


# -- snapshots ---------------------------------------------------------------------------------


def _compact(c: Cluster, i: int) -> None:
    node = c.nodes[i]
    node.compact(node.log.applied, b"state@%d" % node.log.applied)
    c.stores[i].snapshot = node.log.snapshot
    c.stores[i].entries = [e for e in c.stores[i].entries if e.index > node.log.snap_index]


def test_follower_behind_compaction_gets_install_snapshot() -> None:
    c = elected()
    cut = isolate(3)
    for k in range(10):
        c.nodes[1].propose(f"x{k}".encode())
    c.pump(allow=cut)
    _compact(c, 1)
    assert c.nodes[1].log.first_index() == 13
    c.tick_all(3)
    f = c.nodes[3]
    assert f.log.snap_index == 12 and f.log.commit == 12
    snaps = [rd.snapshot for rd in c.readies[3] if rd.snapshot is not None]
    assert len(snaps) == 1 and snaps[0].data == b"state@12"
    assert c.nodes[1].progress[3].state is ProgressState.REPLICATE
    c.nodes[1].propose(b"after")
    c.settle()
    assert c.stores[3].applied[-1].data == b"after"


def test_stale_snapshot_is_ignored() -> None:
    c = elected()
    for k in range(5):
        c.nodes[1].propose(f"x{k}".encode())
    c.settle()
    _compact(c, 1)
    snap = c.nodes[1].log.snapshot
    f = c.nodes[2]
    before = (list(f.log.entries), f.log.commit, f.log.snap_index)
    f.step(Message(MsgType.SNAPSHOT, 1, 2, term=2, snapshot=snap))
    assert (list(f.log.entries), f.log.commit, f.log.snap_index) == before
    assert f.msgs[-1].type is MsgType.APPEND_RESP and f.msgs[-1].index == f.log.commit


def test_compaction_requires_applied_entries() -> None:
    c = elected()
    c.nodes[1].propose(b"x")
    with pytest.raises(AssertionError):
        c.nodes[1].compact(3, b"")


# -- restart ------------------------------------------------------------------------------------


def test_restart_restores_log_and_hard_state() -> None:
    c = elected()
    for k in range(3):
        c.nodes[1].propose(f"x{k}".encode())
    c.settle()
    node = c.restart(2)
    assert node.term == 2 and node.vote == 1 and node.log.last_index() == 5
    assert node.log.commit == 5 and node.role is Role.FOLLOWER
    c.tick_all(2)
    assert c.nodes[1].role is Role.LEADER


def test_ready_reports_hard_state_only_when_changed() -> None:
    c = elected()
    c.pump()
    c.tick(2)
    rd = c.nodes[2].ready()
    assert rd.hard_state is None
    c.nodes[2].advance(rd)
