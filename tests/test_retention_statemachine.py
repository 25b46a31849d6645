"""Retention in the pure state machine: what `Forget` and `PurgeTombstones` do, and the
property that forgetting never changes an answer while the tombstone lives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.commands import (
    Ack,
    AcknowledgeHeuristic,
    Begin,
    Command,
    Decide,
    Enlist,
    Forget,
    PurgeTombstones,
    RecordVote,
    StartPrepare,
    decode,
    encode,
)
from coordinator.model import Outcome, TxState, Vote
from coordinator.retention import purge_before
from coordinator.statemachine import Machine, Status

T = "tx-1"


def committed(m: Machine, txid: str = T, at: float = 0.0) -> None:
    assert m.apply(Begin(txid=txid, at=at, timeout_s=10)).status is Status.CREATED
    assert m.apply(Enlist(txid=txid, at=at, name="a", url="http://a", vote=Vote.YES)).ok
    assert m.apply(Decide(txid=txid, at=at + 1, outcome=Outcome.COMMIT)).changed
    r = m.apply(Ack(txid=txid, at=at + 2, name="a"))
    assert r.txn is not None and r.txn.state is TxState.COMMITTED


def test_only_a_finished_transaction_is_forgotten() -> None:
    m = Machine()
    assert m.apply(Forget(txid=T, at=1)).status is Status.NOT_FOUND
    m.apply(Begin(txid=T, at=0, timeout_s=10))
    m.apply(Enlist(txid=T, at=0, name="a", url="http://a", vote=Vote.YES))
    for _ in ("active", "committing"):
        r = m.apply(Forget(txid=T, at=1))
        assert r.status is Status.CONFLICT and not r.changed
        assert m.transactions[T].forgotten_at is None
        m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    m.apply(Ack(txid=T, at=2, name="a"))
    r = m.apply(Forget(txid=T, at=3))
    assert r.changed and r.txn is not None
    stone = m.transactions[T]
    assert stone.forgotten_at == 3 and stone.participants == [] and stone.labels == {}
    assert stone.outcome is Outcome.COMMIT and stone.state is TxState.COMMITTED
    assert stone.decided_at == 1 and stone.completed_at == 2
    again = m.apply(Forget(txid=T, at=4))
    assert again.ok and not again.changed and m.transactions[T].forgotten_at == 3


def test_a_heuristic_waiting_for_an_operator_is_not_forgotten() -> None:
    m = Machine()
    m.apply(Begin(txid=T, at=0, timeout_s=10))
    m.apply(Enlist(txid=T, at=0, name="a", url="http://a", vote=Vote.YES))
    m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    m.apply(Ack(txid=T, at=2, name="a", heuristic="abort"))
    assert m.transactions[T].state is TxState.COMMITTED
    assert m.apply(Forget(txid=T, at=3)).status is Status.CONFLICT
    m.apply(AcknowledgeHeuristic(txid=T, at=4))
    assert m.apply(Forget(txid=T, at=5)).changed


def test_a_tombstone_answers_as_the_record_did() -> None:
    m = Machine()
    committed(m)
    m.apply(Forget(txid=T, at=3))
    # A repeated begin (an idempotency key reused) finds the transaction, decided.
    r = m.apply(Begin(txid=T, at=4, timeout_s=10, idempotency_key="k"))
    assert r.status is Status.OK and not r.changed and r.txn is not None
    assert r.txn.outcome is Outcome.COMMIT
    # A late enlistment is refused: the transaction is not active.
    r = m.apply(Enlist(txid=T, at=4, name="late", url="http://late", vote=Vote.YES))
    assert r.status is Status.CONFLICT and not r.changed
    # A repeated commit (StartPrepare then a conditional decision) reports the outcome.
    assert m.apply(StartPrepare(txid=T, at=4)).txn.outcome is Outcome.COMMIT  # type: ignore[union-attr]
    r = m.apply(Decide(txid=T, at=4, outcome=Outcome.COMMIT, only_if_unanimous=True))
    assert not r.changed and r.txn is not None and r.txn.outcome is Outcome.COMMIT
    # An inquiry's presumed abort cannot overturn it.
    r = m.apply(Decide(txid=T, at=4, outcome=Outcome.ABORT, reason="presumed abort"))
    assert not r.changed and r.txn is not None and r.txn.outcome is Outcome.COMMIT
    # Late phase-2 results and votes change nothing.
    assert not m.apply(RecordVote(txid=T, at=4, name="a", vote=Vote.NO)).changed
    assert not m.apply(Ack(txid=T, at=4, name="a")).changed
    assert m.transactions[T].forgotten_at == 3


def test_a_purge_makes_the_txid_unknown_again() -> None:
    m = Machine()
    committed(m, "old", at=0)
    committed(m, "new", at=100)
    m.apply(Forget(txid="old", at=10))
    m.apply(Forget(txid="new", at=110))
    m.apply(PurgeTombstones(txid="", at=120, before=50))
    assert "old" not in m.transactions and m.transactions["new"].forgotten_at == 110
    assert m.tombstone_horizon == 50
    # An older purge never moves the horizon back.
    m.apply(PurgeTombstones(txid="", at=121, before=20))
    assert m.tombstone_horizon == 50
    # Unknown again: presumed abort applies (the documented end of the guarantee).
    r = m.apply(Decide(txid="old", at=130, outcome=Outcome.ABORT))
    assert r.changed and r.txn is not None and r.txn.outcome is Outcome.ABORT


def test_commands_round_trip() -> None:
    for cmd in (Forget(txid=T, at=1.5), PurgeTombstones(txid="", at=2.0, before=1.0)):
        assert decode(encode(cmd)) == cmd


def test_purge_is_proposed_in_steps() -> None:
    day = 86_400.0
    assert purge_before(0.0, 500.0, 1000.0, day) is None  # nothing is a day old yet
    p = purge_before(0.0, 500.0, day + 1000.0, day)
    assert p is not None and p.before == 1000.0
    # Once purged up to the due horizon, the next purge waits for a step (1% of a day at most
    # 300 s) rather than proposing an entry on every pass.
    assert purge_before(1000.0, 1050.0, day + 1100.0, day) is None
    assert purge_before(1000.0, 1050.0, day + 1300.0, day) is not None
    # Nothing to purge (no tombstone, or none old enough): no entry, however long idle.
    assert purge_before(0.0, None, 10 * day, day) is None
    assert purge_before(1000.0, 9 * day + 1, 10 * day, day) is None


# -- property: forgetting changes no answer -------------------------------------------------

TXIDS = ("t1", "t2", "t3")
NAMES = ("a", "b")


def _command(kind: int, txid: str, name: str, at: float, flag: bool) -> Command:
    if kind == 0:
        return Begin(txid=txid, at=at, timeout_s=5.0, idempotency_key="k" if flag else None)
    if kind == 1:
        return Enlist(txid=txid, at=at, name=name, url=f"http://{name}", vote=Vote.YES)
    if kind == 2:
        return StartPrepare(txid=txid, at=at)
    if kind == 3:
        return RecordVote(txid=txid, at=at, name=name, vote=Vote.YES if flag else Vote.NO)
    if kind == 4:
        return Decide(txid=txid, at=at, outcome=Outcome.COMMIT if flag else Outcome.ABORT)
    if kind == 5:
        return Ack(txid=txid, at=at, name=name)
    return Decide(txid=txid, at=at, outcome=Outcome.ABORT, reason="presumed abort")


steps = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.sampled_from(TXIDS),
        st.sampled_from(NAMES),
        st.booleans(),
        st.booleans(),  # forget every finished record before this command
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_forgetting_never_changes_an_outcome(
    program: list[tuple[int, str, str, bool, bool]],
) -> None:
    """Two registers apply the same commands; one also forgets every finished record at
    random points. Whatever either reports as a transaction's outcome is the same, and the
    forgetting one never creates a record the other does not have."""
    plain, forgetful = Machine(), Machine()
    for i, (kind, txid, name, flag, forget) in enumerate(program):
        at = float(i)
        if forget:
            for t in list(forgetful.transactions.values()):
                if t.finished and t.forgotten_at is None:
                    assert forgetful.apply(Forget(txid=t.txid, at=at)).changed
        cmd = _command(kind, txid, name, at, flag)
        a, b = plain.apply(cmd), forgetful.apply(cmd)
        if a.txn is None:
            assert b.txn is None
        elif b.txn is not None and b.txn.outcome is not None:
            assert a.txn.outcome is b.txn.outcome, (cmd, a.txn, b.txn)
        assert (b.status is Status.CREATED) <= (a.status is Status.CREATED)
    for txid, t in forgetful.transactions.items():
        assert plain.transactions[txid].outcome is t.outcome


def test_a_forget_stamped_before_the_horizon_still_leaves_a_tombstone() -> None:
    """A proposer whose clock is behind the one that purged: its tombstone is stamped at the
    horizon, not under it (it would be purged at birth, and its txid presumed aborted)."""
    m = Machine()
    committed(m)
    m.apply(PurgeTombstones(txid="", at=500, before=400))
    assert m.apply(Forget(txid=T, at=100)).changed
    stone = m.transactions[T]
    assert stone.forgotten_at == 400 and stone.outcome is Outcome.COMMIT
    r = m.apply(Decide(txid=T, at=600, outcome=Outcome.ABORT, reason="presumed abort"))
    assert not r.changed and r.txn is not None and r.txn.outcome is Outcome.COMMIT
