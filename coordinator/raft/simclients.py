"""Simulated 2PC clients and participants on top of the replicated log.

A client drives one transaction through begin, two enlistments, prepare, the two votes and
a decision, re-proposing each step (through whichever node it believes leads) until a
node's applied state shows it; the commands are idempotent, so duplicates are harmless.
Some transactions also get a rival `Decide(abort)` (a timeout or an operator) racing the
client's decision, and clients keep re-proposing their decision after leader changes: the
decision register must still yield one outcome. Participants learn the outcome from any
node's applied state, commit or abort locally, and acknowledge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from coordinator.commands import Begin, Command, Decide, Enlist, RecordVote, StartPrepare
from coordinator.model import Outcome, Phase2, Transaction, TxState, Vote

PARTICIPANTS = ("p1", "p2")


@dataclass
class SimTxn:
    txid: str
    votes: dict[str, Vote]
    want: Outcome  # what the client asks for (COMMIT may still become ABORT: rule 2)
    rival_abort_at: int | None  # when a rival proposes Decide(abort), if ever
    timeout_s: float
    start_ms: int
    target: int  # the node the client talks to
    step: int = 0
    rival_sent: bool = False
    # Re-proposing a step too eagerly only lengthens the log: back off until it shows up.
    proposed_step: int = -1
    proposed_at: int = 0
    backoff_ms: int = 0
    local: dict[str, Outcome] = field(default_factory=dict)
    finished_ms: int | None = None

    def steps(self, at: float) -> list[Command]:
        p1, p2 = PARTICIPANTS
        return [
            Begin(self.txid, at, timeout_s=self.timeout_s),
            Enlist(self.txid, at, name=p1, url=f"http://{p1}"),
            Enlist(self.txid, at, name=p2, url=f"http://{p2}"),
            StartPrepare(self.txid, at),
            RecordVote(self.txid, at, name=p1, vote=self.votes[p1]),
            RecordVote(self.txid, at, name=p2, vote=self.votes[p2]),
            Decide(self.txid, at, outcome=self.want, reason="client"),
        ]


def step_done(step: int, t: Transaction | None) -> bool:
    """Whether a node's applied state shows the effect of the client's step."""
    if t is None:
        return False
    if t.state.decided:
        return True  # nothing before the decision matters any more
    if step == 0:
        return True
    if step in (1, 2):
        return t.participant(PARTICIPANTS[step - 1]) is not None
    if step == 3:
        return t.state is not TxState.ACTIVE
    if step in (4, 5):
        p = t.participant(PARTICIPANTS[step - 4])
        return p is not None and p.vote is not None
    return False


def pending_acks(t: Transaction) -> list[str]:
    return [p.name for p in t.participants if p.phase2 is Phase2.PENDING]


def new_txn(rng: random.Random, n: int, start_ms: int, nodes: list[int]) -> SimTxn:
    votes = {
        p: (Vote.YES if rng.random() < 0.8 else rng.choice([Vote.NO, Vote.READ_ONLY]))
        for p in PARTICIPANTS
    }
    unanimous = all(v is not Vote.NO for v in votes.values())
    # Sometimes the client asks to commit regardless: the state machine must turn it into ABORT.
    want = Outcome.COMMIT if unanimous or rng.random() < 0.2 else Outcome.ABORT
    rival = start_ms + rng.randint(0, 600) if rng.random() < 0.3 else None
    timeout_s = 0.4 if rng.random() < 0.1 else 3600.0
    return SimTxn(f"tx{n}", votes, want, rival, timeout_s, start_ms, rng.choice(nodes))
