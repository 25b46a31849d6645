"""The deterministic simulation under many seeds (even seeds: 3 nodes, odd seeds: 5).

Each chunk runs a range of seeds and reports every failing one with the command that
replays it. The 500 seeds start at an offset derived from the commit (tests/raft/sim_seeds.py),
so every commit explores new ones; pytest's summary prints the range and its replay command.
They take about 20 s on a 2-core machine; run more by hand with
`python -m coordinator.raft.simulation --seeds 20000 --start <a new number>`.
"""

from __future__ import annotations

import heapq
import itertools
import subprocess
from collections.abc import Callable

import pytest

from coordinator.commands import Begin, Decide, Forget, PurgeTombstones
from coordinator.model import Outcome, Transaction, tombstone
from coordinator.raft import simulation
from coordinator.raft.simcheck import Checker, InvariantViolation
from coordinator.raft.simclients import CLIENT_MAX_BACKOFF_MS, CLIENT_RETRY_MS, SimTxn
from coordinator.raft.simulation import (
    LIVENESS_MS,
    SimNode,
    SimParams,
    Simulation,
    SimulationFailure,
    Stats,
    _machine_data,
    _machine_from,
    replay_command,
    run_seed,
)
from coordinator.statemachine import Machine
from tests.raft import sim_seeds
from tests.raft.sim_seeds import CHUNK, SEEDS

CI_SEEDS = sim_seeds.ci_seeds()


@pytest.mark.parametrize("chunk", range(SEEDS // CHUNK))
def test_simulation_seeds(chunk: int) -> None:
    start = CI_SEEDS.start + chunk * CHUNK
    failures = []
    for seed in range(start, start + CHUNK):
        try:
            run_seed(seed)
        except SimulationFailure as e:
            failures.append(str(e))
    assert not failures, "\n\n".join([*failures, CI_SEEDS.describe()])


def test_ci_seeds_move_with_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    a = sim_seeds.offset_from_commit("521efaa0" * 5)
    b = sim_seeds.offset_from_commit("521efaa1" * 5)
    assert a != b
    for offset in (a, b):
        assert sim_seeds.CI_SEED_FLOOR <= offset < sim_seeds.CI_SEED_FLOOR + sim_seeds.CI_SEED_SPAN
    assert sim_seeds.offset_from_commit("521efaa0" * 5) == a  # the same commit replays
    monkeypatch.setenv(sim_seeds.OFFSET_ENV, "1234")
    forced = sim_seeds.ci_seeds()
    assert forced.start == 1234
    assert "--seeds 500 --start 1234" in forced.describe()


def test_ci_seeds_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.delenv(sim_seeds.OFFSET_ENV, raising=False)
    monkeypatch.setattr(subprocess, "run", no_git)
    seeds = sim_seeds.ci_seeds()
    assert seeds.start == sim_seeds.FALLBACK_OFFSET
    assert "git rev-parse HEAD failed" in seeds.describe()
    assert "fallback" in seeds.describe()


# Issue 20: at 521efaa this seed ended 3.6 s after the heal with a leader's uncommitted tail
# of 94 entries (and failed the 8 s bound in the tree the issue was filed from): every
# client round each participant re-proposed its acknowledgement, one entry each, faster
# than its one-entry, one-in-flight log committed. With paced re-proposals it ends in about
# 1.2 s with a tail of 15; these bounds leave room for other changes, not for the pathology.
ISSUE_20_SEED = 102034
ISSUE_20_MAX_HEAL_TO_DONE_MS = LIVENESS_MS // 4
ISSUE_20_MAX_UNCOMMITTED = 40


def test_issue_20_seed_102034_clients_do_not_outgrow_a_slow_log() -> None:
    p = SimParams.from_seed(ISSUE_20_SEED)
    assert (p.nodes, p.max_entries_per_msg, p.max_inflight_msgs, p.net.max_delay_ms) == (
        3,
        1,
        1,
        20,
    ), "the seed no longer draws the slow log it is kept for"
    st = run_seed(ISSUE_20_SEED)
    assert st.heal_to_done_ms <= ISSUE_20_MAX_HEAL_TO_DONE_MS, st
    assert st.max_uncommitted <= ISSUE_20_MAX_UNCOMMITTED, st


def test_a_client_proposes_at_most_once_per_backoff() -> None:
    """What a client does not see applied is proposed again after 80, 160, ... ms, then
    every CLIENT_MAX_BACKOFF_MS however long the log takes; something new goes at once."""
    txn = SimTxn("tx", {}, Outcome.COMMIT, None, 3600.0, 0, 1)
    sent = [now for now in range(0, LIVENESS_MS, 10) if txn.retry_due(3, now)]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps[:3] == [2 * CLIENT_RETRY_MS, 4 * CLIENT_RETRY_MS, 8 * CLIENT_RETRY_MS]
    assert set(gaps[3:]) == {CLIENT_MAX_BACKOFF_MS}
    assert len(sent) <= 4 + LIVENESS_MS // CLIENT_MAX_BACKOFF_MS
    now = sent[-1] + CLIENT_RETRY_MS
    assert txn.retry_due(frozenset({"p1"}), now)  # the acknowledgements: new, at once
    assert not txn.retry_due(frozenset({"p1"}), now + CLIENT_RETRY_MS // 2)
    assert txn.retry_due(frozenset({"p1", "p2"}), now + CLIENT_RETRY_MS)  # one more knows


def test_a_client_repeats_a_forwarded_proposal_at_the_leader_it_went_to() -> None:
    """Campaign seeds 206171 and 218633 (4.2 and 4.8 s after the heal): clients kept a node cut
    off from the group (its re-admission truncated away, it still believed the old leader of
    term 2), whose forwarded proposals that leader dropped as stale. The real shell's
    followers redirect instead of forwarding; the simulated client now follows a forward."""
    sim = Simulation(SimParams.from_seed(0))
    while not _settled(sim):
        t, _, kind, arg = heapq.heappop(sim.events)
        sim.now = t
        sim._handle(kind, arg)
    leader = sim._leader()
    assert leader is not None
    follower = next(n.raft for n in sim.nodes.values() if n.raft and n.raft.leader == leader.id)
    txn = SimTxn("tx", {}, Outcome.COMMIT, None, 3600.0, sim.now, follower.id)
    sim.rng.random = lambda: 0.0  # type: ignore[method-assign]  # the follower forwards
    begin = [Begin("tx", sim.now / 1000.0)]
    sim._retry(txn, 0, begin)
    assert (txn.target, txn.forwarded_to) == (follower.id, leader.id)
    sim.now += CLIENT_RETRY_MS
    sim._retry(txn, 1, begin)  # the next step (the last one showed): through the follower
    assert (txn.target, txn.forwarded_to) == (follower.id, leader.id)
    sim.now += txn.backoff_ms
    sim._retry(txn, 1, begin)  # the same step again: at the leader it was forwarded to
    assert (txn.target, txn.forwarded_to) == (leader.id, 0)


def _settled(sim: Simulation) -> bool:
    """A leader that some other live node follows."""
    leader = sim._leader()
    return leader is not None and any(
        n.raft is not None and n.raft is not leader and n.raft.leader == leader.id
        for n in sim.nodes.values()
    )


def test_simulation_exercises_every_feature() -> None:
    """A run of seeds that does not crash, partition, transfer, snapshot... proves nothing:
    check the faults and features were actually exercised."""
    total = Stats()
    for seed in range(40):
        total.add(run_seed(seed))
    for name in (
        "elections",
        "crashes",
        "ready_crashes",
        "partitions",
        "pauses",
        "transfers",
        "conf_changes",
        "promotions",
        "snapshots_sent",
        "compactions",
        "reads_answered",
        "committed",
        "aborted",
        "forget_proposals",
        "purge_proposals",
        "forgotten",
        "purged",
        "late_answers",
        "late_tombstone_answers",
    ):
        assert getattr(total, name) > 0, f"no {name} in 40 seeds"


def test_same_seed_same_run() -> None:
    a = Simulation(SimParams.from_seed(11)).run()
    b = Simulation(SimParams.from_seed(11)).run()
    assert a == b


def test_failure_names_the_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Simulation) -> Stats:
        raise AssertionError("boom")

    monkeypatch.setattr(Simulation, "run", broken)
    with pytest.raises(SimulationFailure) as e:
        run_seed(42)
    assert replay_command(42) in str(e.value)
    assert "python -m coordinator.raft.simulation --seed 42 --verbose" in str(e.value)


class _SendsBeforePersisting(Simulation):
    """A broken shell: it sends a Ready's messages before persisting it, and sometimes
    crashes in between (votes and acknowledgements that a crash takes back)."""

    def _drain(self, i: int) -> None:
        node = self.nodes[i]
        while node.raft is not None and node.raft.has_ready():
            raft = node.raft
            rd = raft.ready()
            self._observe(raft, rd)
            for m in rd.messages:
                self.check.on_send(m)
                for at, mm in self.net.route(m, self.now):
                    self._at(at, "deliver", mm)
            if not self.calm and self.rng.random() < 0.05:
                self._crash(i, "after send, before sync")
                return
            node.store.write(rd)
            self._apply(node, rd)
            raft.advance(rd)


def test_simulation_catches_a_shell_that_sends_before_persisting() -> None:
    """The invariants have teeth: breaking the Ready contract is caught within a few seeds."""
    caught = []
    for seed in range(60):
        try:
            _SendsBeforePersisting(SimParams.from_seed(seed)).run()
        except AssertionError as e:
            caught.append((seed, e))
            break
    assert caught, "60 seeds of an unsafe shell and no invariant noticed"


# -- retention: forgetting, tombstones, purges, late askers ------------------------------

# Forgets 100 ms after a transaction ends, purges 300 ms later (111 until the clients paced
# their re-proposals, issue 20: another trajectory, with no late asker on a tombstone).
AGGRESSIVE_SEED = 25


def test_a_seed_that_forgets_aggressively_runs() -> None:
    p = SimParams.from_seed(AGGRESSIVE_SEED)
    assert (p.retention_ms, p.tombstone_retention_ms) == (100, 300)
    st = run_seed(AGGRESSIVE_SEED)
    assert st.forgotten > 0 and st.purged > 0
    assert st.late_tombstone_answers > 0  # late askers got the decision from a tombstone
    assert st.snapshots_sent > 0 and st.compactions > 0  # with tombstones in snapshots
    assert st.late_after_purge == 0  # the askers stop before a tombstone may be purged


def test_snapshots_carry_tombstones_and_the_horizon() -> None:
    m = Machine()
    for txid, outcome in (("a", Outcome.COMMIT), ("b", Outcome.ABORT), ("c", Outcome.COMMIT)):
        m.apply(Begin(txid, 1.0))
        m.apply(Decide(txid, 2.0, outcome=outcome))
    m.apply(Forget("a", 3.0))
    m.apply(Forget("b", 5.0))
    m.apply(PurgeTombstones(txid="", at=6.0, before=4.0))  # drops a's tombstone
    assert set(m.transactions) == {"b", "c"} and m.tombstone_horizon == 4.0
    r = _machine_from(_machine_data(m))
    assert r.tombstone_horizon == 4.0
    assert {k: v.to_dict() for k, v in r.transactions.items()} == {
        k: v.to_dict() for k, v in m.transactions.items()
    }
    assert r.transactions["b"].forgotten_at == 5.0
    # The restored state answers as the original: b's tombstone keeps its decision.
    assert r.apply(Decide("b", 7.0, outcome=Outcome.COMMIT)).txn.outcome is Outcome.ABORT  # type: ignore[union-attr]


def _flipped(t: Transaction) -> Transaction:
    other = Outcome.ABORT if t.outcome is Outcome.COMMIT else Outcome.COMMIT
    assert t.forgotten_at is not None
    return tombstone(
        t.txid, other, t.created_at, t.decided_at or 0, t.completed_at or 0, t.forgotten_at
    )


def test_checker_catches_a_flipped_tombstone() -> None:
    check = Checker()
    m = Machine()
    m.apply(Begin("tx", 1.0))
    decided = m.apply(Decide("tx", 2.0, outcome=Outcome.ABORT)).txn
    assert decided is not None and decided.outcome is Outcome.ABORT
    check.on_outcome("tx", Outcome.ABORT, "node 1", 3)
    m.apply(Forget("tx", 3.0))
    check.check_machine(m, 4, "node 1")  # the tombstone keeps the decision: fine
    m.transactions["tx"] = _flipped(m.transactions["tx"])
    with pytest.raises(InvariantViolation, match="outcome changed"):
        check.check_machine(m, 4, "node 1")


def test_checker_excludes_a_purged_txid_and_only_it() -> None:
    """After the purge at index 10 the txid is unknown by design: a presumed abort there
    (a new life) may contradict the first decision; before index 10 it may not."""
    check = Checker()
    check.on_outcome("tx", Outcome.COMMIT, "node 1", 5)
    assert check.on_purge(10, frozenset({"tx"}), 4.0, "node 1")
    check.on_outcome("tx", Outcome.ABORT, "node 1", 12)  # new life: not compared
    with pytest.raises(InvariantViolation, match="outcome changed"):
        check.on_outcome("tx", Outcome.ABORT, "node 2", 9)  # node 2 has not purged it yet
    with pytest.raises(InvariantViolation, match="outcome changed"):
        check.on_outcome("tx", Outcome.COMMIT, "node 2", 13)  # the new life aborted
    with pytest.raises(InvariantViolation, match="dropped"):
        check.on_purge(10, frozenset(), 4.0, "node 2")  # its snapshot lost the tombstone
    m = Machine()
    with pytest.raises(InvariantViolation, match="horizon"):
        check.check_machine(m, 11, "node 3")  # a state after the purge with horizon 0


class _FlipsTombstones(Simulation):
    """A broken state machine on node 1: every tombstone it makes reports the opposite
    decision (caught by a late asker, the whole-state checks or a snapshot it sends)."""

    def _apply_entry(self, node: SimNode, index: int, data: bytes) -> None:
        super()._apply_entry(node, index, data)
        if node.id == 1:
            for txid, t in node.machine.transactions.items():
                if t.forgotten_at is not None and t.decision_reason != "flipped":
                    flipped = _flipped(t)
                    flipped.decision_reason = "flipped"
                    node.machine.transactions[txid] = flipped


def test_simulation_catches_a_flipped_tombstone() -> None:
    with pytest.raises(InvariantViolation, match=r"outcome changed|answered"):
        _FlipsTombstones(SimParams.from_seed(AGGRESSIVE_SEED)).run()


def _without_tombstones(m: Machine) -> bytes:
    kept = Machine()
    kept.tombstone_horizon = m.tombstone_horizon
    kept.transactions = {k: t for k, t in m.transactions.items() if t.forgotten_at is None}
    return _machine_data(kept)


def _without_horizon(m: Machine) -> bytes:
    kept = Machine()
    kept.transactions = m.transactions
    return _machine_data(kept)


@pytest.mark.parametrize("broken", [_without_tombstones, _without_horizon])
def test_simulation_catches_snapshots_that_lose_retention_state(
    broken: Callable[[Machine], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots that leave the tombstones or the horizon out: a node restored from one
    does not know a forgotten txid (a late asker gets no decision, its purge drops less, or
    its state differs from the others'), or has another horizon."""
    monkeypatch.setattr(simulation, "_machine_data", broken)
    caught = []
    for seed in range(300):
        p = SimParams.from_seed(seed)
        if p.retention_ms > 250 or p.compact_every > 20:
            continue  # forgets and snapshots early enough for this to show
        try:
            Simulation(p).run()
        except InvariantViolation as e:
            caught.append((seed, e))
            break
    assert caught, f"{broken.__name__} and no invariant noticed"
