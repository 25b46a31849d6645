"""One transfer between a PostgreSQL bank and a MariaDB bank, with real processes: embedded
PostgreSQL and embedded MariaDB, a 3-node coordinator group, and the demo bank twice
(`python -m txc_demo.bank`, once on each database). A commit and an abort are atomic at both
banks; then a stream of transfers survives a SIGKILL of the leader mid-commit: every
transaction ends with one outcome at both banks, nothing stays prepared, and the total
balance is unchanged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from coordinator import migrate
from coordinator.embedded_pg import free_port
from coordinator.procs import Proc
from participant_sdk import AsyncTxcClient, TransactionAborted, TransactionNotFound, TxcError
from participant_sdk.mysql_engine import create_engine as mysql_engine
from tests.conftest import PgServer
from tests.e2e.test_bank_transfers import SEED_TOTAL, Bank, start_bank
from tests.processes import Cluster, cluster_of
from tests.sdk import mariadb_fixture as mdb

pytestmark = pytest.mark.e2e

mariadb = mdb.mariadb

WORKERS = 3
STREAM_BEFORE_KILL_S = 1.0
RESUME_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0


@dataclass
class MyBank:
    """The MariaDB bank: its process and a way to look into its database."""

    proc: Proc
    engine: Engine

    @property
    def url(self) -> str:
        return self.proc.url

    def prepared(self) -> list[str]:
        return mdb.branches(self.engine)

    def records(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT txid, state FROM txc_participant_record"))
            return {r[0]: r[1] for r in rows}


@dataclass
class World:
    cluster: Cluster
    pg_bank: Bank
    my_bank: MyBank


@pytest.fixture(scope="module")
def world(
    pg: PgServer, mariadb: mdb.MariaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("mysql-bank")
    with cluster_of(pg, tmp, 3) as cluster:
        seeds = ",".join(cluster.urls())
        pg_db = pg.new_database("bank_pg")
        migrate.upgrade(pg_db, "participant")
        my_db = mariadb.new_database("bank_my")
        procs: list[Proc] = []
        engine = mysql_engine(my_db)
        try:
            for name, db in (("bank-pg", pg_db), ("bank-my", my_db)):
                port = free_port()
                procs.append(start_bank(name, db, seeds, tmp, port, f"http://127.0.0.1:{port}"))
            for p in procs:
                p.wait_ready("/healthz")
            # No proxy in front of the banks here (Bank carries one for other tests).
            pg_bank = Bank("bank-pg", pg_db, procs[0], None)  # type: ignore[arg-type]
            yield World(cluster, pg_bank, MyBank(procs[1], engine))
        finally:
            for p in procs:
                p.stop()
            engine.dispose()


async def total(http: httpx.AsyncClient, w: World) -> int:
    out = 0
    for url in (w.pg_bank.url, w.my_bank.url):
        out += (await http.get(url + "/accounts")).json()["total"]
    return out


async def balance(http: httpx.AsyncClient, bank: str, account: str) -> int:
    return int((await http.get(f"{bank}/accounts/{account}")).json()["balance"])


async def move(http: httpx.AsyncClient, bank: str, op: str, account: str, amount: int, tx):
    return await http.post(
        f"{bank}/transfer/{op}", json={"account": account, "amount": amount}, headers=tx.headers
    )


async def settled(w: World, client: AsyncTxcClient, outcomes: dict[str, str]) -> None:
    """Wait for every transaction's outcome, then check both banks follow it."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for txid in outcomes:
        while True:
            try:
                t = await client.get(txid)
            except TransactionNotFound:
                assert await client.outcome(txid) == "abort"  # makes a presumed abort durable
                continue
            if t["state"] in ("committed", "aborted") or time.monotonic() > deadline:
                break
            if t["state"] == "active":
                try:
                    await client.abort(txid)  # a client that died mid-way
                except TxcError:
                    pass
            await asyncio.sleep(0.1)
        assert t["state"] in ("committed", "aborted"), t
        outcomes[txid] = t["outcome"]
    while (w.pg_bank.prepared() or w.my_bank.prepared()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert w.pg_bank.prepared() == [] and w.my_bank.prepared() == []
    for records in (w.pg_bank.records(), w.my_bank.records()):
        for txid, outcome in outcomes.items():
            if outcome == "commit":
                assert records.get(txid) == "committed", (txid, records.get(txid))
            else:
                assert records.get(txid) != "committed", txid


async def test_a_transfer_commits_and_aborts_across_postgresql_and_mariadb(world: World) -> None:
    w = world
    pgb, myb = w.pg_bank.url, w.my_bank.url
    async with (
        AsyncTxcClient(w.cluster.urls(), timeout=10) as client,
        httpx.AsyncClient(timeout=30) as http,
    ):
        before = {
            "pg": await balance(http, pgb, "alice"),
            "my": await balance(http, myb, "bob"),
        }
        # Commit: 40 from alice at the PostgreSQL bank to bob at the MariaDB bank.
        tx = await client.begin(timeout_s=20)
        assert (await move(http, pgb, "debit", "alice", 40, tx)).status_code == 200
        assert (await move(http, myb, "credit", "bob", 40, tx)).status_code == 200
        await tx.commit()
        # Abort: the MariaDB bank's debit is prepared, then the PostgreSQL credit is refused.
        ab = await client.begin(timeout_s=20)
        assert (await move(http, myb, "debit", "bob", 15, ab)).status_code == 200
        assert (await move(http, pgb, "credit", "nobody", 15, ab)).status_code == 404
        await ab.abort()
        await settled(w, client, {tx.txid: "commit", ab.txid: "abort"})
        assert await balance(http, pgb, "alice") == before["pg"] - 40
        assert await balance(http, myb, "bob") == before["my"] + 40
        assert await total(http, w) == 2 * SEED_TOTAL


async def test_transfers_survive_a_leader_kill_mid_commit(world: World) -> None:
    w = world
    accounts = ["alice", "bob", "carol"]
    outcomes: dict[str, str] = {}
    committed_at: list[float] = []
    stop = asyncio.Event()
    async with (
        AsyncTxcClient(w.cluster.urls(), timeout=10) as client,
        httpx.AsyncClient(timeout=30) as http,
    ):

        async def worker(n: int) -> None:
            lazy = n % 2 == 1  # lazy ones: the commit brings both banks' enlistments
            # Alternate directions: PostgreSQL -> MariaDB and MariaDB -> PostgreSQL.
            legs = [(w.pg_bank.url, "debit"), (w.my_bank.url, "credit")]
            if n % 3 == 2:
                legs = [(w.my_bank.url, "debit"), (w.pg_bank.url, "credit")]
            while not stop.is_set():
                try:
                    tx = (
                        client.begin_lazy(timeout_s=20)
                        if lazy
                        else await client.begin(timeout_s=20)
                    )
                except TxcError:
                    await asyncio.sleep(0.05)
                    continue
                outcomes[tx.txid] = "unknown"
                try:
                    pair = (accounts[n], accounts[(n + 1) % 3])
                    for (bank, op), account in zip(legs, pair, strict=True):
                        r = await move(http, bank, op, account, 1, tx)
                        if r.status_code != 200:
                            raise TransactionAborted(f"{bank}: {r.status_code}")
                        tx.collect(r)
                    await tx.commit()
                    committed_at.append(time.monotonic())
                except TxcError:
                    try:
                        await tx.abort()
                    except TxcError:
                        pass  # the outcome is read from the coordinator below

        tasks = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
        await asyncio.sleep(STREAM_BEFORE_KILL_S)
        victim = await asyncio.to_thread(w.cluster.leader)
        killed = time.monotonic()
        await asyncio.to_thread(victim.kill)
        deadline = killed + RESUME_TIMEOUT_S
        while not any(t > killed for t in committed_at):
            assert time.monotonic() < deadline, "commits did not resume after the leader kill"
            await asyncio.sleep(0.05)
        await asyncio.sleep(STREAM_BEFORE_KILL_S)
        stop.set()
        await asyncio.gather(*tasks)
        await settled(w, client, outcomes)
        assert await total(http, w) == 2 * SEED_TOTAL
        assert sum(1 for o in outcomes.values() if o == "commit") > 0
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(victim.wait_ready, "/healthz")
