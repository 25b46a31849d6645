"""Single-server membership changes and majority arithmetic.

A change takes effect on a node as soon as its entry is in that node's log (appended, not
applied; Raft thesis §4.1), and is undone if the entry is truncated away. The leader allows
one uncommitted change at a time, and none before it has committed an entry of its own term
(Ongaro's fix to the single-server algorithm), so consecutive configurations always share a
voter in every pair of majorities.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.raft.errors import ConfChangeRefused
from coordinator.raft.messages import ConfChange, ConfChangeOp, ConfState


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """Total (never raises): a follower must take whatever its leader logged. Changes that
    do not apply (validated away by the leader) leave the configuration as it is."""
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.op is ConfChangeOp.BOOTSTRAP:
        if not conf.members:
            voters, learners = set(cc.voters), set(cc.learners) - set(cc.voters)
    elif cc.op is ConfChangeOp.ADD_LEARNER:
        if cc.node not in voters:
            learners.add(cc.node)
    elif cc.op is ConfChangeOp.PROMOTE:
        if cc.node in learners:
            learners.discard(cc.node)
            voters.add(cc.node)
    elif cc.op is ConfChangeOp.REMOVE:
        if len(voters - {cc.node}) >= 1:  # never remove the last voter
            voters.discard(cc.node)
            learners.discard(cc.node)
    return ConfState(frozenset(voters), frozenset(learners))


def validate_change(conf: ConfState, cc: ConfChange, leader: int) -> None:
    """What the leader refuses to log, with the reason."""
    if cc.op is ConfChangeOp.BOOTSTRAP:
        raise ConfChangeRefused("a running group is not bootstrapped again")
    if cc.op is ConfChangeOp.ADD_LEARNER:
        if cc.node in conf.members:
            raise ConfChangeRefused(f"node {cc.node} is already a member")
    elif cc.op is ConfChangeOp.PROMOTE:
        if cc.node not in conf.learners:
            raise ConfChangeRefused(f"node {cc.node} is not a learner")
    elif cc.op is ConfChangeOp.REMOVE:
        if cc.node not in conf.members:
            raise ConfChangeRefused(f"node {cc.node} is not a member")
        if cc.node == leader:
            raise ConfChangeRefused("the leader cannot remove itself: transfer leadership first")
        if conf.voters == {cc.node}:
            raise ConfChangeRefused("cannot remove the last voter")


def quorum(voters: int) -> int:
    return voters // 2 + 1


def committed_index(voters: Iterable[int], match: dict[int, int]) -> int:
    """The highest index that a majority of voters hold (their matches, sorted descending,
    at the quorum-th position)."""
    indexes = sorted((match.get(v, 0) for v in voters), reverse=True)
    assert indexes, "a configuration has at least one voter"
    return indexes[quorum(len(indexes)) - 1]


def has_quorum(voters: Iterable[int], granted: Iterable[int]) -> bool:
    vs = set(voters)
    return len(vs & set(granted)) >= quorum(len(vs))
