"""The pure 2PC state machine: every transition, the decision register, timeouts, heuristics."""

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
    Phase2Attempt,
    RecordVote,
    StartPrepare,
    decode,
    encode,
)
from coordinator.model import Heuristic, Outcome, Phase2, TxState, Vote
from coordinator.statemachine import Machine, Status

T = "tx-1"


def machine_with(
    *names: str, timeout: float = 10.0, votes: dict[str, Vote] | None = None
) -> Machine:
    m = Machine()
    assert m.apply(Begin(txid=T, at=0.0, timeout_s=timeout)).status is Status.CREATED
    for n in names:
        assert m.apply(Enlist(txid=T, at=0.1, name=n, url=f"http://{n}")).ok
    for n, v in (votes or {}).items():
        assert m.apply(RecordVote(txid=T, at=0.2, name=n, vote=v)).changed
    return m


def test_begin_creates_active_transaction_and_repeats_are_noops() -> None:
    m = Machine()
    r = m.apply(Begin(txid=T, at=5.0, timeout_s=3.0, labels={"k": "v"}))
    assert r.status is Status.CREATED and r.txn is not None
    assert r.txn.state is TxState.ACTIVE and r.txn.expires_at == 8.0 and r.txn.labels == {"k": "v"}
    again = m.apply(Begin(txid=T, at=6.0, timeout_s=99.0))
    assert again.status is Status.OK and not again.changed and again.txn is not None
    assert again.txn.expires_at == 8.0


def test_commands_for_unknown_transactions_are_not_found() -> None:
    m = Machine()
    for cmd in (
        Enlist(txid=T, at=1, name="a", url="http://a"),
        StartPrepare(txid=T, at=1),
        RecordVote(txid=T, at=1, name="a", vote=Vote.YES),
        Ack(txid=T, at=1, name="a"),
        Decide(txid=T, at=1, outcome=Outcome.COMMIT),
    ):
        assert m.apply(cmd).status is Status.NOT_FOUND
    assert T not in m.transactions


def test_presumed_abort_records_a_durable_abort_for_unknown_transactions() -> None:
    m = Machine()
    r = m.apply(Decide(txid=T, at=1.0, outcome=Outcome.ABORT, reason="asked"))
    assert r.changed and r.txn is not None
    assert r.txn.state is TxState.ABORTED and r.txn.outcome is Outcome.ABORT
    # A late begin with the same id cannot resurrect it; a late commit reports the abort.
    assert m.apply(Begin(txid=T, at=2.0)).txn.state is TxState.ABORTED  # type: ignore[union-attr]
    late = m.apply(Decide(txid=T, at=3.0, outcome=Outcome.COMMIT))
    assert late.txn is not None and late.txn.outcome is Outcome.ABORT and not late.changed


def test_enlist_rules() -> None:
    m = machine_with("a", timeout=10)
    same = m.apply(Enlist(txid=T, at=1, name="a", url="http://a"))
    assert same.ok and not same.changed
    other_url = m.apply(Enlist(txid=T, at=1, name="a", url="http://elsewhere"))
    assert other_url.status is Status.CONFLICT
    expired = m.apply(Enlist(txid=T, at=10.0, name="b", url="http://b"))
    assert expired.status is Status.CONFLICT and "expired" in expired.message
    assert m.apply(StartPrepare(txid=T, at=2)).changed
    closed = m.apply(Enlist(txid=T, at=2, name="c", url="http://c"))
    assert closed.status is Status.CONFLICT and "preparing" in closed.message


def test_enlist_with_yes_vote_and_repeated_enlist_upgrading_to_yes() -> None:
    m = machine_with()
    r = m.apply(Enlist(txid=T, at=1, name="a", url="http://a", vote=Vote.YES))
    assert r.txn is not None and r.txn.participants[0].vote is Vote.YES
    m.apply(Enlist(txid=T, at=1, name="b", url="http://b"))
    up = m.apply(Enlist(txid=T, at=1, name="b", url="http://b", vote=Vote.YES))
    assert up.changed and up.txn is not None and up.txn.participant("b").vote is Vote.YES  # type: ignore[union-attr]


def test_participant_limit() -> None:
    from coordinator.model import MAX_PARTICIPANTS

    m = machine_with(*(f"p{i}" for i in range(MAX_PARTICIPANTS)))
    r = m.apply(Enlist(txid=T, at=1, name="one-more", url="http://x"))
    assert r.status is Status.CONFLICT


def test_commit_on_unanimous_yes_then_phase2_until_every_ack() -> None:
    m = machine_with("a", "b", "c", votes={"a": Vote.YES, "b": Vote.YES, "c": Vote.READ_ONLY})
    r = m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    t = r.txn
    assert t is not None and t.outcome is Outcome.COMMIT and t.state is TxState.COMMITTING
    assert [p.phase2 for p in t.participants] == [Phase2.PENDING, Phase2.PENDING, Phase2.NOT_NEEDED]
    t = m.apply(Ack(txid=T, at=2, name="a")).txn
    assert t is not None and t.state is TxState.COMMITTING
    dup = m.apply(Ack(txid=T, at=2.5, name="a"))
    assert dup.ok and not dup.changed
    t = m.apply(Ack(txid=T, at=3, name="b")).txn
    assert t is not None and t.state is TxState.COMMITTED and t.completed_at == 3


def test_commit_without_unanimous_yes_is_recorded_as_abort() -> None:
    m = machine_with("a", "b", votes={"a": Vote.YES})
    t = m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT)).txn
    assert t is not None and t.outcome is Outcome.ABORT
    assert "no unanimous YES: b" in (t.decision_reason or "")
    # b never answered: it still gets the abort (it may hold work); a prepared: it too.
    assert [p.phase2 for p in t.participants] == [Phase2.PENDING, Phase2.PENDING]


def test_no_vote_aborts_and_the_no_voter_needs_no_phase2() -> None:
    m = machine_with("a", "b", votes={"a": Vote.YES, "b": Vote.NO})
    t = m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT)).txn
    assert t is not None and t.outcome is Outcome.ABORT
    assert t.participant("b").phase2 is Phase2.NOT_NEEDED  # type: ignore[union-attr]
    t = m.apply(Ack(txid=T, at=2, name="a")).txn
    assert t is not None and t.state is TxState.ABORTED


def test_commit_after_expiry_is_abort() -> None:
    m = machine_with("a", timeout=5, votes={"a": Vote.YES})
    t = m.apply(Decide(txid=T, at=5.0, outcome=Outcome.COMMIT)).txn
    assert t is not None and t.outcome is Outcome.ABORT and "expired" in (t.decision_reason or "")


def test_read_only_and_empty_transactions_complete_at_decision() -> None:
    m = machine_with("a", votes={"a": Vote.READ_ONLY})
    t = m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT)).txn
    assert t is not None and t.state is TxState.COMMITTED
    m2 = machine_with()
    t2 = m2.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT)).txn
    assert t2 is not None and t2.state is TxState.COMMITTED


def test_votes_after_decision_and_repeated_votes_are_ignored() -> None:
    m = machine_with("a", "b", votes={"a": Vote.YES})
    again = m.apply(RecordVote(txid=T, at=1, name="a", vote=Vote.NO))
    assert again.ok and not again.changed
    m.apply(Decide(txid=T, at=2, outcome=Outcome.ABORT))
    late = m.apply(RecordVote(txid=T, at=3, name="b", vote=Vote.YES))
    assert late.ok and not late.changed
    assert m.apply(RecordVote(txid=T, at=3, name="zz", vote=Vote.YES)).status is Status.NOT_FOUND


def test_phase2_attempts_record_the_last_error() -> None:
    m = machine_with("a", votes={"a": Vote.YES})
    m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    m.apply(Phase2Attempt(txid=T, at=2, name="a", error="connection refused"))
    t = m.apply(Phase2Attempt(txid=T, at=3, name="a", error="timeout" * 500)).txn
    assert t is not None
    p = t.participant("a")
    assert (
        p is not None and p.attempts == 2 and p.last_error is not None and len(p.last_error) == 1000
    )
    t = m.apply(Ack(txid=T, at=4, name="a")).txn
    assert t is not None and t.state is TxState.COMMITTED and t.participants[0].last_error is None
    # Attempts after the acknowledgement change nothing.
    assert not m.apply(Phase2Attempt(txid=T, at=5, name="a", error="late")).changed


def test_heuristic_outcomes_are_flagged_never_hidden() -> None:
    m = machine_with("a", "b", votes={"a": Vote.YES, "b": Vote.YES})
    m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    t = m.apply(Ack(txid=T, at=2, name="a", heuristic="abort")).txn
    assert t is not None and t.heuristic is Heuristic.MIXED
    assert t.participant("a").heuristic == "abort"  # type: ignore[union-attr]
    t = m.apply(Ack(txid=T, at=3, name="b", heuristic="unknown")).txn
    assert t is not None and t.heuristic is Heuristic.MIXED and t.state is TxState.COMMITTED
    t = m.apply(AcknowledgeHeuristic(txid=T, at=4)).txn
    assert t is not None and t.heuristic_acknowledged and t.heuristic is Heuristic.MIXED


def test_hazard_when_a_participant_lost_the_transaction() -> None:
    m = machine_with("a", votes={"a": Vote.YES})
    m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    t = m.apply(Ack(txid=T, at=2, name="a", heuristic="unknown")).txn
    assert t is not None and t.heuristic is Heuristic.HAZARD
    # An ack reporting the decided outcome is no heuristic.
    m2 = machine_with("a", votes={"a": Vote.YES})
    m2.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT))
    t2 = m2.apply(Ack(txid=T, at=2, name="a", heuristic="commit")).txn
    assert t2 is not None and t2.heuristic is None


def test_acknowledge_heuristic_without_one_is_a_conflict() -> None:
    m = machine_with()
    assert m.apply(AcknowledgeHeuristic(txid=T, at=1)).status is Status.CONFLICT


def test_apply_never_mutates_its_input() -> None:
    m = machine_with("a")
    before = m.transactions[T].to_dict()
    from coordinator.statemachine import apply

    apply(m.transactions[T], RecordVote(txid=T, at=1, name="a", vote=Vote.YES))
    assert m.transactions[T].to_dict() == before


# -- properties ---------------------------------------------------------------------------

NAMES = ["a", "b", "c"]

command_st = st.one_of(
    st.builds(
        lambda at, n: Enlist(txid=T, at=at, name=n, url=f"http://{n}"),
        st.floats(0, 12),
        st.sampled_from(NAMES),
    ),
    st.builds(
        lambda at, n: Enlist(txid=T, at=at, name=n, url=f"http://{n}", vote=Vote.YES),
        st.floats(0, 12),
        st.sampled_from(NAMES),
    ),
    st.builds(lambda at: StartPrepare(txid=T, at=at), st.floats(0, 12)),
    st.builds(
        lambda at, n, v: RecordVote(txid=T, at=at, name=n, vote=v),
        st.floats(0, 12),
        st.sampled_from(NAMES),
        st.sampled_from(list(Vote)),
    ),
    st.builds(
        lambda at, o: Decide(txid=T, at=at, outcome=o),
        st.floats(0, 12),
        st.sampled_from(list(Outcome)),
    ),
    st.builds(
        lambda at, n, h: Ack(txid=T, at=at, name=n, heuristic=h),
        st.floats(0, 12),
        st.sampled_from(NAMES),
        st.sampled_from([None, None, "commit", "abort", "unknown"]),
    ),
    st.builds(
        lambda at, n: Phase2Attempt(txid=T, at=at, name=n, error="x"),
        st.floats(0, 12),
        st.sampled_from(NAMES),
    ),
)


@settings(max_examples=400, deadline=None)
@given(begin_first=st.booleans(), commands=st.lists(command_st, max_size=30))
def test_first_decision_wins_under_every_interleaving(
    begin_first: bool, commands: list[Command]
) -> None:
    m = Machine()
    if begin_first:
        m.apply(Begin(txid=T, at=0.0, timeout_s=10.0))
    decided: Outcome | None = None
    for cmd in commands:
        before = m.transactions.get(T)
        votes_before = {p.name: p.vote for p in before.participants} if before else {}
        r = m.apply(cmd)
        t = m.transactions.get(T)
        if t is None:
            continue
        if decided is not None:
            assert t.outcome is decided, "a decision changed"
        elif t.outcome is not None:
            decided = t.outcome
            if decided is Outcome.COMMIT:
                # Rule 2: unanimous YES / READ_ONLY and not expired at the decision.
                assert isinstance(cmd, Decide) and cmd.at < t.expires_at
                assert all(v in (Vote.YES, Vote.READ_ONLY) for v in votes_before.values())
        # Round trip: what is stored can be read back identically.
        assert type(t).from_dict(t.to_dict()) == t
        assert decode(encode(cmd)) == cmd
        assert r.status in Status


@settings(max_examples=200, deadline=None)
@given(order=st.permutations([0, 1, 2, 3]))
def test_racing_decisions_have_one_outcome(order: list[int]) -> None:
    """Commit, abort, a timeout and a participant's inquiry race through the register."""
    m = machine_with("a", "b", votes={"a": Vote.YES, "b": Vote.YES})
    racers = [
        Decide(txid=T, at=1, outcome=Outcome.COMMIT, reason="client commit"),
        Decide(txid=T, at=1, outcome=Outcome.ABORT, reason="client abort"),
        Decide(txid=T, at=11, outcome=Outcome.ABORT, reason="timed out"),
        Decide(txid=T, at=2, outcome=Outcome.ABORT, reason="presumed abort"),
    ]
    first = racers[order[0]]
    outcomes = {m.apply(racers[i]).txn.outcome for i in order}  # type: ignore[union-attr]
    assert outcomes == {first.outcome}


def test_conditional_commit_decides_nothing_when_votes_are_missing() -> None:
    m = machine_with("a", "b", votes={"a": Vote.YES})
    r = m.apply(Decide(txid=T, at=1, outcome=Outcome.COMMIT, only_if_unanimous=True))
    assert r.status is Status.CONFLICT and not r.changed and "b" in r.message
    assert m.transactions[T].outcome is None
    m.apply(RecordVote(txid=T, at=2, name="b", vote=Vote.YES))
    t = m.apply(Decide(txid=T, at=3, outcome=Outcome.COMMIT, only_if_unanimous=True)).txn
    assert t is not None and t.outcome is Outcome.COMMIT
    # Expired: still an abort, conditional or not (rule 2).
    m2 = machine_with("a", timeout=5, votes={})
    t2 = m2.apply(Decide(txid=T, at=6, outcome=Outcome.COMMIT, only_if_unanimous=True)).txn
    assert t2 is not None and t2.outcome is Outcome.ABORT
