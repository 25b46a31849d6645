"""`txc up` as a new user runs it (real processes, real PostgreSQL): one command brings up a
3-node group and the demo banks, every identity generated; a transfer commits; one bank's
secret cannot act for the other; Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from participant_sdk import TxcClient
from participant_sdk.signing import participant_headers
from tests.conftest import PgServer
from tests.helpers import free_port
from txc_demo.transfer import transfer

UP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def _free(port: int) -> bool:
    """Nothing listens on `port` (connections of a closed listener in TIME_WAIT do not
    count: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _base_port() -> int:
    """A port P with P..P+2 and P+101, P+102 free (`txc up`'s layout)."""
    for _ in range(50):
        p = free_port()
        if p + 102 < 65535 and all(_free(p + d) for d in (0, 1, 2, 101, 102)):
            return p
    raise AssertionError("no free port range")


def test_txc_up_runs_everything_authenticated_and_stops_on_ctrl_c(
    pg: PgServer, tmp_path: Path
) -> None:
    port = _base_port()
    data = tmp_path / "txc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXC_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "up",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--database-url",
            pg.server_url,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("txc is up."):
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(UP_TIMEOUT_S), "".join(lines)
        creds = json.loads((data / "credentials.json").read_text())
        registry = data / "participants.toml"
        assert stat.S_IMODE(registry.stat().st_mode) == 0o600
        assert creds["secret:bank-a"] != creds["secret:bank-b"]
        assert creds["secret:bank-a"] in registry.read_text()
        coordinator = f"http://127.0.0.1:{port}"
        bank_a, bank_b = f"http://127.0.0.1:{port + 101}", f"http://127.0.0.1:{port + 102}"
        nodes = [f"http://127.0.0.1:{port + i}" for i in range(3)]
        with TxcClient(nodes, token=creds["client"]) as client:
            out = transfer(coordinator, bank_a, "alice", bank_b, "bob", 3, client=client)
            assert out["outcome"] == "commit"
            # Unauthenticated callers get nothing, and bank-a cannot enlist bank-b.
            assert httpx.post(f"{coordinator}/v1/transactions", json={}).status_code == 401
            tx = client.begin()
            leader = client.base_url
            target = f"{leader}/v1/transactions/{tx.txid}/participants"
            body = json.dumps({"name": "bank-b", "url": bank_b + "/txc"}).encode()
            headers = participant_headers("bank-a", creds["secret:bank-a"], "POST", target, body)
            r = httpx.post(
                target, content=body, headers=headers | {"Content-Type": "application/json"}
            )
            assert (r.status_code, r.json()["error"]["code"]) == (403, "wrong_participant")
            client.abort(tx.txid)
        r = httpx.post(f"{bank_a}/txc/commit", json={"txid": "x", "participant": "bank-a"})
        assert r.status_code == 401  # a bank's protocol endpoints take only signed requests
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("txc up did not stop on Ctrl-C:\n" + "".join(lines)) from None
    deadline = time.monotonic() + 10
    while not all(_free(port + d) for d in (0, 1, 2, 101, 102)):
        assert time.monotonic() < deadline, "a process of txc up still listens after it stopped"
        time.sleep(0.2)
    assert proc.returncode == 0, "".join(lines)
