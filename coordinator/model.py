"""The transaction record: what the decision register and the dashboard know of a transaction.

These are plain data. The only code that changes them is `coordinator.statemachine.apply`,
so every node that applies the same log holds the same records.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

# Named bounds on what one transaction may hold (TigerBeetle style: every collection has one).
MAX_PARTICIPANTS = 64
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
MAX_NAME = 128
MAX_URL = 2048
MAX_TEXT = 1000  # reasons and error messages are cut to this many characters
MIN_TIMEOUT_S = 0.1
MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_TIMEOUT_S = 60.0


class TxState(StrEnum):
    ACTIVE = "active"
    PREPARING = "preparing"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def decided(self) -> bool:
        return self in DECIDED_STATES

    @property
    def terminal(self) -> bool:
        return self in (TxState.COMMITTED, TxState.ABORTED)


DECIDED_STATES = frozenset(
    {TxState.COMMITTING, TxState.COMMITTED, TxState.ABORTING, TxState.ABORTED}
)


class Outcome(StrEnum):
    COMMIT = "commit"
    ABORT = "abort"


class Vote(StrEnum):
    YES = "yes"
    NO = "no"
    READ_ONLY = "read_only"


class Phase2(StrEnum):
    """Where a participant stands in phase 2."""

    WAITING = "waiting"  # no decision yet
    PENDING = "pending"  # decided; the outcome still has to reach this participant
    DONE = "done"  # the participant acknowledged the outcome
    NOT_NEEDED = "not_needed"  # read-only, or voted NO and rolled back by itself


class Heuristic(StrEnum):
    """A participant's own outcome that contradicts (or may contradict) the decision."""

    MIXED = "mixed"  # a participant did the opposite of the decision
    HAZARD = "hazard"  # a participant lost track of the transaction; its outcome is unknown


@dataclass
class Participant:
    name: str
    url: str
    enlisted_at: float
    vote: Vote | None = None
    vote_reason: str | None = None
    voted_at: float | None = None
    phase2: Phase2 = Phase2.WAITING
    attempts: int = 0
    last_error: str | None = None
    last_attempt_at: float | None = None
    acked_at: float | None = None
    heuristic: str | None = None  # what the participant reported instead: commit/abort/unknown

    def copy(self) -> Participant:
        p = object.__new__(Participant)
        p.__dict__.update(self.__dict__)  # every field is immutable
        return p

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than `asdict` (a recursive deep copy): this runs for every
        # participant of every transaction a log batch changes, on every node.
        d = dict(self.__dict__)  # exactly the fields, in order (no other attributes are set)
        assert len(d) == len(_PARTICIPANT_FIELDS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Participant:
        d = dict(d)
        d["vote"] = Vote(d["vote"]) if d.get("vote") else None
        d["phase2"] = Phase2(d.get("phase2", Phase2.WAITING))
        return cls(**d)


@dataclass
class Transaction:
    txid: str
    state: TxState
    created_at: float
    expires_at: float
    updated_at: float
    timeout_s: float = DEFAULT_TIMEOUT_S
    labels: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    outcome: Outcome | None = None
    decision_reason: str | None = None
    decided_at: float | None = None
    completed_at: float | None = None
    prepare_started_at: float | None = None
    heuristic: Heuristic | None = None
    heuristic_acknowledged: bool = False
    participants: list[Participant] = field(default_factory=list)
    # Set on a tombstone: the record left the replicated state at this time (retention) and
    # only its decision is kept (coordinator/retention.py says for how long and why).
    forgotten_at: float | None = None

    @property
    def finished(self) -> bool:
        """Decided, every participant acknowledged, no heuristic left for an operator: the
        record may leave the replicated state (DESIGN rule 6 keeps every other one)."""
        return self.state.terminal and (self.heuristic is None or self.heuristic_acknowledged)

    def tombstone(self, at: float) -> Transaction:
        """What stays of a finished transaction once it is forgotten: its decision. Commands
        applied to it behave as for any decided transaction (a Begin finds it, a Decide
        reports its outcome, an Enlist is refused), so forgetting changes no answer."""
        assert self.finished and self.outcome is not None and self.forgotten_at is None
        return tombstone(
            self.txid,
            self.outcome,
            self.created_at,
            self.decided_at or at,
            self.completed_at or at,
            at,
        )

    def participant(self, name: str) -> Participant | None:
        for p in self.participants:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)  # exactly the fields, in order (no other attributes are set)
        assert len(d) == len(_TRANSACTION_FIELDS)
        d["labels"] = dict(self.labels)
        d["participants"] = [p.to_dict() for p in self.participants]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transaction:
        d = dict(d)
        d["state"] = TxState(d["state"])
        d["outcome"] = Outcome(d["outcome"]) if d.get("outcome") else None
        d["heuristic"] = Heuristic(d["heuristic"]) if d.get("heuristic") else None
        d["participants"] = [Participant.from_dict(p) for p in d.get("participants", [])]
        return cls(**d)

    def copy(self) -> Transaction:
        """A deep copy (the state machine never changes its input). By the instance dict:
        this is on the apply path of every command on every node, and `dataclasses.replace`
        (which re-runs `__init__`) measured ~6% of a follower's CPU."""
        t = object.__new__(Transaction)
        t.__dict__.update(self.__dict__)
        t.labels = dict(self.labels)
        t.participants = [p.copy() for p in self.participants]
        return t


def tombstone(
    txid: str,
    outcome: Outcome,
    created_at: float,
    decided_at: float,
    completed_at: float,
    forgotten_at: float,
) -> Transaction:
    """A tombstone from its stored columns (coordinator/schema.py `tombstones`)."""
    return Transaction(
        txid=txid,
        state=TxState.COMMITTED if outcome is Outcome.COMMIT else TxState.ABORTED,
        created_at=created_at,
        expires_at=decided_at,
        updated_at=forgotten_at,
        timeout_s=0.0,
        outcome=outcome,
        decided_at=decided_at,
        completed_at=completed_at,
        forgotten_at=forgotten_at,
    )


_PARTICIPANT_FIELDS = tuple(f.name for f in fields(Participant))
_TRANSACTION_FIELDS = tuple(f.name for f in fields(Transaction))
