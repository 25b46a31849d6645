"""Issue 3's process test with real money: a 3-node group, the two demo banks (participant
services with their own PostgreSQL databases), a stream of transfers through the SDK, and
SIGKILL of the leader, then of the new leader after the first is back. After each: commits
resume; at the end every transaction has one outcome at every bank, the total balance is
unchanged and nothing stays in doubt."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from coordinator import migrate
from coordinator.embedded_pg import free_port
from participant_sdk import AsyncTxcClient, TransactionAborted, TransactionNotFound, TxcError
from tests.conftest import PgServer
from tests.e2e.test_bank_transfers import SEED_TOTAL, Bank, start_bank
from tests.processes import cluster_of
from tests.proxy import Proxy

pytestmark = pytest.mark.e2e

WORKERS = 4
ROUNDS = 2  # leader kills
STREAM_BEFORE_KILL_S = 1.5


async def test_transfers_survive_leader_kills(pg: PgServer, tmp_path: Path) -> None:
    with cluster_of(pg, tmp_path, 3) as cluster:
        urls = cluster.urls()
        banks: dict[str, Bank] = {}
        try:
            for name in ("bank-a", "bank-b"):
                db = pg.new_database(name.replace("-", "_"))
                migrate.upgrade(db, "participant")
                port = free_port()
                proxy = await Proxy(port).start()  # unused here, but Bank carries one
                proc = start_bank(
                    name, db, ",".join(urls), tmp_path, port, f"http://127.0.0.1:{port}"
                )
                banks[name] = Bank(name, db, proc, proxy)
            for b in banks.values():
                await asyncio.to_thread(b.proc.wait_ready, "/healthz")
            outcomes: dict[str, str] = {}
            lazy_txids: set[str] = set()
            committed_at: list[float] = []
            stop = asyncio.Event()
            accounts = ["alice", "bob", "carol"]

            async with (
                AsyncTxcClient(urls, timeout=10) as client,
                httpx.AsyncClient(timeout=30) as http,
            ):

                async def worker(w: int) -> None:
                    # Odd workers run lazy transactions: begun by their commit, which brings
                    # the banks' deferred enlistments (one log round before phase 2).
                    lazy = w % 2 == 1
                    i = 0
                    while not stop.is_set():
                        i += 1
                        frm, to = accounts[w % 3], accounts[(w + 1) % 3]
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
                        if lazy:
                            lazy_txids.add(tx.txid)
                        try:
                            for bank, op, account in (
                                ("bank-a", "debit", frm),
                                ("bank-b", "credit", to),
                            ):
                                r = await http.post(
                                    banks[bank].url + f"/transfer/{op}",
                                    json={"account": account, "amount": 1},
                                    headers=tx.headers,
                                )
                                if r.status_code != 200:
                                    raise TransactionAborted(f"{bank}: {r.status_code}")
                                tx.collect(r)
                            await tx.commit()
                            outcomes[tx.txid] = "commit"
                            committed_at.append(time.monotonic())
                        except TxcError:
                            try:
                                await tx.abort()
                            except TxcError:
                                pass  # the outcome is read from the coordinator below

                tasks = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
                for _ in range(ROUNDS):
                    await asyncio.sleep(STREAM_BEFORE_KILL_S)
                    victim = await asyncio.to_thread(cluster.leader)
                    killed = time.monotonic()
                    await asyncio.to_thread(victim.kill)
                    deadline = killed + 30
                    while not any(t > killed for t in committed_at):
                        assert time.monotonic() < deadline, "commits did not resume"
                        await asyncio.sleep(0.05)
                    await asyncio.to_thread(victim.start)
                    await asyncio.to_thread(victim.wait_ready, "/healthz")
                await asyncio.sleep(STREAM_BEFORE_KILL_S)
                stop.set()
                await asyncio.gather(*tasks)

                # Every transaction ends with one outcome, at the coordinator and at both banks.
                deadline = time.monotonic() + 60
                for txid in outcomes:
                    while True:
                        try:
                            t = await client.get(txid)
                        except TransactionNotFound:
                            # A lazy transaction whose commit and abort never got through:
                            # asking for its outcome makes the presumed abort durable.
                            assert await client.outcome(txid) == "abort"
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
                # Banks apply phase 2 (or recover through /outcome) shortly after.
                while any(b.prepared() for b in banks.values()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                for b in banks.values():
                    assert b.prepared() == [], f"{b.name} still holds prepared transactions"
                    records = b.records()
                    for txid, outcome in outcomes.items():
                        if outcome == "commit":
                            assert records.get(txid) == "committed", (
                                b.name,
                                txid,
                                records.get(txid),
                            )
                        else:
                            assert records.get(txid) != "committed", (b.name, txid)
                total = 0
                for b in banks.values():
                    total += (await http.get(b.url + "/accounts")).json()["total"]
                assert total == SEED_TOTAL * 2
                n_commit = sum(1 for o in outcomes.values() if o == "commit")
                assert n_commit > 0
                lazy_committed = [
                    txid for txid, o in outcomes.items() if o == "commit" and txid in lazy_txids
                ]
                assert lazy_committed, "no lazy transaction committed"
                print(f"\ntransfers: {len(outcomes)}, committed: {n_commit}")
        finally:
            for b in banks.values():
                b.proc.stop()
                await b.proxy.close()
