"""`txc up` as a new user runs it (real processes, real PostgreSQL): one command brings up a
3-node group and the demo banks, every identity generated; a transfer commits; one bank's
secret cannot act for the other; Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import stat
import time
from pathlib import Path

import httpx

from participant_sdk import TxcClient
from participant_sdk.signing import participant_headers
from tests.conftest import PgServer
from tests.e2e.up_process import UpProcess, base_port, port_free
from txc_demo.transfer import transfer

STOP_TIMEOUT_S = 30.0


def test_txc_up_runs_everything_authenticated_and_stops_on_ctrl_c(
    pg: PgServer, tmp_path: Path
) -> None:
    port = base_port()
    data = tmp_path / "txc"
    up = UpProcess(data, port, ["--database-url", pg.server_url])
    try:
        up.wait_up()
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
        if up.proc.poll() is None:
            up.stop(signal.SIGINT, STOP_TIMEOUT_S)  # Ctrl-C
    deadline = time.monotonic() + 10
    while not all(port_free(p) for p in up.ports()):
        assert time.monotonic() < deadline, "a process of txc up still listens after it stopped"
        time.sleep(0.2)
    assert up.proc.returncode == 0, up.output
