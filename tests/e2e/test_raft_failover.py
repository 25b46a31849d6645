"""A 3-node coordinator group in real processes, real PostgreSQL, real HTTP participants:
SIGKILL the leader in the middle of a stream of transactions, then the new leader."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from coordinator.bench.client import LeaderFollowingClient
from coordinator.raft.transport import RAFT_PATH, post_headers
from tests.conftest import PgServer
from tests.helpers import ScriptedParticipant, serve
from tests.processes import Cluster, Proc, cluster_of

pytestmark = pytest.mark.e2e

SNAPSHOT_ENTRIES = 150  # small, so that a restarted node needs a snapshot to catch up


async def run_transaction(c: LeaderFollowingClient, key: str, ua: str, ub: str) -> tuple[str, int]:
    r = await c.request("POST", "/v1/transactions", {"idempotency_key": key, "timeout_s": 20})
    assert r.status_code in (200, 201), r.text
    txid = r.json()["txid"]
    for name, url, vote in (("a", ua, None), ("b", ub, "yes")):
        body = {"name": name, "url": url} | ({"vote": vote} if vote else {})
        e = await c.request("POST", f"/v1/transactions/{txid}/participants", body)
        if e.status_code == 409:  # expired or decided meanwhile: the commit below tells
            break
        assert e.status_code == 201, e.text
    r = await c.request("POST", f"/v1/transactions/{txid}/commit")
    assert r.status_code in (200, 409), r.text
    return txid, r.status_code


async def leader_of(cluster: Cluster) -> Proc:
    return await asyncio.to_thread(cluster.leader)


async def wait_caught_up(cluster: Cluster, node: Proc, within_s: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        leader = await leader_of(cluster)
        ls = await asyncio.to_thread(cluster.status, leader)
        ns = await asyncio.to_thread(cluster.status, node)
        if ls and ns and ns["applied_index"] >= ls["commit_index"]:  # type: ignore[operator]
            return ns
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node.name} did not catch up:\n{node.log_tail()}")


async def test_sigkill_leaders_during_a_stream_leaves_nothing_blocked(
    pg: PgServer, tmp_path: Path
) -> None:
    a, b = ScriptedParticipant(), ScriptedParticipant()
    env = {"TXC_SNAPSHOT_ENTRIES": str(SNAPSHOT_ENTRIES)}
    with cluster_of(pg, tmp_path, 3, env) as cluster:
        async with serve(a.app()) as ua, serve(b.app()) as ub:
            client = LeaderFollowingClient(cluster.urls())
            outcomes: dict[str, int] = {}
            commit_times: list[float] = []
            stop = asyncio.Event()

            async def stream(worker: int) -> None:
                i = 0
                while not stop.is_set():
                    txid, status = await run_transaction(client, f"w{worker}-{i}", ua, ub)
                    outcomes[txid] = status
                    if status == 200:
                        commit_times.append(time.monotonic())
                    i += 1

            workers = [asyncio.create_task(stream(w)) for w in range(4)]
            gaps = []
            for _round in range(2):
                await asyncio.sleep(1.5)
                victim = await leader_of(cluster)
                killed_at = time.monotonic()
                await asyncio.to_thread(victim.kill)
                while not any(t > killed_at for t in commit_times):
                    await asyncio.sleep(0.02)
                    assert time.monotonic() - killed_at < 30, "commits did not resume"
                gaps.append(min(t for t in commit_times if t > killed_at) - killed_at)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(victim.start)
                st = await wait_caught_up(cluster, victim)
                assert st["role"] in ("follower", "leader")
            # A node that missed more than a snapshot's worth of log catches up too.
            current = await leader_of(cluster)
            follower = next(n for n in cluster.nodes if n is not current)
            await asyncio.to_thread(follower.kill)
            before = len(outcomes)
            # More entries than a snapshot interval: at least SNAPSHOT_ENTRIES, and at least
            # as many as the last snapshot's records (a few hundred transactions by now).
            while len(outcomes) < before + 100:
                await asyncio.sleep(0.1)
            await asyncio.to_thread(follower.start)
            st = await wait_caught_up(cluster, follower)
            assert st["snapshot_index"] > 0  # type: ignore[operator]
            stop.set()
            await asyncio.gather(*workers)

            # Every transaction ends with one outcome, at the coordinator and everywhere.
            for txid in outcomes:
                deadline = time.monotonic() + 30
                while True:
                    t = (await client.request("GET", f"/v1/transactions/{txid}")).json()
                    if t["state"] in ("committed", "aborted") or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                assert t["state"] in ("committed", "aborted"), t
                if t["state"] == "committed":
                    assert txid in a.committed and txid in b.committed
                    assert txid not in a.aborted and txid not in b.aborted
                else:
                    assert txid not in a.committed and txid not in b.committed
            assert not (a.committed & a.aborted) and not (b.committed & b.aborted)
            committed = sum(1 for s in outcomes.values() if s == 200)
            assert committed > len(outcomes) // 2, (committed, len(outcomes))
            gap_s = [round(g, 2) for g in gaps]
            print(f"\ntransactions: {len(outcomes)}, committed: {committed}, gaps: {gap_s}")
            for node in cluster.nodes:
                await wait_caught_up(cluster, node)
            await client.aclose()
        databases = [n.env["TXC_DATABASE_URL"] for n in cluster.nodes]
    # Stopped (each node's last checkpoint written). Every node's database holds the same
    # records, including the nodes that were killed before a checkpoint and re-applied their
    # log (or took a snapshot) after the restart (coordinator/checkpoint.py).
    records = [await asyncio.to_thread(_records, url, sorted(outcomes)) for url in databases]
    assert len(records[0]) == len(outcomes)
    for other in records[1:]:
        assert other == records[0]


def _records(url: str, txids: list[str]) -> dict[str, object]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as c:
        rows = c.execute(
            "SELECT txid, doc FROM txc_transactions WHERE txid = ANY(%s)", (txids,)
        ).fetchall()
    return {txid: doc for txid, doc in rows}


async def test_a_peer_with_a_wrong_secret_is_refused(pg: PgServer, tmp_path: Path) -> None:
    with cluster_of(pg, tmp_path, 3) as cluster:
        leader = await leader_of(cluster)
        # A member that is not the leader (a node never takes its own id from the wire).
        peer = next(i + 1 for i, n in enumerate(cluster.nodes) if n is not leader)
        body = b"[]"
        async with httpx.AsyncClient() as h:
            for sender, secret, expect in (
                (peer, "wrong-secret", 401),
                (9, "test-secret", 401),
                (peer, "test-secret", 204),
            ):
                headers = post_headers(secret, sender, body)
                r = await h.post(leader.url + RAFT_PATH, content=body, headers=headers)
                assert r.status_code == expect, (sender, secret, r.text)
            # The same request again (captured on the wire): refused, nonce already used.
            r = await h.post(leader.url + RAFT_PATH, content=body, headers=headers)
            assert r.status_code == 401
            r = await h.post(leader.url + RAFT_PATH, content=body)
            assert r.status_code == 401
        assert "refused raft messages" in leader.log_tail(20000)


async def test_a_node_killed_before_its_checkpoint_applies_its_log_again(
    pg: PgServer, tmp_path: Path
) -> None:
    """Checkpoints far apart: a follower has applied a batch of transactions in memory only.
    SIGKILL it, restart it: it re-applies its log after its database's `last_applied`, and
    ends with the same records as the others (coordinator/checkpoint.py)."""
    a, b = ScriptedParticipant(), ScriptedParticipant()
    env = {"TXC_CHECKPOINT_INTERVAL_S": "600"}
    with cluster_of(pg, tmp_path, 3, env) as cluster:
        async with serve(a.app()) as ua, serve(b.app()) as ub:
            client = LeaderFollowingClient(cluster.urls())
            txids = [(await run_transaction(client, f"k{i}", ua, ub))[0] for i in range(20)]
            leader = await leader_of(cluster)
            victim = next(n for n in cluster.nodes if n is not leader)
            await wait_caught_up(cluster, victim)
            db = victim.env["TXC_DATABASE_URL"]
            assert await asyncio.to_thread(_records, db, txids) == {}, "checkpointed already"
            await asyncio.to_thread(victim.kill)
            await asyncio.to_thread(victim.start)
            await wait_caught_up(cluster, victim)
            await client.aclose()
        databases = [n.env["TXC_DATABASE_URL"] for n in cluster.nodes]
    records = [await asyncio.to_thread(_records, url, txids) for url in databases]
    assert len(records[0]) == len(txids)
    assert all(doc["state"] == "committed" for doc in records[0].values())  # type: ignore[index]
    for other in records[1:]:
        assert other == records[0]
