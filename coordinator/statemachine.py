"""The 2PC state machine: a pure function from (transaction, command) to (transaction, result).

No I/O, no clock, no randomness: the clock reading is in the command (`at`), set by the
proposer. This is what every node applies from the committed log, and what the simulator
runs under seeds. The rules of DESIGN §3 that live here:

* rule 1 (decision register): the first `Decide` applied wins; later ones report it;
* rule 2: a `Decide(commit)` takes effect as COMMIT only if every participant voted YES or
  READ_ONLY and the transaction had not expired at `at`; otherwise it is recorded as ABORT;
* rule 3: a `Decide(abort)` for an unknown transaction records a durable ABORT (presumed abort).

Retention (coordinator/retention.py): `Forget` turns a finished record into a tombstone that
keeps its decision, and every command applied to a tombstone answers as it would have for the
full record; `PurgeTombstones` names no transaction and is handled by the holder of the
records (`Machine` here, coordinator/store.py on a node).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coordinator.commands import (
    Ack,
    AcknowledgeHeuristic,
    Begin,
    Command,
    Decide,
    Enlist,
    Forget,
    Phase2Attempt,
    PurgeTombstones,
    RecordVote,
    StartPrepare,
)
from coordinator.model import (
    MAX_PARTICIPANTS,
    MAX_TEXT,
    Heuristic,
    Outcome,
    Participant,
    Phase2,
    Transaction,
    TxState,
    Vote,
)


class Status(StrEnum):
    OK = "ok"
    CREATED = "created"  # Begin made a new transaction
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # illegal in the transaction's current state
    INVALID = "invalid"


@dataclass(frozen=True)
class Result:
    """What applying one command did. `txn` is the transaction after the command (None when
    it does not exist); `changed` says whether it must be written back."""

    status: Status
    txn: Transaction | None
    changed: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (Status.OK, Status.CREATED)


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_TEXT]


def apply(txn: Transaction | None, cmd: Command, horizon: float = 0.0) -> Result:
    """Apply one committed command. `txn` is never modified; a changed copy is returned.
    `horizon` is the holder's tombstone horizon (only `Forget` reads it)."""
    assert txn is None or txn.txid == cmd.txid, "command applied to another transaction"
    assert not isinstance(cmd, PurgeTombstones), "a purge is applied by the record holder"
    if isinstance(cmd, Begin):
        return _begin(txn, cmd)
    if isinstance(cmd, Decide):
        return _decide(txn, cmd)
    if txn is None:
        return Result(Status.NOT_FOUND, None, message=f"transaction {cmd.txid} not found")
    if isinstance(cmd, Forget):
        return _forget(txn, cmd, horizon)
    t = txn.copy()
    if isinstance(cmd, Enlist):
        result = _enlist(t, cmd)
    elif isinstance(cmd, StartPrepare):
        result = _start_prepare(t, cmd)
    elif isinstance(cmd, RecordVote):
        result = _vote(t, cmd)
    elif isinstance(cmd, Phase2Attempt):
        result = _phase2_attempt(t, cmd)
    elif isinstance(cmd, Ack):
        result = _ack(t, cmd)
    elif isinstance(cmd, AcknowledgeHeuristic):
        result = _acknowledge_heuristic(t, cmd)
    else:  # pragma: no cover - every command type is handled above
        raise AssertionError(f"unknown command {cmd!r}")
    if result.changed:
        assert result.txn is not None
        result.txn.updated_at = max(result.txn.updated_at, cmd.at)
        _check_invariants(result.txn)
    return result


def _begin(txn: Transaction | None, cmd: Begin) -> Result:
    if txn is not None:
        return Result(Status.OK, txn, message="transaction exists")
    t = Transaction(
        txid=cmd.txid,
        state=TxState.ACTIVE,
        created_at=cmd.at,
        expires_at=cmd.at + cmd.timeout_s,
        updated_at=cmd.at,
        timeout_s=cmd.timeout_s,
        labels=dict(cmd.labels),
        idempotency_key=cmd.idempotency_key,
    )
    return Result(Status.CREATED, t, changed=True)


def _enlist(t: Transaction, cmd: Enlist) -> Result:
    existing = t.participant(cmd.name)
    if existing is not None:
        if existing.url != cmd.url:
            return Result(
                Status.CONFLICT,
                t,
                message=f"participant {cmd.name!r} is enlisted with another url ({existing.url})",
            )
        # Repeated enlistment (a retried request): same participant, same answer.
        if cmd.vote is Vote.YES and existing.vote is None and t.state is TxState.ACTIVE:
            existing.vote = Vote.YES
            existing.voted_at = cmd.at
            return Result(Status.OK, t, changed=True)
        return Result(Status.OK, t)
    if t.state is not TxState.ACTIVE:
        return Result(Status.CONFLICT, t, message=f"transaction is {t.state}, not active")
    if cmd.at >= t.expires_at:
        return Result(Status.CONFLICT, t, message="transaction has expired")
    if len(t.participants) >= MAX_PARTICIPANTS:
        return Result(Status.CONFLICT, t, message=f"at most {MAX_PARTICIPANTS} participants")
    p = Participant(name=cmd.name, url=cmd.url, enlisted_at=cmd.at)
    if cmd.vote is Vote.YES:
        p.vote = Vote.YES
        p.voted_at = cmd.at
    t.participants.append(p)
    return Result(Status.OK, t, changed=True)


def _start_prepare(t: Transaction, cmd: StartPrepare) -> Result:
    if t.state is TxState.ACTIVE:
        t.state = TxState.PREPARING
        t.prepare_started_at = cmd.at
        return Result(Status.OK, t, changed=True)
    # Already preparing or decided: a repeated commit request; the caller reads the state.
    return Result(Status.OK, t)


def _vote(t: Transaction, cmd: RecordVote) -> Result:
    p = t.participant(cmd.name)
    if p is None:
        return Result(Status.NOT_FOUND, t, message=f"participant {cmd.name!r} not enlisted")
    if t.state.decided or p.vote is not None:
        # The vote arrived after the decision, or repeats one: the first one counts.
        return Result(Status.OK, t)
    p.vote = cmd.vote
    p.vote_reason = _cut(cmd.reason)
    p.voted_at = cmd.at
    return Result(Status.OK, t, changed=True)


def _decide(txn: Transaction | None, cmd: Decide) -> Result:
    if txn is None:
        if cmd.outcome is Outcome.COMMIT:
            return Result(Status.NOT_FOUND, None, message=f"transaction {cmd.txid} not found")
        # Presumed abort made durable: an unknown transaction is recorded as aborted, so a
        # late begin or commit for this id can never contradict the answer given.
        t = Transaction(
            txid=cmd.txid,
            state=TxState.ABORTED,
            created_at=cmd.at,
            expires_at=cmd.at,
            updated_at=cmd.at,
            timeout_s=0.0,
            outcome=Outcome.ABORT,
            decision_reason=_cut(cmd.reason) or "presumed abort: unknown transaction",
            decided_at=cmd.at,
            completed_at=cmd.at,
        )
        _check_invariants(t)
        return Result(Status.OK, t, changed=True)
    if txn.outcome is not None:
        # Rule 1: the first decision stands; this one only reports it.
        return Result(Status.OK, txn)
    t = txn.copy()
    outcome, reason = cmd.outcome, cmd.reason
    if outcome is Outcome.COMMIT:
        missing = [p.name for p in t.participants if p.vote not in (Vote.YES, Vote.READ_ONLY)]
        if missing and cmd.only_if_unanimous and cmd.at < t.expires_at:
            return Result(Status.CONFLICT, txn, message=f"votes missing: {', '.join(missing)}")
        if cmd.at >= t.expires_at:
            outcome, reason = Outcome.ABORT, "transaction expired before the decision"
        elif missing:
            outcome, reason = Outcome.ABORT, f"no unanimous YES: {', '.join(missing)}"
    t.outcome = outcome
    t.decision_reason = _cut(reason)
    t.decided_at = cmd.at
    t.state = TxState.COMMITTING if outcome is Outcome.COMMIT else TxState.ABORTING
    for p in t.participants:
        p.phase2 = Phase2.PENDING if _needs_phase2(p, outcome) else Phase2.NOT_NEEDED
    _complete_if_done(t, cmd.at)
    t.updated_at = max(t.updated_at, cmd.at)
    _check_invariants(t)
    return Result(Status.OK, t, changed=True)


def _needs_phase2(p: Participant, outcome: Outcome) -> bool:
    if p.vote is Vote.READ_ONLY or p.vote is Vote.NO:
        return False  # nothing to finish: read-only work, or already rolled back
    if outcome is Outcome.COMMIT:
        return p.vote is Vote.YES
    # ABORT goes to every participant that may hold prepared or in-progress work, including
    # one that never answered prepare: it records the abort and refuses late work.
    return True


def _complete_if_done(t: Transaction, at: float) -> None:
    if any(p.phase2 is Phase2.PENDING for p in t.participants):
        return
    t.state = TxState.COMMITTED if t.outcome is Outcome.COMMIT else TxState.ABORTED
    t.completed_at = at


def _phase2_attempt(t: Transaction, cmd: Phase2Attempt) -> Result:
    p = t.participant(cmd.name)
    if p is None:
        return Result(Status.NOT_FOUND, t, message=f"participant {cmd.name!r} not enlisted")
    if p.phase2 is not Phase2.PENDING:
        return Result(Status.OK, t)
    p.attempts += 1
    p.last_error = _cut(cmd.error)
    p.last_attempt_at = cmd.at
    return Result(Status.OK, t, changed=True)


def _ack(t: Transaction, cmd: Ack) -> Result:
    p = t.participant(cmd.name)
    if p is None:
        return Result(Status.NOT_FOUND, t, message=f"participant {cmd.name!r} not enlisted")
    if p.phase2 is not Phase2.PENDING:
        return Result(Status.OK, t)  # a repeated acknowledgement
    assert t.outcome is not None, "phase 2 pending without a decision"
    p.phase2 = Phase2.DONE
    p.acked_at = cmd.at
    p.attempts += 1
    p.last_attempt_at = cmd.at
    if cmd.heuristic is not None and cmd.heuristic != t.outcome.value:
        p.heuristic = cmd.heuristic
        p.last_error = f"heuristic outcome reported by participant: {cmd.heuristic}"
        if cmd.heuristic in (Outcome.COMMIT.value, Outcome.ABORT.value):
            t.heuristic = Heuristic.MIXED
        elif t.heuristic is None:
            t.heuristic = Heuristic.HAZARD
    else:
        p.last_error = None
    _complete_if_done(t, cmd.at)
    return Result(Status.OK, t, changed=True)


def _forget(txn: Transaction, cmd: Forget, horizon: float) -> Result:
    if txn.forgotten_at is not None:
        return Result(Status.OK, txn)  # forgotten already (a repeated proposal)
    if not txn.finished:
        return Result(Status.CONFLICT, txn, message=f"transaction is {txn.state}, not finished")
    # Never under the horizon: a Forget stamped by a proposer whose clock is behind the one
    # that purged would otherwise make a tombstone that is purged already (its txid unknown).
    return Result(Status.OK, txn.tombstone(max(cmd.at, horizon)), changed=True)


def _acknowledge_heuristic(t: Transaction, cmd: AcknowledgeHeuristic) -> Result:
    if t.heuristic is None:
        return Result(Status.CONFLICT, t, message="transaction has no heuristic outcome")
    if t.heuristic_acknowledged:
        return Result(Status.OK, t)
    t.heuristic_acknowledged = True
    return Result(Status.OK, t, changed=True)


def _check_invariants(t: Transaction) -> None:
    """Invariants that hold after every command (asserted, TigerBeetle style)."""
    assert (t.outcome is None) == (not t.state.decided), (t.state, t.outcome)
    if t.outcome is Outcome.COMMIT:
        assert t.state in (TxState.COMMITTING, TxState.COMMITTED)
        assert all(p.vote in (Vote.YES, Vote.READ_ONLY) for p in t.participants)
    if t.outcome is Outcome.ABORT:
        assert t.state in (TxState.ABORTING, TxState.ABORTED)
    if t.state.terminal:
        assert all(p.phase2 is not Phase2.PENDING for p in t.participants)
    if not t.state.decided:
        assert all(p.phase2 is Phase2.WAITING for p in t.participants)
    assert len({p.name for p in t.participants}) == len(t.participants)
    assert len(t.participants) <= MAX_PARTICIPANTS
    if t.forgotten_at is not None:
        assert t.state.terminal and not t.participants


def visible(t: Transaction | None, horizon: float) -> Transaction | None:
    """`t` as the state machine sees it under a tombstone horizon: a tombstone forgotten
    before the horizon has been purged (its txid is unknown again)."""
    if t is not None and t.forgotten_at is not None and t.forgotten_at < horizon:
        return None
    return t


class Machine:
    """A whole register of transactions in memory: the form the simulator and tests use.
    The coordinator node keeps the same records in PostgreSQL instead."""

    def __init__(self) -> None:
        self.transactions: dict[str, Transaction] = {}
        self.tombstone_horizon = 0.0

    def apply(self, cmd: Command) -> Result:
        if isinstance(cmd, PurgeTombstones):
            self.tombstone_horizon = max(self.tombstone_horizon, cmd.before)
            for txid in [
                k for k, t in self.transactions.items() if not visible(t, self.tombstone_horizon)
            ]:
                del self.transactions[txid]
            return Result(Status.OK, None)
        txn = visible(self.transactions.get(cmd.txid), self.tombstone_horizon)
        result = apply(txn, cmd, self.tombstone_horizon)
        if result.changed:
            assert result.txn is not None
            self.transactions[cmd.txid] = result.txn
        return result
