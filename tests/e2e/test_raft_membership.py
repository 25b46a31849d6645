"""Operating the group with the CLI, on real processes: add a node (learner, then voter once
caught up), transfer leadership to it, remove a founding node; commits carry on throughout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator import migrate
from coordinator.bench.client import LeaderFollowingClient
from coordinator.embedded_pg import free_port
from coordinator.procs import Proc, node_env
from tests.conftest import PgServer
from tests.processes import TEST_NODE_ENV, TEST_SECRET, cluster_of

pytestmark = pytest.mark.e2e


def txc(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def commit_one(client: LeaderFollowingClient) -> str:
    r = await client.request("POST", "/v1/transactions", {"timeout_s": 20})
    txid = r.json()["txid"]
    r = await client.request("POST", f"/v1/transactions/{txid}/commit")
    assert r.status_code == 200, r.text
    return str(r.json()["state"])


async def wait_until(check: Any, what: str, within_s: float = 30.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_add_transfer_remove_with_the_cli(pg: PgServer, tmp_path: Path) -> None:
    with cluster_of(pg, tmp_path, 3) as cluster:
        urls = cluster.urls()
        client = LeaderFollowingClient(urls)
        assert await commit_one(client) == "committed"
        # A fourth node, started empty in join mode.
        port = free_port()
        db = pg.new_database("node4")
        migrate.upgrade(db, "coordinator")
        peers = ",".join(
            [*(f"{i + 1}={u}" for i, u in enumerate(urls)), f"4=http://127.0.0.1:{port}"]
        )
        env = {**TEST_NODE_ENV, **node_env(4, port, db, peers, TEST_SECRET, 4), "TXC_JOIN": "true"}
        new = Proc(
            "node4",
            ["-m", "coordinator", "serve"],
            env,
            f"http://127.0.0.1:{port}",
            tmp_path / "node4.log",
        )
        cluster.nodes.append(new.start())
        await asyncio.to_thread(new.wait_ready, "/healthz")

        leader = await asyncio.to_thread(cluster.leader)
        follower = next(n for n in cluster.nodes[:3] if n is not leader)
        added = await asyncio.to_thread(txc, follower.url, "cluster", "add-node", "4", new.url)
        assert added.returncode == 0, added.stderr
        assert "learner" in added.stdout

        async def node4_votes() -> bool:
            st = (
                await client.http.get((await asyncio.to_thread(cluster.leader)).url + "/v1/cluster")
            ).json()
            m = next((m for m in st["members"] if m["id"] == 4), None)
            return bool(m and m["voter"])

        await wait_until(node4_votes, "node 4 promoted to voter")
        for _ in range(5):
            assert await commit_one(client) == "committed"

        async def node4_caught_up() -> bool:
            st = (await client.http.get(new.url + "/v1/cluster")).json()
            return bool(st["applied_index"] >= 1 and st["leader_id"] in (1, 2, 3, 4))

        await wait_until(node4_caught_up, "node 4 applying the log")
        moved = await asyncio.to_thread(txc, urls[0], "cluster", "transfer-leadership", "4")
        assert moved.returncode == 0, moved.stderr

        async def node4_leads() -> bool:
            st = (await client.http.get(new.url + "/v1/cluster")).json()
            return bool(st["role"] == "leader" and st["leader_id"] == 4)

        await wait_until(node4_leads, "node 4 leading")
        # Transactions begun on the old leader's URL are forwarded to the new one.
        assert await commit_one(client) == "committed"

        removed = await asyncio.to_thread(txc, urls[1], "cluster", "remove-node", "2")
        assert removed.returncode == 0, removed.stderr

        async def node2_gone() -> bool:
            st = (await client.http.get(new.url + "/v1/cluster")).json()
            return all(m["id"] != 2 for m in st["members"])

        await wait_until(node2_gone, "node 2 removed")
        # Refusals are clear, with exit codes a script can use.
        again = await asyncio.to_thread(
            txc, new.url, "cluster", "add-node", "3", "http://127.0.0.1:1"
        )
        assert again.returncode == 4 and "already a member" in again.stderr
        bad = await asyncio.to_thread(txc, new.url, "cluster", "add-node", "9", "ftp://x")
        assert bad.returncode == 2
        cluster.nodes[1].stop()
        for _ in range(3):
            assert await commit_one(client) == "committed"
        status = await asyncio.to_thread(txc, new.url, "cluster")
        assert status.returncode == 0 and "node4" in status.stdout
        await client.aclose()


async def test_membership_calls_on_a_standalone_node_are_refused(
    pg: PgServer, tmp_path: Path
) -> None:
    with cluster_of(pg, tmp_path, 1) as cluster:
        async with httpx.AsyncClient(base_url=cluster.nodes[0].url) as h:
            r = await h.post("/v1/cluster/members", json={"id": 2, "url": "http://127.0.0.1:1"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "not_a_group"
