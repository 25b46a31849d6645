"""Retention in a real 3-node group (real processes, real PostgreSQL, real HTTP participants):
the group forgets finished transactions under a stream of them; a follower that was down
while the log was compacted comes back by a snapshot taken after forgetting, and once it
leads it answers every forgotten transaction with the decided outcome."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from coordinator.bench.client import LeaderFollowingClient
from tests.conftest import PgServer
from tests.e2e.test_raft_failover import leader_of, run_transaction, wait_caught_up
from tests.helpers import ScriptedParticipant, serve
from tests.processes import Cluster, Proc, cluster_of

pytestmark = pytest.mark.e2e

ENV = {
    "TXC_RETENTION_S": "0.3",
    "TXC_TOMBSTONE_RETENTION_S": "300",
    "TXC_SNAPSHOT_ENTRIES": "100",  # small: the restarted follower needs a snapshot
    "TXC_CHECKPOINT_INTERVAL_S": "0.2",
}
BEFORE, WHILE_DOWN = 30, 60  # transactions before the follower is killed, and while it is down


async def retention_of(node: Proc) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=5) as h:
        r = await h.get(node.url + "/v1/cluster/retention")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


async def wait_forgotten(cluster: Cluster, n: int, within_s: float = 60.0) -> None:
    """Until every running node holds no record and `n` tombstones."""
    deadline = time.monotonic() + within_s
    while True:
        sizes = [await retention_of(node) for node in cluster.nodes if node.alive]
        if all(s["records"] == 0 and s["tombstones"] == n for s in sizes):
            return
        assert time.monotonic() < deadline, sizes
        await asyncio.sleep(0.2)


async def test_a_follower_restored_after_forgetting_answers_the_decisions(
    pg: PgServer, tmp_path: Path
) -> None:
    a, b = ScriptedParticipant(), ScriptedParticipant()
    with cluster_of(pg, tmp_path, 3, ENV) as cluster:
        async with serve(a.app()) as ua, serve(b.app()) as ub:
            client = LeaderFollowingClient(cluster.urls())
            try:
                outcomes: dict[str, int] = {}
                for i in range(BEFORE):
                    txid, status = await run_transaction(client, f"before-{i}", ua, ub)
                    outcomes[txid] = status
                leader = await leader_of(cluster)
                victim = next(n for n in cluster.nodes if n is not leader)
                await wait_caught_up(cluster, victim)
                killed_at = (await asyncio.to_thread(cluster.status, victim))["applied_index"]
                await asyncio.to_thread(victim.kill)
                for i in range(WHILE_DOWN):
                    txid, status = await run_transaction(client, f"down-{i}", ua, ub)
                    outcomes[txid] = status
                assert set(outcomes.values()) == {200}  # all committed
                await wait_forgotten(cluster, len(outcomes))
                leader = await leader_of(cluster)
                ls = await asyncio.to_thread(cluster.status, leader)
                assert ls["snapshot_index"] > killed_at, "the leader kept the log it missed"  # type: ignore[index, operator]

                await asyncio.to_thread(victim.start)
                st = await wait_caught_up(cluster, victim)
                assert st["snapshot_index"] > killed_at, "caught up without a snapshot"  # type: ignore[operator]
                await wait_forgotten(cluster, len(outcomes))

                # The restored follower leads, and answers from its own replicated state.
                async with httpx.AsyncClient(timeout=10) as h:
                    victim_id = st["id"]
                    r = await h.post(
                        leader.url + "/v1/cluster/transfer-leadership", json={"to": victim_id}
                    )
                    assert r.status_code == 200, r.text
                    deadline = time.monotonic() + 30
                    while (await leader_of(cluster)) is not victim:
                        assert time.monotonic() < deadline, "leadership did not move"
                        await asyncio.sleep(0.1)
                    for txid in outcomes:
                        r = await h.get(f"{victim.url}/v1/transactions/{txid}/outcome")
                        assert r.status_code == 200 and r.json()["outcome"] == "commit", r.text
                        doc = (await h.get(f"{victim.url}/v1/transactions/{txid}")).json()
                        assert doc["state"] == "committed" and doc["forgotten_at"], doc
                        assert doc["source"] in ("history", "tombstone"), doc
                    # A repeated commit and a reused idempotency key get the same answers.
                    txid = next(iter(outcomes))
                    r = await h.post(f"{victim.url}/v1/transactions/{txid}/commit")
                    assert r.status_code == 200 and r.json()["outcome"] == "commit", r.text
                    r = await h.post(
                        f"{victim.url}/v1/transactions", json={"idempotency_key": "before-0"}
                    )
                    assert r.status_code == 200 and r.json()["txid"] == txid, r.text
                    # The restored node's history holds what it forgot itself (before it was
                    # killed, and from the log after its snapshot), not what the snapshot
                    # skipped: those are answered from their tombstones.
                    sizes = await retention_of(victim)
                    assert 0 < sizes["history_rows"] <= len(outcomes), sizes  # type: ignore[operator]
                    # The stream goes on under the new leader, and is forgotten in its turn.
                    for i in range(10):
                        txid, status = await run_transaction(client, f"after-{i}", ua, ub)
                        assert status == 200
                    await wait_forgotten(cluster, len(outcomes) + 10)
            finally:
                await client.aclose()
