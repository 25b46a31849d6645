"""What passes between the core and its shell: the state it starts from, the batches of work
it hands out (Ready), and what it reports about itself (Status).

The Ready contract, in the order the shell must follow (DESIGN §3 rule 4):

1. persist `snapshot` (if any; it replaces the whole stored log), then `entries` (the first
   one's index and everything after it is overwritten), then `hard_state` -- entries and
   hard state in one transaction, or entries first, so the stored commit index is never
   ahead of the stored log;
2. only then send `messages`: a vote or an append acknowledgement is only ever in the same
   Ready as the hard state / entries it vouches for, or a later one;
3. apply `snapshot` then `committed`, in order, and report `read_states` once applied;
4. call `advance(rd)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from coordinator.raft.messages import (
    NONE,
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    Snapshot,
    SnapshotMeta,
)
from coordinator.raft.progress import ProgressState


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile: who leads as far as this node knows. Never persisted."""

    role: Role = Role.FOLLOWER
    leader: int = NONE


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the node has applied up to `index`."""

    ctx: bytes
    index: int


@dataclass(frozen=True)
class PersistentState:
    """What a node restarts from: exactly what it persisted through Ready, plus the index its
    applied state has reached (`applied`, so committed entries are not re-applied)."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=lambda: Snapshot(SnapshotMeta()))
    entries: tuple[Entry, ...] = ()
    applied: int = 0

    @classmethod
    def bootstrap(
        cls, voters: set[int] | frozenset[int], learners: set[int] | frozenset[int] = frozenset()
    ) -> PersistentState:
        """A founding node of a new group: every founder starts with the same committed
        entry 1 (term 1) holding the first membership."""
        cc = ConfChange(
            ConfChangeOp.BOOTSTRAP, NONE, tuple(sorted(voters)), tuple(sorted(learners))
        )
        entry = Entry(1, 1, EntryKind.CONF_CHANGE, cc.encode())
        return cls(hard_state=HardState(1, NONE, 1), entries=(entry,))

    @classmethod
    def join(cls) -> PersistentState:
        """A node that will join an existing group: an empty log and no membership; it waits
        (never campaigning) until the leader adds it and sends it the log or a snapshot."""
        return cls()


@dataclass
class Ready:
    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    committed: list[Entry]
    messages: list[Message]
    read_states: list[ReadState]
    soft_state: SoftState | None

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.committed
            or self.messages
            or self.read_states
            or self.soft_state
        )


@dataclass(frozen=True)
class FollowerStatus:
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    is_learner: bool
    caught_up: bool  # close enough to the commit index to be promoted to voter
    lag: int  # entries behind the leader's last index


@dataclass(frozen=True)
class Status:
    id: int
    term: int
    vote: int
    role: Role
    leader: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    snapshot_index: int
    conf: ConfState
    lead_transferee: int
    followers: dict[int, FollowerStatus]  # empty unless leader
