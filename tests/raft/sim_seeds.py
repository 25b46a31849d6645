"""Which seeds CI's simulation run explores: a range that moves with every commit.

Seeds 0..499 ran on every commit for months, so they stopped finding anything; a campaign by
hand (issue 20) found what they could not. So CI's seeds start at an offset derived from the
commit under test: every commit explores seeds no run has seen, and the offset is printed
(the test's failure message and pytest's summary) with the command that replays them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

SEEDS = 500  # seeds per CI run (about 20 s on a 2-core machine)
CHUNK = 50  # seeds per test, so that a failure names a small range
# Offsets start above every range run by hand so far (0 .. a few hundred thousand) and spread
# over this many seeds: two commits share seeds with a chance of about SEEDS / CI_SEED_SPAN.
CI_SEED_FLOOR = 1_000_000
CI_SEED_SPAN = 1_000_000_000
# Without git (a tarball, no git binary): the seeds CI ran before offsets, said so.
FALLBACK_OFFSET = 0
GIT_TIMEOUT_S = 10.0  # `git rev-parse HEAD` answers in milliseconds; do not hang a test run
OFFSET_ENV = "TXC_SIM_SEED_OFFSET"  # set it to run the seeds of another commit's offset
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SeedRange:
    start: int
    why: str  # where the offset came from

    @property
    def stop(self) -> int:
        return self.start + SEEDS

    def replay(self) -> str:
        """The command that runs exactly these seeds again, and how to re-run the test."""
        return (
            f"python -m coordinator.raft.simulation --seeds {SEEDS} --start {self.start}  "
            f"(or {OFFSET_ENV}={self.start} pytest tests/raft/test_simulation.py)"
        )

    def describe(self) -> str:
        seeds = f"simulation seeds {self.start}..{self.stop - 1}"
        return f"{seeds} ({self.why}); replay: {self.replay()}"


def offset_from_commit(commit: str) -> int:
    """A commit id (hex) -> the first seed of its range, above CI_SEED_FLOOR (ValueError
    if it is not hex)."""
    return CI_SEED_FLOOR + int(commit[:15], 16) % CI_SEED_SPAN


def ci_seeds() -> SeedRange:
    """The range for this run: from $TXC_SIM_SEED_OFFSET if set, else from `git rev-parse
    HEAD`, else FALLBACK_OFFSET with the reason."""
    forced = os.environ.get(OFFSET_ENV, "").strip()
    if forced:
        return SeedRange(int(forced), f"from ${OFFSET_ENV}")
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
        commit = done.stdout.strip()
        return SeedRange(offset_from_commit(commit), f"offset from commit {commit[:12]}")
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        why = f"git rev-parse HEAD failed ({type(e).__name__}): fixed fallback offset"
        return SeedRange(FALLBACK_OFFSET, why)
