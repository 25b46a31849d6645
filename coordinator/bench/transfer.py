"""`txc bench transfers`: what atomic commit costs, against no atomicity at all.

    txc bench transfers                          # defaults: concurrency 8 and 32, ~3 min
    txc bench transfers --concurrency 32 --duration 20 --out-dir docs/bench

Everything runs on this machine, one scenario after the other, on one embedded PostgreSQL
server (fsync and synchronous_commit on):

- baseline: the client calls bank A's `POST /transfer/debit` then bank B's
  `POST /transfer/credit`, each one local autocommitting transaction (fast, not atomic);
  the banks are `coordinator.bench.baseline_bank` (the demo bank's own SQL; see there why).
- txc-1: begin at one standalone coordinator node, the same two calls on the demo banks
  (`txc_demo.bank`, SDK: PREPARE TRANSACTION and enlist with vote yes), commit (2PC; the
  answer comes after phase 2, which the node waits for inline).
- txc-3: the same through a 3-node Raft group (every command replicated to a majority).
- txc-3-lazy (and txc-1-lazy): lazy transactions (README "Lazy transactions"): no begin
  call; the banks hand their signed enlistments to the client, whose commit brings them.
- txc-3-failover (`--failover`, on by default): txc-3 under load, the leader SIGKILLed a
  third of the way in; reports the window without commits and latency around the kill.

Credentials are generated per run and used as `txc up` uses them (API tokens per role,
each bank its own secret in a participant registry, every protocol request and answer
signed), unless `--no-auth`; `--shared-secret` measures the earlier one-secret model.
Each worker of the closed loop picks random accounts from its own slice of the accounts (no
two in-flight transfers touch the same row: no lock contention). After each scenario the
banks must hold the same total as before and no prepared transaction may be left:
`conserved` in the report.

A report, never a test: nothing here asserts a figure (DESIGN §8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.bench import loadgen, profiling, report, stack
from coordinator.bench.args import positive_ints
from coordinator.bench.loadgen import Run, Sample, run_bench
from coordinator.bench.txclient import (
    AiohttpCoordinator,
    Coordinator,
    SdkCoordinator,
    Tx,
    TxFailed,
)
from coordinator.embedded_pg import EmbeddedPostgres, free_port
from coordinator.procs import Proc, stop_all
from participant_sdk.headers import ENLISTMENT_HEADER

# name -> coordinator nodes; "-lazy": lazy transactions with deferred enlistment (README
# "Lazy transactions": begun by the commit, which brings the banks' enlistments).
SCENARIOS = {"baseline": 0, "txc-1": 1, "txc-3": 3, "txc-1-lazy": 1, "txc-3-lazy": 3}
DEFAULT_SCENARIOS = "baseline,txc-1,txc-3,txc-3-lazy"
FAILOVER = "txc-3-failover"
DEFAULT_CONCURRENCY = "8,32"
DEFAULT_DURATION_S = 15.0
DEFAULT_WARMUP_S = 3.0
DEFAULT_ACCOUNTS = 1000
MAX_REPEAT = 20  # --repeat: runs of the whole scenario list in one command
SEED_BALANCE = 1_000_000
AMOUNT = 1
BUSINESS_TIMEOUT_S = 30.0  # one debit or credit (a bank may wait for a row lock)
SETTLE_TIMEOUT_S = 60.0  # after a scenario: prepared transactions resolved by phase 2/recovery
SETTLE_POLL_S = 0.2
FAILOVER_DURATION_S = 12.0
FAILOVER_KILL_AT = 0.3  # fraction of the failover window before the leader is killed
FAILOVER_RECOVERY_S = 1.0  # the banks' in-doubt recovery interval in the failover scenario
AROUND_KILL_S = 1.0  # transfers started this long before the kill count as "around" it
TIMELINE_BEFORE_S = 2.0
TIMELINE_AFTER_S = 6.0
IDLE_CORES = 0.25  # --wait-idle: the machine counts as quiet below this many busy cores
IDLE_SAMPLE_S = 1.0
CONTENDED_CORES = 0.25  # other programs using more than this during a measurement: warned
MAX_CONNECTIONS = 1024  # the load generator's HTTP connections, all hosts together


@dataclass
class Scenario:
    name: str
    nodes: int  # 0: baseline (no coordinator)
    procs: list[Proc] = field(default_factory=list)
    node_procs: list[Proc] = field(default_factory=list)
    bank_urls: list[str] = field(default_factory=list)


class Transfers:
    """The closed loop's operation: one transfer, debit at bank A then credit at bank B."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        bank_urls: list[str],
        coordinator: Coordinator | None,
        accounts: int,
        concurrency: int,
        seed: int,
        lazy: bool = False,
    ) -> None:
        assert accounts >= concurrency, "each worker needs its own accounts"
        self.lazy = lazy
        self.session = session
        self.bank_a, self.bank_b = bank_urls
        self.coordinator = coordinator
        self.rng = random.Random(seed)
        # Worker w owns accounts w, w + c, w + 2c, ...: no two in-flight transfers share one.
        self.slices = [
            [stack.account_name(i) for i in range(w, accounts, concurrency)]
            for w in range(concurrency)
        ]
        self.timeout = aiohttp.ClientTimeout(total=BUSINESS_TIMEOUT_S)
        self.partial = 0  # baseline: debited but not credited (what atomicity prevents)

    async def _business(self, url: str, account: str, tx: Tx | None) -> str | None:
        """None when the bank did its part, else what went wrong."""
        body = {"account": account, "amount": AMOUNT}
        headers = tx.headers if tx is not None else {}
        async with self.session.post(url, json=body, headers=headers, timeout=self.timeout) as r:
            if r.status == 200:
                await r.read()
                if tx is not None:
                    tx.collect(r.headers.get(ENLISTMENT_HEADER))
                return None
            try:
                data = await r.json(content_type=None)
                code = data["error"]["code"]
            except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
                code = ""
        what = url.rsplit("/", 1)[-1]
        return f"{what}: HTTP {r.status} {code}".strip()

    async def __call__(self, worker: int) -> Sample:
        mine = self.slices[worker]
        src, dst = self.rng.choice(mine), self.rng.choice(mine)
        debit_url = self.bank_a + "/transfer/debit"
        credit_url = self.bank_b + "/transfer/credit"
        started = time.monotonic()
        tx: Tx | None = None
        try:
            if self.coordinator is None:
                err = await self._business(debit_url, src, None)
                if err is None:
                    err = await self._business(credit_url, dst, None)
                    if err is not None:
                        self.partial += 1
                return Sample(started, time.monotonic(), err is None, err)
            tx = await self.coordinator.begin(self.lazy)
            err = await self._business(debit_url, src, tx)
            if err is None:
                err = await self._business(credit_url, dst, tx)
            if err is not None:
                await self.coordinator.abort(tx)
                return Sample(started, time.monotonic(), False, err)
            asked = time.monotonic()
            await self.coordinator.commit(tx)
            done = time.monotonic()
            return Sample(started, done, True, None, done - asked)
        except TxFailed as e:
            return Sample(started, time.monotonic(), False, e.kind)
        except (aiohttp.ClientError, TimeoutError) as e:
            if self.coordinator is not None and tx is not None:
                with contextlib.suppress(TxFailed, aiohttp.ClientError, TimeoutError):
                    await self.coordinator.abort(tx)
            return Sample(started, time.monotonic(), False, type(e).__name__)


# -- the stack of one scenario ----------------------------------------------------------------


def start_scenario(
    name: str,
    nodes: int,
    pg: EmbeddedPostgres,
    root: Path,
    bank_dbs: list[str],
    creds: stack.Credentials | None,
    recovery_interval_s: float | None = None,
    node_env: dict[str, str] | None = None,
) -> Scenario:
    """The processes of one scenario (also `txc bench soak`'s, with its settings in
    `node_env`): `nodes` coordinator nodes, each on a fresh database, and the two banks."""
    sc = Scenario(name, nodes)
    ports = {bank: free_port() for bank in stack.BANKS}
    try:
        if nodes:
            prefix = "bench_" + name.replace("-", "_")
            registry = None
            if creds is not None and creds.registry:
                urls = {b: f"http://127.0.0.1:{port}/txc" for b, port in ports.items()}
                registry = creds.write_registry(root / f"participants-{name}.toml", urls)
            sc.node_procs = stack.start_nodes(
                pg, root, prefix, nodes, creds, extra_env=node_env, participants_file=registry
            )
            sc.procs += sc.node_procs
        for bank, db in zip(stack.BANKS, bank_dbs, strict=True):
            p = stack.start_bank(
                bank,
                db,
                root,
                baseline=nodes == 0,
                coordinator_urls=[n.url for n in sc.node_procs],
                creds=creds,
                recovery_interval_s=recovery_interval_s,
                port=ports[bank],
            )
            sc.procs.append(p)
            sc.bank_urls.append(p.url)
    except BaseException:
        stop_all(sc.procs)
        raise
    return sc


async def settle(bank_dbs: list[str]) -> list[stack.BankState]:
    """Wait (bounded) until no bank holds a prepared transaction, then read the banks."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        states = [stack.bank_state(u) for u in bank_dbs]
        if all(s.prepared == 0 for s in states) or time.monotonic() > deadline:
            return states
        await asyncio.sleep(SETTLE_POLL_S)


def conservation(before: list[stack.BankState], after: list[stack.BankState]) -> dict[str, Any]:
    """The banks' money after a run: the same total as before and no prepared transaction
    left is `conserved`."""
    total_before = sum(s.total for s in before)
    total_after = sum(s.total for s in after)
    prepared = sum(s.prepared for s in after)
    return {
        "total_before": total_before,
        "total_after": total_after,
        "prepared_left": prepared,
        "ledger_rows_added": sum(
            a.ledger_rows - b.ledger_rows for a, b in zip(after, before, strict=True)
        ),
        "conserved": total_before == total_after and prepared == 0,
    }


def make_coordinator(
    kind: str, session: aiohttp.ClientSession, sc: Scenario, creds: stack.Credentials | None
) -> Coordinator | None:
    if not sc.nodes:
        return None
    token = creds.tokens["client"] if creds else None
    urls = [n.url for n in sc.node_procs]
    if kind == "sdk":
        return SdkCoordinator(urls, token)
    return AiohttpCoordinator(session, urls, token)


def read_headers(creds: stack.Credentials | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {creds.tokens['read']}"} if creds else {}


def _cpu_groups(sc: Scenario, pg: EmbeddedPostgres) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {"load generator": [os.getpid()]}
    for p in sc.procs:
        if p.proc is None:
            continue
        key = "banks" if p.name.startswith("bank") else "coordinator nodes"
        groups.setdefault(key, []).append(p.proc.pid)
    with contextlib.suppress(OSError, ValueError, IndexError):
        postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        groups["postgres"] = profiling.children_of(postmaster)
    return groups


async def _wait_idle(args: argparse.Namespace) -> None:
    """With --wait-idle: wait (bounded) until other programs leave the machine alone."""
    deadline = time.monotonic() + args.wait_idle
    said = False
    while time.monotonic() < deadline:
        busy = await asyncio.to_thread(profiling.machine_busy_cores, IDLE_SAMPLE_S)
        if busy is None or busy < IDLE_CORES:
            return
        if not said:
            print(f"   waiting for the machine to quiet down ({busy:.2f} cores busy)", flush=True)
            said = True
    print("   the machine is still busy; measuring anyway (see 'others')", flush=True)


async def _measure(
    sc: Scenario,
    pg: EmbeddedPostgres,
    op: Transfers,
    concurrency: int,
    args: argparse.Namespace,
    during: Any = None,
    duration_s: float | None = None,
) -> tuple[Run, dict[str, Any]]:
    holder: dict[str, Any] = {}

    async def side(run: Run) -> None:
        holder["cpu0"] = (time.monotonic(), profiling.cpu_snapshot(_cpu_groups(sc, pg)))
        holder["xacts0"] = await asyncio.to_thread(stack.database_transactions, pg)
        if during is not None:
            await during(run)

    run = await loadgen.closed_loop(
        op, concurrency, args.warmup, duration_s or args.duration, during=side
    )
    summary = loadgen.summarise(run)
    t0, cpu0 = holder.get("cpu0", (run.window[0], {}))
    # Sampled after the drain: a slight overestimate of the window's CPU, the same for all.
    wall = time.monotonic() - t0
    summary["cpu_cores"] = profiling.cpu_share(
        cpu0, profiling.cpu_snapshot(_cpu_groups(sc, pg)), wall
    )
    # Per transfer (CPU and database transactions): figures a busy machine barely moves.
    ended = sum(1 for s in run.samples if s.ok and t0 <= s.ended)
    if ended:
        # PostgreSQL publishes its counters within about a second of a transaction's end.
        await asyncio.sleep(stack.STATS_FLUSH_S)
        xacts = await asyncio.to_thread(stack.database_transactions, pg)
        per = {
            k: v * wall * 1000 / ended
            for k, v in summary["cpu_cores"].items()
            if k in ("coordinator nodes", "banks", "postgres", "load generator")
        }
        summary["cpu_ms_per_transfer"] = {k: round(v, 1) for k, v in per.items()}
        summary["cpu_ms_per_transfer"]["total"] = round(sum(per.values()), 1)
        before = holder.get("xacts0", {})
        summary["db_transactions_per_transfer"] = {
            group: round((n - before.get(group, 0)) / ended, 1) for group, n in xacts.items()
        }
    others = summary["cpu_cores"].get("others", 0.0)
    if others > CONTENDED_CORES:
        print(
            f"   WARNING: other programs used {others:.2f} cores during this measurement",
            flush=True,
        )
    return run, summary


# -- scenarios --------------------------------------------------------------------------------


async def _scenario(
    name: str,
    nodes: int,
    pg: EmbeddedPostgres,
    root: Path,
    bank_dbs: list[str],
    creds: stack.Credentials | None,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    levels: list[int],
) -> dict[str, Any]:
    stack.vacuum_and_checkpoint(pg, bank_dbs)
    before = [stack.bank_state(u) for u in bank_dbs]
    print(f"\n== {name}: starting {nodes or 'no'} coordinator node(s) and two banks", flush=True)
    sc = start_scenario(name, nodes, pg, root, bank_dbs, creds)
    results: list[dict[str, Any]] = []
    partial = 0
    profile: dict[str, Any] | None = None
    try:
        coordinator = make_coordinator(args.client, session, sc, creds)
        if sc.node_procs:
            await stack.find_leader(session, sc.node_procs, read_headers(creds))
        for i, c in enumerate(levels):
            op = Transfers(
                session,
                sc.bank_urls,
                coordinator,
                args.accounts,
                c,
                args.seed + i,
                lazy=name.endswith("-lazy"),
            )
            await _wait_idle(args)
            _, summary = await _measure(sc, pg, op, c, args)
            partial += op.partial
            results.append(summary)
            print("   " + report.one_line(name, summary), flush=True)
        if args.profile > 0 and name == args.profile_scenario:
            profile = await _profile(sc, pg, session, coordinator, creds, args, max(levels))
        if coordinator is not None:
            await coordinator.aclose()
        after = await settle(bank_dbs)
    finally:
        stop_all(sc.procs)
    money = conservation(before, after)
    if nodes == 0:
        money["partial_transfers"] = partial
        # A baseline transfer whose credit failed after its debit loses money: expected.
        money["conserved"] = money["conserved"] or partial > 0
    out: dict[str, Any] = {"name": name, "nodes": nodes, "levels": results, **money}
    if profile is not None:
        out["profile"] = profile
    if not money["conserved"]:
        print(f"   WARNING: money not conserved in {name}: {money}", flush=True)
    return out


async def _profile(
    sc: Scenario,
    pg: EmbeddedPostgres,
    session: aiohttp.ClientSession,
    coordinator: Coordinator | None,
    creds: stack.Credentials | None,
    args: argparse.Namespace,
    concurrency: int,
) -> dict[str, Any]:
    """One more run under load while py-spy samples the leader, a follower, a bank and this
    process.
    Not part of the measured figures (sampling costs a little CPU on a 2-core machine)."""
    exe = profiling.py_spy()
    if exe is None:
        print("   profile skipped: py-spy is not installed (pip install py-spy)", flush=True)
        return {"skipped": "py-spy not installed"}
    leader = await stack.find_leader(session, sc.node_procs, read_headers(creds))
    bank_a = next(p for p in sc.procs if p.name == "bank-a")
    targets = {"leader": leader, "bank-a": bank_a}
    followers = [p for p in sc.node_procs if p is not leader]
    if followers:
        targets["follower"] = followers[0]
    out_dir = Path(args.out_dir)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    recs: list[profiling.Recording] = []
    op = Transfers(
        session,
        sc.bank_urls,
        coordinator,
        args.accounts,
        concurrency,
        args.seed + 99,
        lazy=args.profile_scenario.endswith("-lazy"),
    )

    async def record(run: Run) -> None:
        for name, p in targets.items():
            assert p.proc is not None
            recs.append(profiling.start_recording(exe, p.proc.pid, name, args.profile, out_dir))
        recs.append(
            profiling.start_recording(exe, os.getpid(), "load-generator", args.profile, out_dir)
        )

    print(f"   profiling {leader.name} (leader), bank-a and the load generator ...", flush=True)
    _, summary = await _measure(sc, pg, op, concurrency, args, record, args.profile + 1)
    result: dict[str, Any] = {
        "concurrency": concurrency,
        "throughput_tps": summary["throughput_tps"],
        "cpu_cores": summary["cpu_cores"],
    }
    for r in recs:
        ok = await asyncio.to_thread(r.wait, args.profile + profiling.PY_SPY_GRACE_S)
        result[r.name] = profiling.top_functions(r.path) if ok else {"failed": str(r.path)}
    return result


async def _failover(
    pg: EmbeddedPostgres,
    root: Path,
    bank_dbs: list[str],
    creds: stack.Credentials | None,
    session: aiohttp.ClientSession,
    args: argparse.Namespace,
    concurrency: int,
) -> dict[str, Any]:
    stack.vacuum_and_checkpoint(pg, bank_dbs)
    before = [stack.bank_state(u) for u in bank_dbs]
    print(f"\n== {FAILOVER}: 3 nodes, SIGKILL the leader under load", flush=True)
    sc = start_scenario(FAILOVER, 3, pg, root, bank_dbs, creds, FAILOVER_RECOVERY_S)
    try:
        coordinator = make_coordinator(args.client, session, sc, creds)
        await stack.find_leader(session, sc.node_procs, read_headers(creds))
        op = Transfers(session, sc.bank_urls, coordinator, args.accounts, concurrency, args.seed)
        killed: dict[str, str] = {}

        async def kill(run: Run) -> None:
            await asyncio.sleep(args.failover_duration * FAILOVER_KILL_AT)
            leader = await stack.find_leader(session, sc.node_procs, read_headers(creds))
            run.events["kill"] = time.monotonic()
            killed["node"] = leader.name
            await asyncio.to_thread(leader.kill)

        await _wait_idle(args)
        run, summary = await _measure(sc, pg, op, concurrency, args, kill, args.failover_duration)
        if coordinator is not None:
            await coordinator.aclose()
        after = await settle(bank_dbs)
    finally:
        stop_all(sc.procs)
    out = {"name": FAILOVER, "nodes": 3, "killed": killed.get("node"), **_failover_figures(run)}
    out["whole_run"] = summary
    out |= conservation(before, after)
    print("   " + report.failover_line(out), flush=True)
    return out


def _failover_figures(run: Run) -> dict[str, Any]:
    kill = run.events.get("kill")
    if kill is None:
        return {"error": "the leader was not killed"}
    ok_ends = sorted(s.ended for s in run.samples if s.ok)
    # The first commit *asked* after the kill: one the new leader decided (an answer the
    # old leader had sent before it died may still arrive just after the kill).
    after = sorted(s.ended for s in run.samples if s.ok and s.ended - (s.commit_s or 0.0) > kill)
    first_after_ms = round((after[0] - kill) * 1000) if after else None
    # The longest stretch without a completed commit, from AROUND_KILL_S before the kill.
    near = [e for e in ok_ends if e >= kill - AROUND_KILL_S]
    gaps = [b - a for a, b in itertools.pairwise(near)]
    window_ms = round(max(gaps) * 1000) if gaps else None
    recovered = after[0] if after else kill
    around = [
        s for s in run.samples if kill - AROUND_KILL_S <= s.started <= recovered + AROUND_KILL_S
    ]
    steady = [s for s in run.samples if s.ok and run.window[0] <= s.ended < kill]
    return {
        "first_commit_after_kill_ms": first_after_ms,
        "no_commit_window_ms": window_ms,
        "around_kill": {
            "transfers": len(around),
            "failed": sum(1 for s in around if not s.ok),
            "latency_ms": loadgen.latency_summary([s.latency_s for s in around if s.ok]),
        },
        "before_kill_latency_ms": loadgen.latency_summary([s.latency_s for s in steady]),
        "timeline": loadgen.timeline(run, kill, -TIMELINE_BEFORE_S, TIMELINE_AFTER_S),
    }


# -- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    levels: list[int] = args.concurrency
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not names and not args.failover:
        raise SystemExit("nothing to run: no scenario and --no-failover")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if args.accounts < max(levels):
        raise SystemExit("--accounts must be at least the highest concurrency")
    root = Path(tempfile.mkdtemp(prefix="txc-bench-transfers-"))
    pg = EmbeddedPostgres(root / "postgres").start()
    creds = None if args.no_auth else stack.Credentials.generate(registry=not args.shared_secret)
    started = time.time()
    try:
        bank_dbs = [
            stack.prepare_bank_database(pg, db, args.accounts, SEED_BALANCE)
            for db in ("bench_bank_a", "bench_bank_b")
        ]
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=MAX_CONNECTIONS)
        out: dict[str, Any] = {
            "benchmark": "transfers",
            "command": "txc " + " ".join(sys.argv[1:]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": stack.machine(pg),
            "settings": {
                "concurrency": levels,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "accounts_per_bank": args.accounts,
                "auth": creds is not None,
                "participant_identities": (
                    "none" if creds is None else "registry" if creds.registry else "shared secret"
                ),
                "client": args.client,
                "wait_idle_s": args.wait_idle,
                "raft_tick_s": 0.05,
                "election_ticks": 10,
                "note": "all processes and one PostgreSQL server share this machine",
            },
            "scenarios": [],
        }
        async with aiohttp.ClientSession(connector=connector) as session:
            for name in names:
                out["scenarios"].append(
                    await _scenario(
                        name, SCENARIOS[name], pg, root, bank_dbs, creds, session, args, levels
                    )
                )
            if args.failover:
                out["failover"] = await _failover(
                    pg, root, bank_dbs, creds, session, args, max(levels)
                )
        out["ratios"] = report.ratios(out["scenarios"])
        out["targets"] = report.targets(out)
        out["elapsed_s"] = round(time.time() - started, 1)
        return out
    finally:
        stack.cleanup(pg, root, keep=args.keep)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--concurrency",
        type=positive_ints,
        default=positive_ints(DEFAULT_CONCURRENCY),
        help=f"closed-loop clients; several levels as N,N (default {DEFAULT_CONCURRENCY})",
    )
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="measured s")
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, help="unmeasured s first")
    p.add_argument("--accounts", type=int, default=DEFAULT_ACCOUNTS, help="per bank")
    p.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"which, in order (default {DEFAULT_SCENARIOS}; known: {', '.join(SCENARIOS)})",
    )
    p.add_argument(
        "--failover",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also kill the leader of a 3-node group under load (default: on)",
    )
    p.add_argument("--failover-duration", type=float, default=FAILOVER_DURATION_S)
    p.add_argument(
        "--client",
        choices=("aiohttp", "sdk"),
        default="aiohttp",
        help="coordinator client of the load generator (sdk: AsyncTxcClient on httpx)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="development mode: no API tokens, unsigned participant requests",
    )
    p.add_argument(
        "--shared-secret",
        action="store_true",
        help="the earlier trust model: one participant secret shared by the nodes and both "
        "banks, instead of each bank's own secret in a registry (to compare their cost)",
    )
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the measured runs, py-spy the leader, a follower, a bank and the load "
        "generator",
    )
    p.add_argument("--profile-scenario", default="txc-3", choices=tuple(SCENARIOS)[1:])
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement wait up to this long for other programs to go quiet",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out-dir", default="docs/bench", help="where transfers.json and transfers.png go"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="measure the scenarios N times in a row (the failover and the profile in the last "
        "run only) and report the series: each run's throughput and txc / baseline as the "
        "ratio of the means (single runs on a shared machine move by 10-20%%)",
    )


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.repeat <= MAX_REPEAT:
        raise SystemExit(f"--repeat must be 1..{MAX_REPEAT}")
    runs = []
    for i in range(args.repeat):
        last = i == args.repeat - 1
        # Every run but the last measures the scenarios only (the failover kills a leader,
        # the profile samples for its own seconds: once is enough for each).
        this = (
            args
            if last
            else argparse.Namespace(**{**vars(args), "failover": False, "profile": 0.0})
        )
        if args.repeat > 1:
            print(f"\n=== run {i + 1} of {args.repeat}")
        runs.append(run_bench(run(this)))
    result = runs[-1]
    if len(runs) > 1:
        result["series"] = report.series(runs)
        result["targets"] = report.targets(result)
    out_dir = report.save(result, report.table(result), args.out_dir, "transfers")
    png = report.chart(result, out_dir / "transfers.png")
    print(f"PNG:  {png}" if isinstance(png, Path) else f"PNG skipped: {png}")
    return 0
