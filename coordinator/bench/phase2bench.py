"""`txc bench phase2`: what a phase-2 commit costs, sent one message per request or in
batches (`POST {url}/batch`), in CPU per message: the participant's process, its PostgreSQL
backends, and the coordinator's client (this process).

Why a benchmark of its own: in `txc bench transfers` phase 2 is a few percent of a
transfer, and the whole-machine figures move by ±10-20% from run to run on a shared VM,
more than the change. Here only phase 2 runs while it is measured, and CPU time (not wall
time) is counted, rounds of each mode alternating, so that a drift of the machine hits both.

One demo bank (`txc_demo.bank`, deferred enlistment, no coordinator involved) prepares
`--per-round` debits on distinct accounts (PostgreSQL holds at most 200 prepared
transactions here); then the coordinator's own `ParticipantClient` commits them, either
`--concurrency` single requests at a time, or in batches of `--batch`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.bench import profiling, report, stack
from coordinator.bench.loadgen import run_bench
from coordinator.embedded_pg import EmbeddedPostgres
from coordinator.participant_client import ParticipantClient, Reply
from coordinator.participants import Identity, Registry
from participant_sdk.headers import ENLIST_DEFERRED, ENLIST_HEADER, TRANSACTION_HEADER

BANK = "bank-a"
UNREACHABLE_COORDINATOR = "http://127.0.0.1:9"  # deferred work never calls it
RECOVERY_INTERVAL_S = 3600.0  # no recovery pass during the run (its first one is at start)
PREPARE_CONCURRENCY = 16
REQUEST_TIMEOUT_S = 30.0
MAX_PER_ROUND = 180  # below the embedded server's max_prepared_transactions (200)


async def _prepare(session: aiohttp.ClientSession, url: str, accounts: list[str]) -> list[str]:
    """One prepared debit per account (distinct accounts: a prepared debit holds its row
    lock until phase 2); their txids."""
    txids = [str(uuid.uuid4()) for _ in accounts]
    slots = asyncio.Semaphore(PREPARE_CONCURRENCY)

    async def one(txid: str, account: str) -> None:
        headers = {TRANSACTION_HEADER: txid, ENLIST_HEADER: ENLIST_DEFERRED}
        async with (
            slots,
            session.post(
                f"{url}/transfer/debit", json={"account": account, "amount": 1}, headers=headers
            ) as r,
        ):
            if r.status != 200:
                raise RuntimeError(f"prepare failed: HTTP {r.status} {await r.text()}")

    await asyncio.gather(*(one(t, a) for t, a in zip(txids, accounts, strict=True)))
    return txids


async def _commit(
    client: ParticipantClient, url: str, txids: list[str], batch: int, concurrency: int
) -> list[Reply]:
    """Commit `txids`: single requests (`batch` 1), `concurrency` at a time, or batches of
    `batch`, `max(1, concurrency // batch)` at a time."""
    base = f"{url}/txc"
    if batch == 1:
        slots = asyncio.Semaphore(concurrency)

        async def single(txid: str) -> list[Reply]:
            async with slots:
                return [await client.call(base, "commit", txid, BANK, REQUEST_TIMEOUT_S)]

        parts = await asyncio.gather(*(single(t) for t in txids))
    else:
        slots = asyncio.Semaphore(max(1, concurrency // batch))

        async def many(chunk: list[str]) -> list[Reply]:
            async with slots:
                replies = await client.call_batch(
                    base, BANK, [("commit", t) for t in chunk], REQUEST_TIMEOUT_S
                )
                if replies is None:
                    raise RuntimeError("the bank did not take a batch")
                return replies

        chunks = [txids[i : i + batch] for i in range(0, len(txids), batch)]
        parts = await asyncio.gather(*(many(c) for c in chunks))
    return [r for part in parts for r in part]


def _groups(bank_pid: int, pg: EmbeddedPostgres) -> dict[str, list[int]]:
    postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
    return {"participant": [bank_pid], "postgres": profiling.children_of(postmaster)}


def _used(before: profiling.Snapshot, after: profiling.Snapshot, group: str) -> float:
    old = before.get(group, {})
    return sum(max(0.0, s - old.get(pid, 0.0)) for pid, s in after.get(group, {}).items())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.per_round <= MAX_PER_ROUND:
        raise SystemExit(f"--per-round must be between 1 and {MAX_PER_ROUND}")
    root = Path(tempfile.mkdtemp(prefix="txc-bench-phase2-"))
    pg = EmbeddedPostgres(root / "postgres").start()
    started = time.time()
    creds = stack.Credentials.generate()
    modes = {"single": 1, f"batch-{args.batch}": args.batch}
    totals = {
        m: {"messages": 0, "participant": 0.0, "postgres": 0.0, "client": 0.0, "wall": 0.0}
        for m in modes
    }
    try:
        db = stack.prepare_bank_database(pg, "bench_phase2_bank", args.per_round, 1_000_000)
        bank = stack.start_bank(
            BANK,
            db,
            root,
            baseline=False,
            coordinator_urls=[UNREACHABLE_COORDINATOR],
            creds=creds,
            recovery_interval_s=RECOVERY_INTERVAL_S,
        )
        accounts = [stack.account_name(i) for i in range(args.per_round)]
        # As a node with a registry signs for this bank (and checks its signed answers).
        url = f"{bank.url}/txc"
        identity = Identity(BANK, (creds.bank_secrets[BANK],), (url,))
        client = ParticipantClient(registry=Registry({BANK: identity}))
        await client.start()
        try:
            async with aiohttp.ClientSession() as session:
                for rnd in range(args.rounds):
                    # Alternate which mode goes first, so that neither always follows the other.
                    order = list(modes.items())
                    if rnd % 2:
                        order.reverse()
                    for mode, batch in order:
                        txids = await _prepare(session, bank.url, accounts)
                        assert bank.proc is not None
                        groups = _groups(bank.proc.pid, pg)
                        cpu0, own0, wall0 = (
                            profiling.cpu_snapshot(groups),
                            time.process_time(),
                            time.monotonic(),
                        )
                        replies = await _commit(client, bank.url, txids, batch, args.concurrency)
                        wall = time.monotonic() - wall0
                        own = time.process_time() - own0
                        cpu1 = profiling.cpu_snapshot(groups)
                        bad = [r for r in replies if r.status != 200]
                        if bad or len(replies) != len(txids):
                            raise RuntimeError(f"{mode}: {len(bad)} commits failed: {bad[:3]}")
                        t = totals[mode]
                        t["messages"] += len(txids)
                        t["participant"] += _used(cpu0, cpu1, "participant")
                        t["postgres"] += _used(cpu0, cpu1, "postgres")
                        t["client"] += own
                        t["wall"] += wall
        finally:
            await client.close()
            bank.stop()
        rows = []
        for mode, t in totals.items():
            n = max(1, int(t["messages"]))
            rows.append(
                {
                    "mode": mode,
                    "messages": int(t["messages"]),
                    "participant_us": round(t["participant"] / n * 1e6, 1),
                    "postgres_us": round(t["postgres"] / n * 1e6, 1),
                    "client_us": round(t["client"] / n * 1e6, 1),
                    "total_us": round(
                        (t["participant"] + t["postgres"] + t["client"]) / n * 1e6, 1
                    ),
                    "messages_per_s": round(n / t["wall"], 1) if t["wall"] > 0 else None,
                }
            )
        return {
            "benchmark": "phase2",
            "command": "txc " + " ".join(sys.argv[1:]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": stack.machine(pg),
            "settings": {
                "rounds": args.rounds,
                "per_round": args.per_round,
                "batch": args.batch,
                "concurrency": args.concurrency,
                "note": "CPU per phase-2 commit message; /proc ticks are 10 ms, so rounds add up",
            },
            "rows": rows,
            "elapsed_s": round(time.time() - started, 1),
        }
    finally:
        stack.cleanup(pg, root, keep=args.keep)


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    single = rows[0]
    lines = [
        "mode        messages  participant µs  postgres µs  client µs  total µs  msgs/s  "
        "total x single",
    ]
    for r in rows:
        ratio = r["total_us"] / single["total_us"] if single["total_us"] else float("nan")
        lines.append(
            f"{r['mode']:<10} {r['messages']:>9} {r['participant_us']:>15} "
            f"{r['postgres_us']:>12} {r['client_us']:>10} {r['total_us']:>9} "
            f"{r['messages_per_s']!s:>7}  {ratio:.2f}"
        )
    lines.append("CPU per commit message (µs): the bank's process, its PostgreSQL backends, the")
    lines.append("coordinator's client (this process); msgs/s is wall time, not a target.")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=20, help="rounds per mode (alternating)")
    p.add_argument("--per-round", type=int, default=160, help="commits per round (<= 180)")
    p.add_argument("--batch", type=int, default=8, help="messages per batch request")
    p.add_argument("--concurrency", type=int, default=8, help="messages in flight")
    p.add_argument("--out-dir", default="docs/bench", help="where phase2.json goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def main(args: argparse.Namespace) -> int:
    result = run_bench(run(args))
    report.save(result, table(result), args.out_dir, "phase2")
    return 0
