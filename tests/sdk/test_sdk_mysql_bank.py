"""The demo bank on MariaDB next to one on PostgreSQL, through the real coordinator: a
transfer between them commits or aborts atomically, lazily too, and money is conserved at
both; a MariaDB bank with a bad database URL fails to start with a clear message."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sdk_real import API_TOKEN, PARTICIPANT_TOKEN, eventually
from sdk_servers import ServerThread, free_port

from participant_sdk import TransactionAborted, TxcClient
from participant_sdk.mysql_engine import create_engine
from tests.sdk import mariadb_fixture as mdb
from tests.sdk.mariadb_fixture import branches
from txc_demo.bank import SEED_ACCOUNTS, create_app

mariadb = mdb.mariadb

REPO = Path(__file__).resolve().parents[2]
SEED_TOTAL = sum(SEED_ACCOUNTS.values())
START_FAILURE_TIMEOUT_S = 60.0


def balance(bank: str, account: str) -> int:
    return int(httpx.get(f"{bank}/accounts/{account}").json()["balance"])


def total(bank: str) -> int:
    return int(httpx.get(f"{bank}/accounts").json()["total"])


@pytest.fixture
def mixed_banks(pg, mariadb, coordinator_url: str) -> Iterator[tuple[str, str, str]]:
    """(PostgreSQL bank URL, MariaDB bank URL, the MariaDB bank's database URL)."""
    servers = []
    my_db = mariadb.new_database("bank")
    for name, db in (("bank-pg", pg.new_database("bank")), ("bank-my", my_db)):
        port = free_port()
        app = create_app(
            name,
            db,
            coordinator_url,
            f"http://127.0.0.1:{port}",
            token=API_TOKEN,
            participant_token=PARTICIPANT_TOKEN,
            recovery_interval_s=0.5,
        )
        servers.append(ServerThread(app, port).start())
    yield servers[0].url, servers[1].url, my_db
    for s in servers:
        s.stop()


def move(bank: str, op: str, account: str, amount: int, tx) -> httpx.Response:
    return httpx.post(
        f"{bank}/transfer/{op}", json={"account": account, "amount": amount}, headers=tx.headers
    )


def test_transfer_between_a_postgresql_and_a_mariadb_bank(
    coordinator_url: str, mixed_banks
) -> None:
    pgb, myb, my_db = mixed_banks
    with TxcClient(coordinator_url, token=API_TOKEN) as client:
        with client.transaction(timeout_s=20) as tx:  # PostgreSQL -> MariaDB, eager
            assert move(pgb, "debit", "alice", 30, tx).status_code == 200
            assert move(myb, "credit", "bob", 30, tx).status_code == 200
        with client.transaction(lazy=True, timeout_s=20) as lz:  # MariaDB -> PostgreSQL, lazy
            for bank, op, account in ((myb, "debit", "carol"), (pgb, "credit", "carol")):
                r = move(bank, op, account, 5, lz)
                assert r.status_code == 200, r.text
                lz.collect(r)
        # An abort: the MariaDB bank's debit is prepared, the credit fails (no such account).
        with pytest.raises(TransactionAborted), client.transaction(timeout_s=20) as ab:
            assert move(myb, "debit", "alice", 70, ab).status_code == 200
            r = move(pgb, "credit", "nobody", 70, ab)
            assert r.status_code == 404
            raise TransactionAborted("credit refused")
        # Insufficient funds on MariaDB is refused before anything is prepared there.
        with pytest.raises(TransactionAborted), client.transaction(timeout_s=20) as poor:
            r = move(myb, "debit", "alice", 10**6, poor)
            assert r.status_code == 409 and r.json()["error"]["code"] == "insufficient_funds"
            raise TransactionAborted("refused")
    eventually(lambda: balance(myb, "bob") == 1030 and balance(myb, "carol") == 995)
    eventually(lambda: balance(pgb, "alice") == 970 and balance(pgb, "carol") == 1005)
    assert balance(myb, "alice") == 1000
    assert total(pgb) + total(myb) == 2 * SEED_TOTAL
    engine = create_engine(my_db)
    try:
        eventually(lambda: branches(engine) == [])
    finally:
        engine.dispose()


def test_a_mariadb_bank_with_a_bad_database_url_says_so(mariadb) -> None:
    """An unknown database on a live server: the bank exits at start with the server's
    reason, not a stack trace."""
    bad = mariadb.url("no_such_bank_database")
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "txc_demo.bank",
            "--name",
            "bank-my",
            "--database-url",
            bad,
            "--coordinator-url",
            "http://127.0.0.1:9",
            "--port",
            str(port),
            "--development",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_FAILURE_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Unknown database 'no_such_bank_database'" in proc.stderr
    assert "Traceback" not in proc.stderr
