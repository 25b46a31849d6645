"""`txc bench transfers` stopped with SIGTERM (a CI timeout, `kill`, a supervisor) stops what
it started: no coordinator node, bank or PostgreSQL server is left running. On the way, the
processes it started carry no secret on their command lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

STARTED_TIMEOUT_S = 90.0  # until the bench has its nodes and banks up
STOPPED_TIMEOUT_S = 60.0  # until it has stopped them after SIGTERM
POLL_S = 0.2


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (by /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _using(path: Path) -> set[int]:
    """Processes whose command line names `path` (PostgreSQL detaches from its starter)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.add(int(entry))
    return found


def _services(pids: set[int]) -> set[int]:
    """The coordinator nodes and banks among `pids`."""
    found = set()
    for p in pids:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"coordinator\0serve" in cmdline or b"txc_demo.bank" in cmdline:
            found.add(p)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(p)
    return alive


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigterm_stops_everything_the_bench_started(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "coordinator", "bench", "transfers"]
    cmd += ["--scenarios", "txc-1", "--concurrency", "2", "--duration", "120"]
    cmd += ["--no-failover", "--accounts", "20", "--out-dir", str(tmp_path)]
    scratch = tmp_path / "scratch"  # the bench's temporary directory (and its database) go here
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + STARTED_TIMEOUT_S
        # A node and two banks, and PostgreSQL in the scratch directory.
        while len(_services(started)) < 3 and time.monotonic() < deadline:
            started = _children(bench.pid)
            time.sleep(POLL_S)
        time.sleep(2.0)  # into the measurement
        started = _children(bench.pid) | _using(scratch)
        assert len(_services(started)) == 3 and _using(scratch), started
        for pid in _services(started):  # secrets go by environment: `ps` shows command lines
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"token" not in cmdline and b"secret" not in cmdline, cmdline
        bench.send_signal(signal.SIGTERM)
        bench.wait(STOPPED_TIMEOUT_S)
        deadline = time.monotonic() + STOPPED_TIMEOUT_S
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert _alive(started) == set()
        assert bench.returncode == 130
    finally:
        if bench.poll() is None:
            bench.kill()
        for p in _alive(started):  # orphans keep their pid after the bench is gone
            os.kill(p, signal.SIGKILL)
