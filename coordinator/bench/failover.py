"""The failover gap: SIGKILL the leader of a 3-node group under load, and time how long it
takes until the new leader decides a commit.

    txc bench failover --kills 10                      # default timeouts
    txc bench failover --kills 10 --raft-tick-s 0.02   # the fast setting (LAN)

Everything runs on this machine: an embedded PostgreSQL (one database per node), three
`txc serve` processes, two participants served in this process, and a closed loop of
clients. A report, never a test: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from coordinator import migrate
from coordinator.bench.client import LeaderFollowingClient
from coordinator.bench.loadgen import run_bench
from coordinator.bench.serving import null_participant_app, serve
from coordinator.embedded_pg import EmbeddedPostgres, create_database, free_port
from coordinator.procs import Proc, node_env, peers_for, stop_all

WORKERS = 4
SETTLE_S = 1.0  # load before each kill, so that the kill lands mid-stream
CATCH_UP_TIMEOUT_S = 60.0
GAP_TIMEOUT_S = 30.0


async def _leader(nodes: list[Proc], client: LeaderFollowingClient) -> Proc:
    deadline = time.monotonic() + GAP_TIMEOUT_S
    while time.monotonic() < deadline:
        for n in nodes:
            if not n.alive:
                continue
            try:
                st = (await client.http.get(n.url + "/v1/cluster", timeout=1)).json()
            except Exception:
                continue
            if st.get("leader_id") == st.get("id") and st.get("role") == "leader":
                ready = await client.http.get(n.url + "/readyz", timeout=1)
                if ready.status_code == 200:
                    return n
        await asyncio.sleep(0.02)
    raise RuntimeError("no leader")


async def _caught_up(node: Proc, leader: Proc, client: LeaderFollowingClient) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            ns = (await client.http.get(node.url + "/v1/cluster", timeout=1)).json()
            ls = (await client.http.get(leader.url + "/v1/cluster", timeout=1)).json()
            if ns["applied_index"] >= ls["commit_index"] - 5:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{node.name} did not catch up")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="txc-bench-failover-"))
    pg = EmbeddedPostgres(root / "postgres").start()
    nodes: list[Proc] = []
    try:
        ports = [free_port() for _ in range(3)]
        peers = peers_for(ports)
        for i, port in enumerate(ports):
            db = f"bench_node{i + 1}"
            create_database(pg.url(), db)
            migrate.upgrade(pg.url(db), "coordinator")
            env = node_env(i + 1, port, pg.url(db), peers, "bench-secret", 3) | {
                "TXC_RAFT_TICK_S": str(args.raft_tick_s),
                "TXC_ELECTION_TICKS": str(args.election_ticks),
                "TXC_LOG_LEVEL": "WARNING",
            }
            serve_args = ["-m", "coordinator", "serve"]
            url = f"http://127.0.0.1:{port}"
            nodes.append(
                Proc(f"node{i + 1}", serve_args, env, url, root / f"node{i + 1}.log").start()
            )
        for n in nodes:
            n.wait_ready("/healthz")
        async with serve(null_participant_app()) as pa, serve(null_participant_app()) as pb:
            client = LeaderFollowingClient([n.url for n in nodes])
            # (asked, answered) of each commit that answered COMMIT
            commits: list[tuple[float, float]] = []
            stop = asyncio.Event()

            async def worker(w: int) -> None:
                i = 0
                while not stop.is_set():
                    key = f"bench-{w}-{i}"
                    i += 1
                    try:
                        r = await client.request(
                            "POST", "/v1/transactions", {"idempotency_key": key}
                        )
                        txid = r.json()["txid"]
                        for name, url in (("a", pa), ("b", pb)):
                            body = {"name": name, "url": url, "vote": "yes"}
                            await client.request(
                                "POST", f"/v1/transactions/{txid}/participants", body
                            )
                        asked = time.monotonic()
                        r = await client.request("POST", f"/v1/transactions/{txid}/commit")
                        if r.status_code == 200:
                            commits.append((asked, time.monotonic()))
                    except TimeoutError:
                        continue

            await _leader(nodes, client)
            tasks = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
            gaps: list[float] = []
            for k in range(args.kills):
                await asyncio.sleep(SETTLE_S)
                victim = await _leader(nodes, client)
                killed_at = time.monotonic()
                victim.kill()
                # The first commit asked after the kill: decided by the new leader.
                while not any(asked > killed_at for asked, _ in commits):
                    if time.monotonic() - killed_at > GAP_TIMEOUT_S:
                        raise RuntimeError("commits did not resume")
                    await asyncio.sleep(0.005)
                gap = min(done for asked, done in commits if asked > killed_at) - killed_at
                gaps.append(gap)
                ms = gap * 1000
                print(f"kill {k + 1:>2}: {victim.name} killed; first commit after {ms:.0f} ms")
                victim.start()
                await _caught_up(victim, await _leader(nodes, client), client)
            stop.set()
            await asyncio.gather(*tasks)
            await client.aclose()
    finally:
        stop_all(nodes)
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)  # PostgreSQL's data and the nodes' logs
    election_s = args.raft_tick_s * args.election_ticks
    return {
        "kills": len(gaps),
        "raft_tick_s": args.raft_tick_s,
        "election_ticks": args.election_ticks,
        "election_timeout_s": [election_s, 2 * election_s],
        "gap_ms": {
            "min": round(min(gaps) * 1000),
            "median": round(statistics.median(gaps) * 1000),
            "mean": round(statistics.mean(gaps) * 1000),
            "max": round(max(gaps) * 1000),
        },
        "gaps_ms": [round(g * 1000) for g in gaps],
        "commits": len(commits),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--raft-tick-s", type=float, default=0.05)
    p.add_argument("--election-ticks", type=int, default=10)
    p.add_argument("--json-out", default=None, help="also write the report here")


def main(args: argparse.Namespace) -> int:
    report = run_bench(run(args))
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0
