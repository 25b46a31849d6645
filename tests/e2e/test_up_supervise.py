"""`txc up` as a dev cluster (real processes, its own embedded PostgreSQL): a node or a bank
killed with SIGKILL comes back by itself; `txc node stop` takes a node down and keeps it
down, `txc node start` brings it back; and SIGTERM still stops every process it started,
a frozen one included, within the stop bound. The healed group still commits a transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from coordinator import shutdown, supervise
from participant_sdk import TxcClient
from tests.e2e.up_process import UpProcess, base_port, port_free
from tests.helpers import gone
from txc_demo.transfer import transfer

BACK_TIMEOUT_S = 60.0  # a restarted node or bank answers /healthz within this
HELD_CHECK_S = 3.0  # a stopped node must still be down after this (6 times the first backoff)


def _status(data: Path) -> dict[str, dict[str, object]]:
    children: dict[str, dict[str, object]] = json.loads((data / "up.json").read_text())["children"]
    return children


def _pid(data: Path, name: str) -> int:
    pid = _status(data)[name]["pid"]
    assert isinstance(pid, int), _status(data)
    return pid


def _healthy(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy after {timeout_s:.0f}s"
        time.sleep(0.2)


def _node(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "coordinator", "node", *args, "--data-dir", str(data)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_txc_up_restarts_what_dies_obeys_node_stop_start_and_stops_everything(
    tmp_path: Path,
) -> None:
    port = base_port()
    data = tmp_path / "txc"
    up = UpProcess(data, port)
    nodes = [f"http://127.0.0.1:{port + i}" for i in range(3)]
    bank_a, bank_b = (f"http://127.0.0.1:{p}" for p in up.ports()[3:])
    try:
        up.wait_up()
        # Nobody else may write in the data directory (credentials, hold files).
        assert os.stat(data).st_mode & 0o022 == 0
        assert os.stat(data / "control").st_mode & 0o077 == 0

        # A node killed with SIGKILL is restarted, says so, and answers again.
        old = _pid(data, "node2")
        os.kill(old, signal.SIGKILL)
        i = up.wait_for("node2 exited with signal 9 (SIGKILL); restarting in", 10)
        up.wait_for("node2 restarted (pid", 10, after=i)
        assert _pid(data, "node2") != old
        _healthy(nodes[1], BACK_TIMEOUT_S)

        # So is a bank.
        os.kill(_pid(data, "bank-a"), signal.SIGKILL)
        up.wait_for("bank-a restarted (pid", 10)
        _healthy(bank_a, BACK_TIMEOUT_S)

        # Stopped on purpose, a node stays down; started, it is back.
        r = _node(data, "stop", "3")
        assert (r.returncode, r.stdout.strip()) == (0, "node3 stopped"), r
        held = _status(data)["node3"]
        assert held["state"] == "stopped" and held["pid"] is None
        time.sleep(HELD_CHECK_S)
        assert _status(data)["node3"]["state"] == "stopped"
        assert port_free(port + 2)
        r = _node(data, "start", "node3")
        assert r.returncode == 0 and r.stdout.startswith("node3 running, pid"), r
        _healthy(nodes[2], BACK_TIMEOUT_S)
        r = _node(data, "list")
        assert r.returncode == 0 and "node3" in r.stdout and "bank-b" in r.stdout, r
        r = _node(data, "stop", "node9")
        assert r.returncode == 5 and "no process named 'node9'" in r.stderr, r

        # The healed group commits.
        creds = json.loads((data / "credentials.json").read_text())
        with TxcClient(nodes, token=creds["client"]) as client:
            out = transfer(nodes[0], bank_a, "alice", bank_b, "bob", 2, client=client)
            assert out["outcome"] == "commit", out

        # A frozen bank (SIGSTOP: it cannot act on SIGTERM) does not keep SIGTERM from
        # stopping everything within the bound.
        pids = [_pid(data, name) for name in _status(data)]
        os.kill(_pid(data, "bank-b"), signal.SIGSTOP)
        took = up.stop(signal.SIGTERM, shutdown.STOP_BOUND_S + 10)
        assert took < shutdown.STOP_BOUND_S + 5, up.output
        assert up.proc.returncode == 0, up.output
        assert all(gone(p) for p in pids), [p for p in pids if not gone(p)]
        assert all(port_free(p) for p in up.ports())
        assert not (data / "up.json").exists()
        r = _node(data, "list")
        assert r.returncode == 5 and "no `txc up` is running" in r.stderr, r
    finally:
        up.kill()


def test_backoff_doubles_to_its_bound_and_resets_after_a_healthy_run() -> None:
    b = supervise.Backoff(first_s=0.5, max_s=4.0, healthy_after_s=60.0)
    b.started(0.0)
    delays = [b.exited(1.0 + i) for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.started(100.0)
    assert b.exited(161.0) == 0.5  # ran 61 s: a fresh start
    assert supervise.describe_exit(-9) == "signal 9 (SIGKILL)"
    assert supervise.describe_exit(3) == "code 3"
