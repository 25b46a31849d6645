"""Why the core refused a request. The shell turns these into HTTP answers (503 + leader)."""

from __future__ import annotations

from coordinator.raft.messages import NONE


class RaftError(Exception):
    pass


class NotLeader(RaftError):
    """Only the leader proposes and answers reads; `leader_hint` is who the node believes
    leads (NONE when it does not know), so the shell can forward or redirect."""

    def __init__(self, leader_hint: int = NONE) -> None:
        super().__init__(f"not the leader (leader hint: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader cannot take the proposal now (leadership transfer, back-pressure); retry."""


class ConfChangeRefused(RaftError):
    """The membership change is not allowed now or at all; the message says why."""


class CorruptState(RaftError):
    """The persistent state handed to the core breaks a storage guarantee (e.g. a commit
    index ahead of the durable log). Starting anyway could lose committed entries."""
