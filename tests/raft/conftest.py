"""Prints the seeds CI's simulation run explored, and their replay command, in pytest's
summary (the seeds move with every commit: tests/raft/sim_seeds.py)."""

from __future__ import annotations

import pytest

from tests.raft.sim_seeds import ci_seeds

SEEDS_TEST = "test_simulation.py::test_simulation_seeds"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ran = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])]
    if any(SEEDS_TEST in r.nodeid for r in ran):
        terminalreporter.write_sep("-", "simulation seeds")
        terminalreporter.write_line(ci_seeds().describe())
