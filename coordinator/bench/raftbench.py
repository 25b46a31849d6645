"""`txc bench raft`: replicated commands per second for groups of 1, 3 and 5 nodes, by batch
size (commands per proposal), on real PostgreSQL storage.

    txc bench raft                                   # sizes 1,3,5; batches 1,8,64
    txc bench raft --sizes 3 --batches 1,16,256 --concurrency 64

How: each group is N real node processes (`coordinator.bench.raftnode`: `txc serve` plus a
driver endpoint), each with its own database on one embedded PostgreSQL server (fsync and
synchronous_commit on), talking the real authenticated Raft transport. The driver runs
inside the leader: `--concurrency` closed loops each propose one entry of `batch` Begin
commands through the node's `RaftLog.propose` and wait until it is committed on a majority
and applied. That is the path every API call takes, minus HTTP and the 2PC engine, so the
figure is the log's capacity, not a client's. A group of 1 is a one-member Raft group
(not the standalone single-node log that `txc-1` of `txc bench transfers` uses).

The applied state grows by one transaction per command (Begin); transactions get a one-hour
timeout so that none expires during the run. A report, never a test.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.bench import profiling, report, stack
from coordinator.bench.args import positive_ints
from coordinator.bench.loadgen import run_bench
from coordinator.bench.raftnode import BENCH_KEY_HEADER
from coordinator.embedded_pg import EmbeddedPostgres
from coordinator.procs import Proc, stop_all

DEFAULT_SIZES = "1,3,5"
DEFAULT_BATCHES = "1,8,64"
DEFAULT_CONCURRENCY = 32
DEFAULT_DURATION_S = 4.0
DEFAULT_WARMUP_S = 1.0
DRIVE_GRACE_S = 60.0  # beyond warm-up + duration, for the driver's answer
DRIVE_ATTEMPTS = 5  # a leader that lost leadership before the drive began: find the new one


async def _group(
    pg: EmbeddedPostgres, root: Path, size: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    key = secrets.token_urlsafe(24)
    print(f"\n== {size} node(s)", flush=True)
    nodes = stack.start_nodes(
        pg,
        root,
        f"bench_raft{size}",
        size,
        None,
        module_args=["-m", "coordinator.bench.raftnode"],
        raft_when_single=True,
        extra_env={"TXC_BENCH_KEY": key},
    )
    rows = []
    try:
        async with aiohttp.ClientSession() as session:
            for batch in args.batches:
                body = {
                    "batch": batch,
                    "concurrency": args.concurrency,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                }
                timeout = aiohttp.ClientTimeout(total=args.warmup + args.duration + DRIVE_GRACE_S)
                for attempt in range(DRIVE_ATTEMPTS):
                    leader = await stack.find_leader(session, nodes)
                    groups = _groups(nodes, pg)
                    cpu0, t0 = profiling.cpu_snapshot(groups), time.monotonic()
                    async with session.post(
                        leader.url + "/bench/raft/drive",
                        json=body,
                        headers={BENCH_KEY_HEADER: key},
                        timeout=timeout,
                    ) as r:
                        if r.status == 409 and attempt + 1 < DRIVE_ATTEMPTS:
                            continue  # leadership moved since we looked: look again
                        if r.status != 200:
                            raise RuntimeError(f"drive: HTTP {r.status}: {await r.text()}")
                        row = await r.json()
                        break
                row["nodes"] = size
                # Over warm-up and window both: the share, not the exact window's CPU.
                row["cpu_cores"] = profiling.cpu_share(
                    cpu0, profiling.cpu_snapshot(_groups(nodes, pg)), time.monotonic() - t0
                )
                rows.append(row)
                print("   " + line(row), flush=True)
    finally:
        stop_all(nodes)
    return rows


def _groups(nodes: list[Proc], pg: EmbeddedPostgres) -> dict[str, list[int]]:
    groups = {"nodes": [n.proc.pid for n in nodes if n.proc is not None]}
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        groups["postgres"] = profiling.children_of(postmaster)
    return groups


def line(row: dict[str, Any]) -> str:
    lat = row["proposal_latency_ms"]
    return (
        f"nodes {row['nodes']}  batch {row['batch']:>4}  "
        f"{row['commands_per_s']:>9.1f} commands/s  {row['proposals_per_s']:>8.1f} proposals/s  "
        f"p50 {lat['p50']} p99 {lat['p99']} ms  errors {row['errors']}  "
        f"cores: {row.get('cpu_cores')}"
    )


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    out = [
        f"machine: {m['cpu']}, {m['cores']} cores",
        f"command: {result['command']}",
        f"concurrency {result['settings']['concurrency']} proposers in the leader",
        "",
        f"{'nodes':>5}{'batch':>7}{'commands/s':>13}{'proposals/s':>13}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'errors':>8}{'leader chg':>11}{'cores: nodes':>14}{'pg':>6}"
        f"{'others':>8}",
    ]
    for r in result["rows"]:
        lat = r["proposal_latency_ms"]
        cpu = r.get("cpu_cores") or {}
        out.append(
            f"{r['nodes']:>5}{r['batch']:>7}{r['commands_per_s']:>13.1f}"
            f"{r['proposals_per_s']:>13.1f}{lat['p50'] or 0:>9.2f}{lat['p99'] or 0:>9.2f}"
            f"{r['errors']:>8}{r.get('leader_changes', 0):>11}"
            f"{cpu.get('nodes', 0):>14.2f}{cpu.get('postgres', 0):>6.2f}"
            f"{cpu.get('others', 0):>8.2f}"
        )
    return "\n".join(out)


def chart(result: dict[str, Any], path: Path) -> Path | str:
    plt = report._pyplot()
    if plt is None:
        return report.NO_MATPLOTLIB
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size in sorted({r["nodes"] for r in result["rows"]}):
        rows = sorted((r for r in result["rows"] if r["nodes"] == size), key=lambda r: r["batch"])
        ax.plot(
            [r["batch"] for r in rows],
            [r["commands_per_s"] for r in rows],
            marker="o",
            label=f"{size} node{'s' if size > 1 else ''}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("commands per proposal (batch)")
    ax.set_ylabel("replicated commands/s")
    ax.set_title(
        f"txc bench raft: {result['settings']['concurrency']} proposers, "
        f"{result['machine']['cores']} cores"
    )
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="txc-bench-raft-"))
    pg = EmbeddedPostgres(root / "postgres").start()
    started = time.time()
    try:
        result: dict[str, Any] = {
            "benchmark": "raft",
            "command": "txc " + " ".join(sys.argv[1:]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": stack.machine(pg),
            "settings": {
                "sizes": args.sizes,
                "batches": args.batches,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "command": "begin",
                "note": "all nodes and one PostgreSQL server share this machine",
            },
            "rows": [],
        }
        for size in args.sizes:
            result["rows"] += await _group(pg, root, size, args)
        result["elapsed_s"] = round(time.time() - started, 1)
        return result
    finally:
        stack.cleanup(pg, root, keep=args.keep)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", type=positive_ints, default=positive_ints(DEFAULT_SIZES), help="group sizes"
    )
    p.add_argument(
        "--batches",
        type=positive_ints,
        default=positive_ints(DEFAULT_BATCHES),
        help="commands per proposal",
    )
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="proposers in the leader"
    )
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="measured s")
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S)
    p.add_argument("--out-dir", default="docs/bench", help="where raft.json and raft.png go")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def main(args: argparse.Namespace) -> int:
    result = run_bench(run(args))
    out_dir = report.save(result, table(result), args.out_dir, "raft")
    png = chart(result, out_dir / "raft.png")
    print(f"PNG:  {png}" if isinstance(png, Path) else f"PNG skipped: {png}")
    return 0
