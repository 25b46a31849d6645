"""Consensus for txc: a pure Raft core (no I/O, clocks or randomness of its own).

The shell (storage + transport, elsewhere) drives `RaftNode` with ticks and messages and
drains `Ready` batches; `coordinator.raft.simulation` drives it deterministically.
"""

from coordinator.raft.config import RaftConfig
from coordinator.raft.core import RaftNode
from coordinator.raft.errors import (
    ConfChangeRefused,
    CorruptState,
    NotLeader,
    ProposalDropped,
    RaftError,
)
from coordinator.raft.messages import (
    NONE,
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    Snapshot,
    SnapshotMeta,
)
from coordinator.raft.ready import (
    FollowerStatus,
    PersistentState,
    ReadState,
    Ready,
    Role,
    SoftState,
    Status,
)

__all__ = [
    "NONE",
    "ConfChange",
    "ConfChangeOp",
    "ConfChangeRefused",
    "ConfState",
    "CorruptState",
    "Entry",
    "EntryKind",
    "FollowerStatus",
    "HardState",
    "Message",
    "MsgType",
    "NotLeader",
    "PersistentState",
    "ProposalDropped",
    "RaftConfig",
    "RaftError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
    "Status",
]
