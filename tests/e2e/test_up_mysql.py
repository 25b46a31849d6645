"""`txc up --demo-mysql` (real processes, embedded PostgreSQL and Debian's MariaDB): a third
demo bank on MariaDB joins the group; one transfer moves money from a PostgreSQL bank to
the MariaDB bank atomically, commit and abort; the MariaDB bank killed comes back; Ctrl-C
stops everything, the MariaDB server included."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from coordinator import embedded_mariadb
from participant_sdk import TxcClient
from tests.e2e.up_process import MARIADB_BANK_OFFSET, UpProcess, base_port, port_free
from txc_demo.transfer import TransferFailed, transfer

pytestmark = pytest.mark.skipif(
    not embedded_mariadb.available(),
    reason=f"MariaDB is not installed: {embedded_mariadb.INSTALL_HINT}",
)

STOP_TIMEOUT_S = 60.0
BACK_TIMEOUT_S = 60.0


def _balance(bank: str, account: str) -> int:
    r = httpx.get(f"{bank}/accounts/{account}", timeout=5)
    assert r.status_code == 200, r.text
    balance: int = r.json()["balance"]
    return balance


def _mariadb_pids(data: Path) -> list[int]:
    """mariadbd processes whose command line names this data directory."""
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{e}/cmdline").read_bytes()
        except OSError:
            continue
        if b"mariadbd" in cmd or b"mysqld" in cmd:
            if str(data / "mariadb").encode() in cmd:
                out.append(int(e))
    return out


def test_txc_up_demo_mysql_moves_money_between_postgresql_and_mariadb(tmp_path: Path) -> None:
    port = base_port()
    data = tmp_path / "txc"
    up = UpProcess(data, port, ["--demo-mysql"])
    nodes = [f"http://127.0.0.1:{port + i}" for i in range(3)]
    bank_a = f"http://127.0.0.1:{port + 101}"
    bank_c = f"http://127.0.0.1:{port + MARIADB_BANK_OFFSET}"
    try:
        up.wait_up()
        assert f"demo bank-c    {bank_c}/accounts (MariaDB)" in up.output, up.output
        assert _mariadb_pids(data), "no MariaDB server for bank-c"
        creds = json.loads((data / "credentials.json").read_text())
        a0, c0 = _balance(bank_a, "alice"), _balance(bank_c, "bob")
        with TxcClient(nodes, token=creds["client"]) as client:
            out = transfer(nodes[0], bank_a, "alice", bank_c, "bob", 7, client=client)
            assert out["outcome"] == "commit", out
            assert (_balance(bank_a, "alice"), _balance(bank_c, "bob")) == (a0 - 7, c0 + 7)
            # More than bob has at bank-c: that bank refuses its debit, both sides abort.
            with pytest.raises(TransferFailed):
                transfer(nodes[0], bank_c, "bob", bank_a, "alice", 10**6, client=client)
            assert (_balance(bank_a, "alice"), _balance(bank_c, "bob")) == (a0 - 7, c0 + 7)

        # The MariaDB bank, killed, comes back by itself.
        status = json.loads((data / "up.json").read_text())["children"]
        os.kill(status["bank-c"]["pid"], signal.SIGKILL)
        up.wait_for("bank-c restarted (pid", 15)
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{bank_c}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "bank-c did not come back"
            time.sleep(0.2)
        assert _balance(bank_c, "bob") == c0 + 7
    finally:
        if up.proc.poll() is None:
            up.stop(signal.SIGINT, STOP_TIMEOUT_S)  # Ctrl-C
        up.kill()
    assert up.proc.returncode == 0, up.output
    deadline = time.monotonic() + 10
    while _mariadb_pids(data) or not all(port_free(p) for p in up.ports()):
        assert time.monotonic() < deadline, "a process of txc up is still running"
        time.sleep(0.2)
    assert port_free(port + MARIADB_BANK_OFFSET)
