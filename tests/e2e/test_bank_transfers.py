"""End to end with real processes: a coordinator node and two demo banks (participant
services built with the SDK, each with its own PostgreSQL database), driven by the SDK's
async client. The banks enlist through a proxy the test controls, so a test can cut the
coordinator off from a bank at an exact moment.

After every scenario: money is neither created nor destroyed, no prepared transaction is
left behind, and every transaction has one outcome at every participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from coordinator import migrate
from coordinator.db import normalise_url
from coordinator.embedded_pg import free_port
from coordinator.procs import Proc, node_env
from participant_sdk import AsyncTxcClient, TransactionAborted
from tests.conftest import PgServer
from tests.helpers import ScriptedParticipant, serve
from tests.processes import TEST_NODE_ENV
from tests.proxy import Mode, Proxy

pytestmark = pytest.mark.e2e

SEED_TOTAL = 3000  # per bank: alice, bob and carol hold 1000 each
RECOVERY_INTERVAL_S = 0.3


def _dsn(url: str) -> str:
    return normalise_url(url).replace("postgresql+psycopg://", "postgresql://")


@dataclass
class Bank:
    name: str
    db: str
    proc: Proc
    proxy: Proxy

    @property
    def url(self) -> str:
        return self.proc.url

    def prepared(self) -> list[str]:
        with psycopg.connect(_dsn(self.db)) as c:
            return [
                r[0]
                for r in c.execute(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
                )
            ]

    def records(self) -> dict[str, str]:
        with psycopg.connect(_dsn(self.db)) as c:
            rows = c.execute("SELECT txid, state FROM txc_participant_record").fetchall()
            return {r[0]: r[1] for r in rows}


@dataclass
class World:
    coordinator: Proc
    banks: dict[str, Bank]
    client: AsyncTxcClient
    http: httpx.AsyncClient
    txids: list[str] = field(default_factory=list)

    async def total(self) -> int:
        total = 0
        for b in self.banks.values():
            r = await self.http.get(b.url + "/accounts")
            total += r.json()["total"]
        return total

    async def work(self, bank: str, op: str, account: str, amount: int, tx: Any) -> httpx.Response:
        return await self.http.post(
            self.banks[bank].url + f"/transfer/{op}",
            json={"account": account, "amount": amount},
            headers=tx.headers,
        )

    async def transfer(
        self, amount: int = 10, frm: str = "alice", to: str = "bob"
    ) -> tuple[str, str]:
        """Debit at bank-a, credit at bank-b, commit. Returns (txid, outcome)."""
        tx = await self.client.begin(timeout_s=20, labels={"kind": "transfer"})
        self.txids.append(tx.txid)
        debit = await self.work("bank-a", "debit", frm, amount, tx)
        if debit.status_code != 200:
            await tx.abort()
            return tx.txid, "abort"
        credit = await self.work("bank-b", "credit", to, amount, tx)
        if credit.status_code != 200:
            await tx.abort()
            return tx.txid, "abort"
        try:
            await tx.commit()
        except TransactionAborted:
            return tx.txid, "abort"
        return tx.txid, "commit"

    async def state(self, txid: str) -> dict[str, Any]:
        return await self.client.get(txid)

    async def wait_terminal(self, txid: str, within_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while True:
            t = await self.state(txid)
            if t["state"] in ("committed", "aborted") or time.monotonic() > deadline:
                return t
            await asyncio.sleep(0.05)

    async def check_atomic(self) -> None:
        """The invariants every scenario ends with."""
        assert await self.total() == SEED_TOTAL * len(self.banks), "money created or lost"
        for b in self.banks.values():
            assert b.prepared() == [], f"{b.name} holds prepared transactions"
        records = {name: b.records() for name, b in self.banks.items()}
        for txid in self.txids:
            t = await self.wait_terminal(txid)
            assert t["state"] in ("committed", "aborted"), t
            for name, rec in records.items():
                seen = rec.get(txid)
                if t["outcome"] == "commit":
                    assert seen == "committed", (name, txid, seen)
                else:
                    assert seen != "committed", (name, txid, seen)


def start_bank(
    name: str, db: str, coordinator_url: str, tmp: Path, port: int, public_url: str
) -> Proc:
    args = [
        "-m", "txc_demo.bank",
        "--name", name,
        "--database-url", db,
        "--coordinator-url", coordinator_url,
        "--port", str(port),
        "--public-url", public_url,
        "--recovery-interval", str(RECOVERY_INTERVAL_S),
        "--development",  # the node runs open (no tokens): unsigned, on loopback
    ]  # fmt: skip
    return Proc(name, args, {}, f"http://127.0.0.1:{port}", tmp / f"{name}.log").start()


@contextlib.asynccontextmanager
async def world(pg: PgServer, tmp: Path) -> AsyncIterator[World]:
    node_db = pg.new_database("coord")
    migrate.upgrade(node_db, "coordinator")
    port = free_port()
    coordinator = Proc(
        "node1",
        ["-m", "coordinator", "serve"],
        {**TEST_NODE_ENV, **node_env(1, port, node_db, "", "", 1)},
        f"http://127.0.0.1:{port}",
        tmp / "node1.log",
    ).start()
    banks: dict[str, Bank] = {}
    try:
        await asyncio.to_thread(coordinator.wait_ready)
        for name in ("bank-a", "bank-b"):
            db = pg.new_database(name.replace("-", "_"))
            migrate.upgrade(db, "participant")
            bank_port = free_port()
            proxy = await Proxy(bank_port).start()
            proc = start_bank(name, db, coordinator.url, tmp, bank_port, proxy.url)
            banks[name] = Bank(name, db, proc, proxy)
        for b in banks.values():
            await asyncio.to_thread(b.proc.wait_ready, "/healthz")
        async with AsyncTxcClient(coordinator.url) as client, httpx.AsyncClient(timeout=30) as http:
            yield World(coordinator, banks, client, http)
    finally:
        for b in banks.values():
            b.proc.stop()
            await b.proxy.close()
        coordinator.stop()


async def test_transfers_commit_and_money_is_conserved(pg: PgServer, tmp_path: Path) -> None:
    async with world(pg, tmp_path) as w:
        results = await asyncio.gather(*(w.transfer(amount=i + 1) for i in range(8)))
        assert [o for _, o in results] == ["commit"] * 8
        a = (await w.http.get(w.banks["bank-a"].url + "/accounts/alice")).json()["balance"]
        b = (await w.http.get(w.banks["bank-b"].url + "/accounts/bob")).json()["balance"]
        assert a == 1000 - sum(range(1, 9)) and b == 1000 + sum(range(1, 9))
        await w.check_atomic()


async def test_refused_work_and_a_no_vote_abort_everywhere(pg: PgServer, tmp_path: Path) -> None:
    async with world(pg, tmp_path) as w:
        # Business refusal: bank-a cannot pay; nothing is prepared, the client aborts.
        _txid, outcome = await w.transfer(amount=5000)
        assert outcome == "abort"
        # Both banks prepared, a third participant votes NO at prepare: everyone aborts.
        no = ScriptedParticipant(vote="no")
        async with serve(no.app()) as no_url:
            tx = await w.client.begin(timeout_s=20)
            w.txids.append(tx.txid)
            assert (await w.work("bank-a", "debit", "alice", 7, tx)).status_code == 200
            assert (await w.work("bank-b", "credit", "bob", 7, tx)).status_code == 200
            await w.client.enlist(tx.txid, "auditor", no_url)
            assert len(w.banks["bank-a"].prepared()) == 1
            with pytest.raises(TransactionAborted):
                await tx.commit()
            t = await w.wait_terminal(tx.txid)
            assert t["outcome"] == "abort" and "insufficient funds" in t["decision_reason"]
        await w.check_atomic()


async def test_participant_down_at_prepare_aborts(pg: PgServer, tmp_path: Path) -> None:
    async with world(pg, tmp_path) as w:
        tx = await w.client.begin(timeout_s=20)
        w.txids.append(tx.txid)
        assert (await w.work("bank-a", "debit", "alice", 3, tx)).status_code == 200
        assert (await w.work("bank-b", "credit", "bob", 3, tx)).status_code == 200
        dead = f"http://127.0.0.1:{free_port()}"
        await w.client.enlist(tx.txid, "dead-service", dead)
        with pytest.raises(TransactionAborted):
            await tx.commit()
        await w.check_atomic()


async def test_bank_down_in_phase2_completes_when_it_returns(pg: PgServer, tmp_path: Path) -> None:
    async with world(pg, tmp_path) as w:
        bank_b = w.banks["bank-b"]
        tx = await w.client.begin(timeout_s=20)
        w.txids.append(tx.txid)
        assert (await w.work("bank-a", "debit", "alice", 11, tx)).status_code == 200
        assert (await w.work("bank-b", "credit", "bob", 11, tx)).status_code == 200
        await asyncio.to_thread(bank_b.proc.kill)
        bank_b.proxy.set(Mode.REFUSE)
        result = await tx.commit()
        assert result["outcome"] == "commit" and result["state"] == "committing"
        t = await w.state(tx.txid)
        pb = next(p for p in t["participants"] if p["name"] == "bank-b")
        assert pb["phase2"] == "pending" and pb["attempts"] >= 1 and pb["last_error"]
        await asyncio.to_thread(bank_b.proc.start)
        await asyncio.to_thread(bank_b.proc.wait_ready, "/healthz")
        bank_b.proxy.set(Mode.FORWARD)
        assert (await w.wait_terminal(tx.txid))["state"] == "committed"
        await w.check_atomic()


async def test_duplicate_commit_and_duplicate_phase2_messages(pg: PgServer, tmp_path: Path) -> None:
    async with world(pg, tmp_path) as w:
        txid, outcome = await w.transfer(amount=13)
        assert outcome == "commit"
        again = await w.client.commit(txid)
        assert again["outcome"] == "commit"
        before = await w.total()
        t = await w.state(txid)
        for p in t["participants"]:
            # The protocol URL as enlisted, but straight to the bank, not through its proxy.
            bank = w.banks[p["name"]]
            url = p["url"].replace(bank.proxy.url, bank.url)
            for _ in range(2):
                r = await w.http.post(
                    url + "/commit", json={"txid": txid, "participant": p["name"]}
                )
                assert r.status_code == 200, r.text
        after_a = (await w.http.get(w.banks["bank-a"].url + "/accounts/alice")).json()["balance"]
        assert await w.total() == before and after_a == 1000 - 13
        await w.check_atomic()


async def test_bank_crashes_after_preparing_and_recovers_through_outcome(
    pg: PgServer, tmp_path: Path
) -> None:
    """bank-a crashes with prepared work; while the coordinator cannot reach it, it restarts,
    asks /outcome and commits by itself."""
    async with world(pg, tmp_path) as w:
        bank_a = w.banks["bank-a"]
        tx = await w.client.begin(timeout_s=20)
        w.txids.append(tx.txid)
        assert (await w.work("bank-a", "debit", "alice", 17, tx)).status_code == 200
        assert (await w.work("bank-b", "credit", "bob", 17, tx)).status_code == 200
        await asyncio.to_thread(bank_a.proc.kill)
        bank_a.proxy.set(Mode.REFUSE)  # the coordinator's phase 2 cannot reach bank-a
        assert (await tx.commit())["outcome"] == "commit"
        assert len(bank_a.prepared()) == 1
        await asyncio.to_thread(bank_a.proc.start)
        deadline = time.monotonic() + 20
        while bank_a.prepared() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert bank_a.prepared() == [] and bank_a.records()[tx.txid] == "committed"
        alice = (await w.http.get(bank_a.url + "/accounts/alice")).json()["balance"]
        assert alice == 1000 - 17
        # The coordinator still waits for bank-a's acknowledgement; it gets it once reachable.
        assert (await w.state(tx.txid))["state"] == "committing"
        bank_a.proxy.set(Mode.FORWARD)
        assert (await w.wait_terminal(tx.txid))["state"] == "committed"
        await w.check_atomic()


async def test_coordinator_sigkilled_between_decision_and_phase2(
    pg: PgServer, tmp_path: Path
) -> None:
    async with world(pg, tmp_path) as w:
        bank_b = w.banks["bank-b"]
        txids = []
        # Distinct accounts: a prepared transaction keeps its rows locked until phase 2.
        for i, account in enumerate(("alice", "bob", "carol")):
            tx = await w.client.begin(timeout_s=30)
            w.txids.append(tx.txid)
            txids.append(tx.txid)
            assert (await w.work("bank-a", "debit", account, 20 + i, tx)).status_code == 200
            assert (await w.work("bank-b", "credit", account, 20 + i, tx)).status_code == 200
        bank_b.proxy.set(Mode.HANG)  # phase 2 to bank-b will hang: decided, not finished
        results = await asyncio.gather(*(w.client.commit(t) for t in txids))
        assert {r["outcome"] for r in results} == {"commit"}
        assert {r["state"] for r in results} == {"committing"}
        await asyncio.to_thread(w.coordinator.kill)
        bank_b.proxy.set(Mode.FORWARD)
        await asyncio.to_thread(w.coordinator.start)
        await asyncio.to_thread(w.coordinator.wait_ready)
        for t in txids:
            assert (await w.wait_terminal(t))["state"] == "committed"
        carol = (await w.http.get(bank_b.url + "/accounts/carol")).json()["balance"]
        assert carol == 1000 + 22
        await w.check_atomic()
