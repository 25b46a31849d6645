"""Wire and log types of the Raft core.

Everything here crosses a process boundary: entries and hard state go to PostgreSQL,
messages go over HTTP as JSON. So every type converts to and from plain dicts, with bytes
as base64 (JSON has no bytes), and is frozen: a message handed to the shell must not
change under it while it is being persisted or sent.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NONE = 0  # "no node": node ids are positive integers, 0 means unknown (no leader, no vote)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class EntryKind(StrEnum):
    NORMAL = "normal"  # data is an application command
    EMPTY = "empty"  # a new leader's no-op: lets it commit entries of earlier terms
    CONF_CHANGE = "conf_change"  # data is an encoded ConfChange


class ConfChangeOp(StrEnum):
    BOOTSTRAP = "bootstrap"  # entry 1 of a new group: its first membership (voters, learners)
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"  # learner -> voter
    REMOVE = "remove"  # voter or learner -> gone


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change. Only one node changes per entry, so any majority
    of the old voters overlaps any majority of the new ones (Raft thesis §4.1). BOOTSTRAP is
    the exception that starts a group: it is the identical first entry of every founding
    node's log, so a node that joins later learns the whole membership history from the log
    (or from a snapshot) like any other entry."""

    op: ConfChangeOp
    node: int = NONE
    voters: tuple[int, ...] = ()  # BOOTSTRAP only
    learners: tuple[int, ...] = ()  # BOOTSTRAP only

    def encode(self) -> bytes:
        d: dict[str, Any] = {"op": self.op.value, "node": self.node}
        if self.op is ConfChangeOp.BOOTSTRAP:
            d["voters"], d["learners"] = list(self.voters), list(self.learners)
        return json.dumps(d).encode()

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        d = json.loads(data)
        return cls(
            ConfChangeOp(d["op"]),
            int(d["node"]),
            tuple(int(v) for v in d.get("voters", ())),
            tuple(int(v) for v in d.get("learners", ())),
        )


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def __post_init__(self) -> None:
        assert self.index >= 1 and self.term >= 1, self

    def conf_change(self) -> ConfChange:
        assert self.kind is EntryKind.CONF_CHANGE, self
        return ConfChange.decode(self.data)

    def size(self) -> int:
        """Approximate bytes on the wire: what batching bounds count."""
        return len(self.data) + 24

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "term": self.term,
            "kind": self.kind.value,
            "data": _b64(self.data),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(int(d["index"]), int(d["term"]), EntryKind(d["kind"]), _unb64(d["data"]))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before the node says anything that depends on it: its term and
    vote (so it never votes twice in a term) and its commit index (a hint; never ahead of
    the durable log)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HardState:
        return cls(int(d["term"]), int(d["vote"]), int(d["commit"]))


@dataclass(frozen=True, slots=True)
class ConfState:
    """The membership: voters count for elections and commitment, learners only receive
    the log."""

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is a voter or a learner, not both"
        assert NONE not in self.voters and NONE not in self.learners

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def to_dict(self) -> dict[str, Any]:
        return {"voters": sorted(self.voters), "learners": sorted(self.learners)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfState:
        return cls(frozenset(int(v) for v in d["voters"]), frozenset(int(v) for v in d["learners"]))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """The last log entry a snapshot covers, and the membership in force at that entry."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "term": self.term, "conf": self.conf.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnapshotMeta:
        return cls(int(d["index"]), int(d["term"]), ConfState.from_dict(d["conf"]))


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta.to_dict(), "data": _b64(self.data)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        return cls(SnapshotMeta.from_dict(d["meta"]), _unb64(d["data"]))


class MsgType(StrEnum):
    PRE_VOTE = "pre_vote"
    PRE_VOTE_RESP = "pre_vote_resp"
    VOTE = "vote"
    VOTE_RESP = "vote_resp"
    APPEND = "append"
    APPEND_RESP = "append_resp"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_RESP = "heartbeat_resp"
    SNAPSHOT = "snapshot"  # InstallSnapshot
    TIMEOUT_NOW = "timeout_now"  # leadership transfer: campaign now, skipping pre-vote
    PROPOSE = "propose"  # a proposal forwarded by a follower to the leader
    READ_INDEX = "read_index"  # a read forwarded by a follower to the leader
    READ_INDEX_RESP = "read_index_resp"


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Fields mean what they mean in etcd-io/raft's Message:

    * APPEND: `index`/`log_term` identify the entry before `entries`; `commit` is the leader's.
    * APPEND_RESP: `index` is the last index now matching the leader (or, with `reject`, the
      index that was rejected); `reject_hint`/`log_term` point the leader at the conflict.
    * (PRE_)VOTE: `index`/`log_term` are the candidate's last entry.
    * HEARTBEAT(_RESP), READ_INDEX(_RESP): `context` carries the read request's id;
      READ_INDEX_RESP's `index` is the read index.
    * PROPOSE: `context` carries the forwarded command.
    * (PRE_)VOTE with `context` == b"transfer": a leadership transfer's election, which
      followers grant even inside their leader lease.
    """

    type: MsgType
    src: int
    dst: int
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type.value,
            "src": self.src,
            "dst": self.dst,
            "term": self.term,
            "log_term": self.log_term,
            "index": self.index,
            "entries": [e.to_dict() for e in self.entries],
            "commit": self.commit,
            "reject": self.reject,
            "reject_hint": self.reject_hint,
            "snapshot": self.snapshot.to_dict() if self.snapshot is not None else None,
            "context": _b64(self.context),
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        snap = d.get("snapshot")
        return cls(
            type=MsgType(d["type"]),
            src=int(d["src"]),
            dst=int(d["dst"]),
            term=int(d["term"]),
            log_term=int(d.get("log_term", 0)),
            index=int(d.get("index", 0)),
            entries=tuple(Entry.from_dict(e) for e in d.get("entries", ())),
            commit=int(d.get("commit", 0)),
            reject=bool(d.get("reject", False)),
            reject_hint=int(d.get("reject_hint", 0)),
            snapshot=Snapshot.from_dict(snap) if snap is not None else None,
            context=_unb64(d.get("context", "")),
        )
