"""The deterministic simulation under many seeds (even seeds: 3 nodes, odd seeds: 5).

Each chunk runs a range of seeds and reports every failing one with the command that
replays it. 500 seeds take about 40 s on a 2-core machine; run more by hand with
`python -m coordinator.raft.simulation --seeds 5000`.
"""

from __future__ import annotations

import pytest

from coordinator.raft.simulation import (
    SimParams,
    Simulation,
    SimulationFailure,
    Stats,
    replay_command,
    run_seed,
)

SEEDS = 500
CHUNK = 50


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_simulation_seeds(start: int) -> None:
    failures = []
    for seed in range(start, start + CHUNK):
        try:
            run_seed(seed)
        except SimulationFailure as e:
            failures.append(str(e))
    assert not failures, "\n\n".join(failures)


def test_simulation_exercises_every_feature() -> None:
    """A run of seeds that does not crash, partition, transfer, snapshot... proves nothing:
    check the faults and features were actually exercised."""
    total = Stats()
    for seed in range(40):
        st = run_seed(seed)
        for k, v in vars(st).items():
            setattr(total, k, getattr(total, k) + v)
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
