"""Simulated 2PC clients and participants on top of the replicated log.

A client drives one transaction through begin, two enlistments, prepare, the two votes and
a decision, re-proposing each step (through whichever node it believes leads) until a
node's applied state shows it; the commands are idempotent, so duplicates are harmless.
Some transactions also get a rival `Decide(abort)` (a timeout or an operator) racing the
client's decision, and clients keep re-proposing their decision after leader changes: the
decision register must still yield one outcome. Participants learn the outcome from any
node's applied state, commit or abort locally, and acknowledge.

Every re-proposal is paced by what the client sees applied (`SimTxn.retry_due`): a capped
exponential backoff, as the engine's phase-2 rounds and callers' retries are. Proposals that
are re-sent on a fixed short period, whatever the log's speed, outgrow a slow log (one entry
per message, one message in flight, 20 ms delays commit some 50 entries a second): its
uncommitted tail then grows, every proposal waits behind it, and waiting makes clients
re-propose more (issue 20: acknowledgements re-proposed every client round, one entry per
participant, left a transaction unfinished 8 s after the network healed).

Late askers come after a transaction is done, when its record may have been forgotten
(only a tombstone left): the client repeats its commit or its begin with the same txid, or
a participant in doubt asks for the outcome (`Engine.outcome`: read it, and when the node
does not know the txid propose `Decide(abort)`, presumed abort). Each must get the decision.
They stop asking before the tombstone may be purged (after which the txid is unknown by
design); simcheck also excludes purged txids explicitly, for an ask applied late.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import StrEnum

from coordinator.commands import Begin, Command, Decide, Enlist, RecordVote, StartPrepare
from coordinator.model import Outcome, Phase2, Transaction, TxState, Vote

PARTICIPANTS = ("p1", "p2")
# A client proposes at most once per CLIENT_RETRY_MS; what it does not see applied it proposes
# again after a backoff that starts at twice that and doubles up to CLIENT_MAX_BACKOFF_MS (see
# the module's docstring).
CLIENT_RETRY_MS = 40
CLIENT_MAX_BACKOFF_MS = 640


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
    forwarded_to: int = 0  # the leader `target` forwarded the last proposal to (0: none)
    rival_sent: bool = False
    # Re-proposing too eagerly only lengthens the log: back off until it shows up. What the
    # client proposed last (a step's index, or the participants acknowledging), when, and
    # how long it waits before proposing it again.
    proposing: Hashable = None
    proposed_at: int = 0
    backoff_ms: int = 0
    attempts: int = 0  # proposals of `proposing` so far
    local: dict[str, Outcome] = field(default_factory=dict)
    finished_ms: int | None = None

    def retry_due(self, what: Hashable, now_ms: int) -> bool:
        """Whether to propose `what` now. Something new (the next step, one more participant
        acknowledging) goes at once, unless a proposal went out less than CLIENT_RETRY_MS ago;
        the same thing again only once its backoff has passed, which each proposal doubles
        (80, 160, ... ms) up to CLIENT_MAX_BACKOFF_MS. So a client adds at most one entry per
        backoff, however long the log takes to commit what it proposed."""
        if what != self.proposing:
            self.proposing, self.backoff_ms, self.attempts = what, CLIENT_RETRY_MS, 0
        if now_ms - self.proposed_at < self.backoff_ms:
            return False
        self.proposed_at = now_ms
        self.attempts += 1
        self.backoff_ms = min(2 * self.backoff_ms, CLIENT_MAX_BACKOFF_MS)
        assert CLIENT_RETRY_MS <= self.backoff_ms <= CLIENT_MAX_BACKOFF_MS, self.backoff_ms
        return True

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


class Ask(StrEnum):
    COMMIT = "commit"  # the client repeats its commit
    BEGIN = "begin"  # the client repeats its begin, with the same txid
    OUTCOME = "outcome"  # a participant in doubt asks for the outcome


PRESUMED_ABORT = "presumed abort: unknown transaction"  # Engine.outcome's reason
ASK_SOON_MS = 50  # a "soon" asker asks within this of the transaction's end
ASK_PATIENCE_MS = 500  # an asker re-asks for this long, then gives up


@dataclass
class LateAsker:
    txid: str
    kind: Ask
    ask_ms: int  # first ask
    until_ms: int  # last ask: before the tombstone may be purged
    target: int
    fast_commit: bool  # a commit repeated with the one-round Decide (Engine's fast path)
    timeout_s: float
    read_first: bool  # an outcome inquiry reads before it proposes (Engine.outcome)
    answer: str = ""  # where the answer came from (simcheck.on_answer), once answered
    forwarded_to: int = 0  # as SimTxn's
    proposed_at: int = 0
    backoff_ms: int = 0

    def commands(self, at: float) -> list[Command]:
        if self.kind is Ask.COMMIT:
            cmds: list[Command] = [StartPrepare(self.txid, at)]
            if self.fast_commit:
                cmds.append(Decide(self.txid, at, outcome=Outcome.COMMIT, only_if_unanimous=True))
            return cmds
        if self.kind is Ask.BEGIN:
            return [Begin(self.txid, at, timeout_s=self.timeout_s)]
        return [Decide(self.txid, at, outcome=Outcome.ABORT, reason=PRESUMED_ABORT)]


def late_askers(
    rng: random.Random,
    txn: SimTxn,
    now_ms: int,
    forget_ms: int,
    safe_until_ms: int,
    last_tomb_ask_ms: int,
    nodes: list[int],
) -> list[LateAsker]:
    """Who comes back for `txn`, done at `now_ms`: each kind of asker with some chance,
    either soon or once the record is likely forgotten (`forget_ms`) if that is no later
    than `last_tomb_ask_ms` (the run waits for its askers: it must not last much longer),
    and never after `safe_until_ms` (the tombstone may be purged after that)."""
    out = []
    tombstone = now_ms <= forget_ms <= last_tomb_ask_ms
    for kind in Ask:
        # Mostly after forgetting (what this checks); now and then soon, on the record.
        if rng.random() >= (0.5 if tombstone else 0.15):
            continue
        if tombstone and rng.random() < 0.8:
            ask_ms = forget_ms + rng.randint(0, ASK_SOON_MS)
        else:
            ask_ms = now_ms + rng.randint(0, ASK_SOON_MS)
        until_ms = min(ask_ms + ASK_PATIENCE_MS, safe_until_ms)
        if until_ms < ask_ms:
            continue
        out.append(
            LateAsker(
                txn.txid,
                kind,
                ask_ms,
                until_ms,
                rng.choice(nodes),
                fast_commit=rng.random() < 0.5,
                timeout_s=txn.timeout_s,
                read_first=rng.random() < 0.5,
            )
        )
    return out
