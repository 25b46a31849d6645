"""`txc bench soak`: a 3-node group under sustained load, watched over time.

    txc bench soak                                   # 1,000,000 transfers, windows of 60 s
    txc bench soak --transactions 20000 --window-s 20
    txc bench soak --duration 3600 --lazy --no-outage

The stack is `txc bench transfers`' txc-3 (coordinator/bench/transfer.py): one embedded
PostgreSQL server, three coordinator nodes, the two demo banks, credentials as `txc up` makes
them, and the same closed loop of transfers (`--concurrency` workers at full speed), with
retention short enough to cycle records through the replicated state many times over: a
finished transaction is forgotten `--retention-s` after it finished, its tombstone
`--tombstone-retention-s` later, and a snapshot is due every `--snapshot-entries` log entries.

It runs until `--transactions` transfers have finished (committed or failed), or for
`--duration` seconds (whichever comes first when both are given), and reports one row per
`--window-s` window as it goes: transfers/s, latency p50/p99, the leader, and per node its
RSS (/proc/PID/status VmRSS), snapshot size, records, tombstones and history rows (its
own `GET /v1/cluster/retention`). What a soak looks for: throughput that holds, memory and
snapshots that level off instead of growing with the history, and a follower that rejoins.

Follower outage (unless `--no-outage`): one follower is SIGKILLed a third of the way through
the run and restarted (same database) at two thirds. Reported: how long after the restart
its applied index reached the leader's commit index as seen at the restart, and whether it
caught up by snapshot: the leader had compacted its log past the follower's last entry
(the leader's snapshot index at the restart beyond the follower's last index at the kill)
and the follower's snapshot index after rejoining is at least that.

At the end: the last window's throughput over the first's, each node's RSS growth from the
second window to the last, snapshot bytes first and last, and the banks' money (the same
total and no prepared transaction left, as `txc bench transfers` checks). The windows and the
summary go to `--out-dir`/soak.json.

A report, never a test: nothing here asserts a figure (DESIGN §8).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.bench import loadgen, report, stack, transfer
from coordinator.bench.loadgen import Run, Sample, run_bench
from coordinator.embedded_pg import EmbeddedPostgres
from coordinator.procs import Proc, stop_all
from coordinator.retention import MIN_TOMBSTONE_RETENTION_S

NAME = "soak"
DEFAULT_TRANSACTIONS = 1_000_000
DEFAULT_WINDOW_S = 60.0
DEFAULT_CONCURRENCY = 32
DEFAULT_RETENTION_S = 5.0
DEFAULT_TOMBSTONE_RETENTION_S = 60.0
DEFAULT_SNAPSHOT_ENTRIES = 5000
MAX_RUN_S = 30 * 86_400.0  # the closed loop's bound when only --transactions ends the run
TICK_S = 0.1  # how often the run checks its progress (windows, outage, the end)
POLL_TIMEOUT_S = 5.0  # one node's /v1/cluster/retention or /v1/cluster at a window's end
CATCH_UP_POLL_S = 0.05
CATCH_UP_PROBE_S = 1.0
CATCH_UP_TIMEOUT_S = 600.0  # after the restart; the run ends without it if it takes longer
KILL_AT = 1 / 3  # share of the run (transactions, or time with --duration) at the kill
RESTART_AT = 2 / 3
# Per node, from its GET /v1/cluster/retention and GET /v1/cluster at each window's end.
RETENTION_FIELDS = (
    "records",
    "in_flight",
    "tombstones",
    "history_rows",
    "snapshot_bytes",
    "snapshot_records",
    "forgotten_by_this_node",
)
CLUSTER_FIELDS = ("role", "term", "commit_index", "applied_index", "snapshot_index")


# -- what the closed loop recorded, window by window -----------------------------------------


@dataclass
class Tally:
    """The samples of the current window (and counts of the whole run): a long soak keeps no
    per-sample record (a million transfers would be a few hundred MB in this process)."""

    finished: int = 0  # transfers that ended, committed or failed, since the start
    committed: int = 0
    latencies: list[float] = field(default_factory=list)  # committed, this window
    errors: dict[str, int] = field(default_factory=dict)  # this window

    def record(self, s: Sample) -> None:
        self.finished += 1
        if s.ok:
            self.committed += 1
            self.latencies.append(s.latency_s)
        else:
            key = s.error or "error"
            self.errors[key] = self.errors.get(key, 0) + 1

    def cut(self) -> tuple[list[float], dict[str, int]]:
        """This window's samples; the next window starts empty."""
        out = self.latencies, self.errors
        self.latencies, self.errors = [], {}
        return out


# -- the nodes' figures -----------------------------------------------------------------------


def short_name(p: Proc) -> str:
    return p.name.rsplit("-", 1)[-1]  # bench_soak-node2 -> node2


def rss_mb(p: Proc) -> float | None:
    """The process's resident set (VmRSS) in MiB, None when it is not running."""
    if p.proc is None or not p.alive:
        return None
    try:
        for line in Path(f"/proc/{p.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout_s: float
) -> dict[str, Any] | None:
    try:
        t = aiohttp.ClientTimeout(total=timeout_s)
        async with session.get(url, headers=headers, timeout=t) as r:
            if r.status != 200:
                return None
            data = await r.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def node_figures(
    session: aiohttp.ClientSession, p: Proc, headers: dict[str, str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "alive": p.alive,
        "pid": p.proc.pid if p.proc is not None and p.alive else None,
        "rss_mb": rss_mb(p),
    }
    ret = cl = None
    if p.alive:
        ret, cl = await asyncio.gather(
            _get(session, p.url + "/v1/cluster/retention", headers, POLL_TIMEOUT_S),
            _get(session, p.url + "/v1/cluster", headers, POLL_TIMEOUT_S),
        )
    for k in RETENTION_FIELDS:
        out[k] = (ret or {}).get(k)
    for k in CLUSTER_FIELDS:
        out[k] = (cl or {}).get(k)
    out["leader"] = (cl or {}).get("leader")
    return out


async def all_figures(
    session: aiohttp.ClientSession, nodes: list[Proc], headers: dict[str, str]
) -> dict[str, dict[str, Any]]:
    figs = await asyncio.gather(*(node_figures(session, p, headers) for p in nodes))
    return {short_name(p): f for p, f in zip(nodes, figs, strict=True)}


def leader_of(figures: dict[str, dict[str, Any]]) -> str | None:
    """The node that says it leads, else the leader the others name."""
    for name, f in figures.items():
        if f.get("role") == "leader":
            return name
    return next((f["leader"] for f in figures.values() if f.get("leader")), None)


# -- the follower outage ----------------------------------------------------------------------


@dataclass
class Outage:
    node: Proc | None = None
    out: dict[str, Any] = field(default_factory=dict)
    restarted_at: float | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def killed(self) -> bool:
        return self.node is not None

    @property
    def restarted(self) -> bool:
        return self.restarted_at is not None


async def _cluster(
    session: aiohttp.ClientSession, p: Proc, headers: dict[str, str], timeout_s: float
) -> dict[str, Any]:
    return await _get(session, p.url + "/v1/cluster", headers, timeout_s) or {}


async def kill_follower(
    session: aiohttp.ClientSession,
    nodes: list[Proc],
    headers: dict[str, str],
    outage: Outage,
    t0: float,
    tally: Tally,
) -> str:
    leader = await stack.find_leader(session, nodes, headers)
    victim = next(p for p in nodes if p is not leader and p.alive)
    st = await _cluster(session, victim, headers, POLL_TIMEOUT_S)  # just before the kill
    await asyncio.to_thread(victim.kill)
    outage.node = victim
    outage.out |= {
        "node": short_name(victim),
        "leader_at_kill": short_name(leader),
        "killed_at_s": round(time.monotonic() - t0, 2),
        "transactions_at_kill": tally.finished,
        "applied_index_at_kill": st.get("applied_index"),
        "last_index_at_kill": st.get("last_index"),
        "snapshot_index_at_kill": st.get("snapshot_index"),
    }
    return (
        f"{short_name(victim)} (follower) SIGKILLed after {tally.finished} transfers; "
        f"its applied index {st.get('applied_index')}, snapshot index "
        f"{st.get('snapshot_index')}"
    )


async def restart_follower(
    session: aiohttp.ClientSession,
    nodes: list[Proc],
    headers: dict[str, str],
    outage: Outage,
    t0: float,
    tally: Tally,
) -> str:
    victim = outage.node
    assert victim is not None
    leader = await stack.find_leader(session, [p for p in nodes if p is not victim], headers)
    st = await _cluster(session, leader, headers, POLL_TIMEOUT_S)
    target = st.get("commit_index")
    lsnap = st.get("snapshot_index")
    last = outage.out.get("last_index_at_kill")
    outage.out |= {
        "restarted_at_s": round(time.monotonic() - t0, 2),
        "transactions_at_restart": tally.finished,
        "leader_at_restart": short_name(leader),
        "leader_commit_index_at_restart": target,
        "leader_snapshot_index_at_restart": lsnap,
        # Raft sends a snapshot when the entries after the follower's last are gone.
        "leader_compacted_past_it": (None if lsnap is None or last is None else bool(lsnap > last)),
        "answering_after_s": None,
        "caught_up_s": None,
        "snapshot_index_after_rejoin": None,
        "by_snapshot": None,
    }
    outage.out["down_s"] = round(outage.out["restarted_at_s"] - outage.out["killed_at_s"], 2)
    victim.start()  # the same environment: its own database, its log and snapshot in it
    outage.restarted_at = time.monotonic()
    outage.watcher = asyncio.create_task(
        watch_catch_up(session, victim, headers, outage), name="soak-catch-up"
    )
    return (
        f"{short_name(victim)} restarted after {outage.out['down_s']:.1f} s down; leader "
        f"{short_name(leader)} at commit index {target}, snapshot index {lsnap}"
    )


async def watch_catch_up(
    session: aiohttp.ClientSession, p: Proc, headers: dict[str, str], outage: Outage
) -> None:
    """Until the restarted follower has applied the leader's commit index at the restart."""
    assert outage.restarted_at is not None
    started = outage.restarted_at
    target = outage.out.get("leader_commit_index_at_restart")
    out = outage.out
    while time.monotonic() < started + CATCH_UP_TIMEOUT_S:
        st = await _cluster(session, p, headers, CATCH_UP_PROBE_S)
        now = time.monotonic()
        if st:
            if out["answering_after_s"] is None:
                out["answering_after_s"] = round(now - started, 2)
            applied = st.get("applied_index")
            if target is None or (applied is not None and applied >= target):
                out["caught_up_s"] = round(now - started, 2)
                out["applied_index_after_rejoin"] = applied
                snap = st.get("snapshot_index")
                out["snapshot_index_after_rejoin"] = snap
                lsnap = out.get("leader_snapshot_index_at_restart")
                if snap is not None and lsnap is not None:
                    out["by_snapshot"] = bool(out["leader_compacted_past_it"] and snap >= lsnap)
                print(
                    f"   {short_name(p)} caught up {out['caught_up_s']:.2f} s after its restart "
                    f"(applied {applied} >= {target}; snapshot index "
                    f"{out.get('snapshot_index_at_kill')} -> {snap}; by snapshot: "
                    f"{out['by_snapshot']})",
                    flush=True,
                )
                return
        if not p.alive:
            out["error"] = f"exited with {p.proc.returncode if p.proc else None}"
            return
        await asyncio.sleep(CATCH_UP_POLL_S)
    out["error"] = f"not caught up {CATCH_UP_TIMEOUT_S:.0f} s after the restart"


# -- the run ----------------------------------------------------------------------------------


def _progress(args: argparse.Namespace, t0: float, tally: Tally) -> float:
    shares = []
    if args.duration:
        shares.append((time.monotonic() - t0) / args.duration)
    if args.transactions:
        shares.append(tally.finished / args.transactions)
    return max(shares)


def window_row(
    i: int,
    t_s: float,
    length_s: float,
    latencies: list[float],
    errors: dict[str, int],
    finished: int,
    figures: dict[str, dict[str, Any]],
    events: list[str],
) -> dict[str, Any]:
    return {
        "window": i,
        "t_s": round(t_s, 2),
        "length_s": round(length_s, 2),
        "transfers": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "throughput_tps": round(len(latencies) / length_s, 1) if length_s > 0 else None,
        "latency_ms": loadgen.latency_summary(latencies),
        "finished_total": finished,
        "leader": leader_of(figures),
        "nodes": figures,
        "events": events,
    }


async def soak(
    sc: transfer.Scenario,
    session: aiohttp.ClientSession,
    creds: stack.Credentials | None,
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], Outage, Tally]:
    headers = transfer.read_headers(creds)
    coordinator = transfer.make_coordinator(args.client, session, sc, creds)
    await stack.find_leader(session, sc.node_procs, headers)
    op = transfer.Transfers(
        session,
        sc.bank_urls,
        coordinator,
        args.accounts,
        args.concurrency,
        args.seed,
        lazy=args.lazy,
    )
    tally = Tally()
    outage = Outage()
    windows: list[dict[str, Any]] = []
    stop = asyncio.Event()
    names = [short_name(p) for p in sc.node_procs]
    print(header(names), flush=True)

    async def drive(run: Run) -> None:
        t0 = start = time.monotonic()
        next_cut = t0 + args.window_s
        events: list[str] = []
        try:
            while True:
                await asyncio.sleep(TICK_S)
                progress = _progress(args, t0, tally)
                done = progress >= 1
                said = []
                if args.outage and not outage.killed and (progress >= KILL_AT or done):
                    said.append(
                        await kill_follower(session, sc.node_procs, headers, outage, t0, tally)
                    )
                # At the end at the latest: the follower is back for the final figures.
                if outage.killed and not outage.restarted and (progress >= RESTART_AT or done):
                    said.append(
                        await restart_follower(session, sc.node_procs, headers, outage, t0, tally)
                    )
                for line in said:
                    events.append(line)
                    print("   " + line, flush=True)
                now = time.monotonic()
                if now >= next_cut or done:
                    latencies, errors = tally.cut()
                    figures = await all_figures(session, sc.node_procs, headers)
                    row = window_row(
                        len(windows) + 1,
                        now - t0,
                        now - start,
                        latencies,
                        errors,
                        tally.finished,
                        figures,
                        events,
                    )
                    windows.append(row)
                    print(table_row(row, names), flush=True)
                    events = []
                    start = now
                    while next_cut <= now:
                        next_cut += args.window_s
                if done:
                    return
        finally:
            stop.set()

    try:
        bound = args.duration + loadgen.DRAIN_TIMEOUT_S if args.duration else MAX_RUN_S
        await loadgen.closed_loop(
            op, args.concurrency, 0.0, bound, drive, stop=stop, record=tally.record
        )
    finally:
        if coordinator is not None:
            await coordinator.aclose()
    return windows, outage, tally


def _growth(windows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """RSS from the second window to the last, in this node's last incarnation (a restarted
    follower starts again from its restart)."""
    seen = [
        (w["nodes"][name]["pid"], w["nodes"][name]["rss_mb"])
        for w in windows
        if w["nodes"][name]["rss_mb"] is not None
    ]
    if not seen:
        return {
            "second_window_mb": None,
            "last_window_mb": None,
            "growth_mb": None,
            "restarted": False,
        }
    last_pid = seen[-1][0]
    mine = [rss for pid, rss in seen if pid == last_pid]
    restarted = len({pid for pid, _ in seen}) > 1
    if len(mine) < 2:
        return {
            "second_window_mb": None,
            "last_window_mb": mine[-1],
            "growth_mb": None,
            "restarted": restarted,
        }
    return {
        "second_window_mb": mine[1],
        "last_window_mb": mine[-1],
        "growth_mb": round(mine[-1] - mine[1], 1),
        "peak_mb": max(mine[1:]),
        "restarted": restarted,
    }


def summarise(
    windows: list[dict[str, Any]],
    names: list[str],
    tally: Tally,
    window_s: float,
    restarted: set[str] | None = None,
) -> dict[str, Any]:
    """`restarted`: nodes the run restarted (a kill and restart inside one window leaves
    every window's sample with the new pid, so the samples alone cannot tell)."""
    out: dict[str, Any] = {
        "windows": len(windows),
        "transfers_finished": tally.finished,
        "transfers_committed": tally.committed,
        "transfers_failed": tally.finished - tally.committed,
    }
    # The last window may be a stub (the run ended in it): then the last full one counts.
    full = [w for w in windows if w["length_s"] >= window_s / 2] or windows
    if full:
        first, last = full[0], full[-1]
        out["throughput_first_tps"] = first["throughput_tps"]
        out["throughput_last_tps"] = last["throughput_tps"]
        out["throughput_last_over_first"] = (
            round(last["throughput_tps"] / first["throughput_tps"], 3)
            if first["throughput_tps"] and last["throughput_tps"] is not None
            else None
        )
        out["throughput_windows_compared"] = [first["window"], last["window"]]
    growth = {n: _growth(windows, n) for n in names}
    for n in restarted or ():
        growth[n]["restarted"] = True
    out["rss"] = growth
    grown = [g["growth_mb"] for g in growth.values() if g.get("growth_mb") is not None]
    out["max_rss_growth_mb"] = max(grown) if grown else None
    snaps: dict[str, Any] = {}
    for n in names:
        values = [w["nodes"][n]["snapshot_bytes"] for w in windows]
        taken = [v for v in values if v]
        snaps[n] = {"first": taken[0] if taken else None, "last": values[-1] if values else None}
    out["snapshot_bytes"] = snaps
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="txc-bench-soak-"))
    pg = EmbeddedPostgres(root / "postgres").start()
    creds = None if args.no_auth else stack.Credentials.generate(registry=not args.shared_secret)
    started = time.time()
    node_env = {
        "TXC_RETENTION_S": str(args.retention_s),
        "TXC_TOMBSTONE_RETENTION_S": str(args.tombstone_retention_s),
        "TXC_SNAPSHOT_ENTRIES": str(args.snapshot_entries),
    }
    if args.history_retention_days is not None:
        node_env["TXC_HISTORY_RETENTION_DAYS"] = str(args.history_retention_days)
    try:
        bank_dbs = [
            stack.prepare_bank_database(pg, db, args.accounts, transfer.SEED_BALANCE)
            for db in ("bench_bank_a", "bench_bank_b")
        ]
        out: dict[str, Any] = {
            "benchmark": NAME,
            "command": "txc " + " ".join(sys.argv[1:]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": stack.machine(pg),
            "settings": {
                "transactions": args.transactions,
                "duration_s": args.duration,
                "window_s": args.window_s,
                "concurrency": args.concurrency,
                "lazy": args.lazy,
                "client": args.client,
                "accounts_per_bank": args.accounts,
                "auth": creds is not None,
                "participant_identities": (
                    "none" if creds is None else "registry" if creds.registry else "shared secret"
                ),
                "outage": args.outage,
                "retention_s": args.retention_s,
                "tombstone_retention_s": args.tombstone_retention_s,
                "snapshot_entries": args.snapshot_entries,
                "history_retention_days": args.history_retention_days,
                "note": "all processes and one PostgreSQL server share this machine",
            },
        }
        before = [stack.bank_state(u) for u in bank_dbs]
        kind = "lazy" if args.lazy else "classic"
        print(
            f"== soak: 3 coordinator nodes, two banks, {args.concurrency} clients, {kind} "
            f"transactions; retention {args.retention_s:g} s, tombstones "
            f"{args.tombstone_retention_s:g} s, snapshot every {args.snapshot_entries} entries",
            flush=True,
        )
        sc = transfer.start_scenario(NAME, 3, pg, root, bank_dbs, creds, node_env=node_env)
        connector = aiohttp.TCPConnector(
            limit=transfer.MAX_CONNECTIONS, limit_per_host=transfer.MAX_CONNECTIONS
        )
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                windows, outage, tally = await soak(sc, session, creds, args)
                if outage.watcher is not None:
                    if not outage.watcher.done():
                        print("   waiting for the restarted follower to catch up", flush=True)
                    await outage.watcher
                after = await transfer.settle(bank_dbs)
                # After the load and the settling: what each node holds at rest.
                final = await all_figures(session, sc.node_procs, transfer.read_headers(creds))
        finally:
            stop_all(sc.procs)
        names = [short_name(p) for p in sc.node_procs]
        out["windows"] = windows
        out["outage"] = outage.out if args.outage else None
        out["final"] = {"leader": leader_of(final), "nodes": final}
        out["money"] = transfer.conservation(before, after)
        restarted = {short_name(outage.node)} if outage.node and outage.restarted else set()
        out["summary"] = summarise(windows, names, tally, args.window_s, restarted)
        out["elapsed_s"] = round(time.time() - started, 1)
        if not out["money"]["conserved"]:
            print(f"   WARNING: money not conserved: {out['money']}", flush=True)
        return out
    finally:
        stack.cleanup(pg, root, keep=args.keep)


# -- the terminal -----------------------------------------------------------------------------


def _n(v: Any, width: int, fmt: str = "") -> str:
    return f"{'-' if v is None else format(v, fmt):>{width}}"


NODE_COLUMNS = f"{'RSS MB':>7}{'snap kB':>9}{'records':>8}{'tombs':>7}{'history':>9}"
LEAD_COLUMNS = (
    f"{'win':>4}{'t s':>7}{'transfers/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'leader':>7}"
)


def header(names: list[str]) -> str:
    top = " " * len(LEAD_COLUMNS) + "".join(f" | {n:<{len(NODE_COLUMNS)}}" for n in names)
    return top.rstrip() + "\n" + LEAD_COLUMNS + "".join(f" | {NODE_COLUMNS}" for _ in names)


def table_row(w: dict[str, Any], names: list[str]) -> str:
    lat = w["latency_ms"]
    line = (
        f"{w['window']:>4}{w['t_s']:>7.0f}{_n(w['throughput_tps'], 12, '.1f')}"
        f"{_n(lat['p50'], 8, '.1f')}{_n(lat['p99'], 8, '.1f')}{w['errors']:>7}"
        f"{w['leader'] or '-':>7}"
    )
    for n in names:
        f = w["nodes"][n]
        if not f["alive"]:
            line += f" | {'down':>7}{'':>{len(NODE_COLUMNS) - 7}}"
            continue
        snap = f["snapshot_bytes"]
        line += (
            f" | {_n(f['rss_mb'], 7, '.0f')}{_n(None if snap is None else snap / 1000, 9, '.0f')}"
            f"{_n(f['records'], 8)}{_n(f['tombstones'], 7)}{_n(f['history_rows'], 9)}"
        )
    return line


def summary_text(result: dict[str, Any]) -> str:
    s = result["summary"]
    m = result["machine"]
    money = result["money"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, PostgreSQL {m['postgresql']}, "
        f"Python {m['python']}",
        f"command: {result['command']}",
        f"transfers: {s['transfers_finished']} finished ({s['transfers_committed']} committed, "
        f"{s['transfers_failed']} failed) in {s['windows']} windows, {result['elapsed_s']} s "
        "in all",
    ]
    if "throughput_last_over_first" in s:
        a, b = s["throughput_windows_compared"]
        lines.append(
            f"throughput: window {b} {_n(s['throughput_last_tps'], 0, '.1f')} / window {a} "
            f"{_n(s['throughput_first_tps'], 0, '.1f')} transfers/s = "
            f"{_n(s['throughput_last_over_first'], 0, '.2f')}"
        )
    for n, g in s["rss"].items():
        again = " (restarted: since its restart)" if g.get("restarted") else ""
        lines.append(
            f"RSS {n}: {_n(g['second_window_mb'], 0)} MB in the second window -> "
            f"{_n(g['last_window_mb'], 0)} MB in the last, growth {_n(g['growth_mb'], 0)} MB"
            f"{again}"
        )
    for n, b in s["snapshot_bytes"].items():
        lines.append(f"snapshot bytes {n}: first {_n(b['first'], 0)}, last {_n(b['last'], 0)}")
    fin = result["final"]
    for n, f in fin["nodes"].items():
        lines.append(
            f"at the end {n}{' (leader)' if n == fin['leader'] else ''}: records "
            f"{_n(f['records'], 0)}, tombstones {_n(f['tombstones'], 0)}, history rows "
            f"{_n(f['history_rows'], 0)}, snapshot {_n(f['snapshot_bytes'], 0)} bytes "
            f"({_n(f['snapshot_records'], 0)} records), RSS {_n(f['rss_mb'], 0)} MB"
        )
    o = result.get("outage")
    if o:
        lines.append(
            f"outage: {o.get('node')} down {_n(o.get('down_s'), 0)} s; after its restart it "
            f"answered in {_n(o.get('answering_after_s'), 0)} s and reached the leader's commit "
            f"index at the restart ({_n(o.get('leader_commit_index_at_restart'), 0)}) in "
            f"{_n(o.get('caught_up_s'), 0)} s; by snapshot: {o.get('by_snapshot')} (snapshot "
            f"index {_n(o.get('snapshot_index_at_kill'), 0)} at the kill -> "
            f"{_n(o.get('snapshot_index_after_rejoin'), 0)}; the leader's "
            f"{_n(o.get('leader_snapshot_index_at_restart'), 0)} at the restart, the "
            f"follower's last index {_n(o.get('last_index_at_kill'), 0)} at the kill)"
            + (f"; {o['error']}" if o.get("error") else "")
        )
    lines.append(
        f"money: {'conserved' if money['conserved'] else 'NOT conserved'} (total "
        f"{money['total_before']} -> {money['total_after']}, prepared left "
        f"{money['prepared_left']})"
    )
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--transactions",
        type=int,
        default=None,
        metavar="N",
        help=f"run until N transfers have finished (default {DEFAULT_TRANSACTIONS:,} unless "
        "--duration is given)",
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="run this long at most"
    )
    p.add_argument("--window-s", type=float, default=DEFAULT_WINDOW_S, help="one report row per")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="closed loop")
    p.add_argument("--lazy", action="store_true", help="lazy transactions (as txc-3-lazy)")
    p.add_argument(
        "--client",
        choices=("aiohttp", "sdk"),
        default="aiohttp",
        help="coordinator client of the load generator (sdk: AsyncTxcClient on httpx)",
    )
    p.add_argument("--retention-s", type=float, default=DEFAULT_RETENTION_S)
    p.add_argument("--tombstone-retention-s", type=float, default=DEFAULT_TOMBSTONE_RETENTION_S)
    p.add_argument("--snapshot-entries", type=int, default=DEFAULT_SNAPSHOT_ENTRIES)
    p.add_argument(
        "--history-retention-days",
        type=float,
        default=None,
        help="the nodes' history table (default: the node's own default)",
    )
    p.add_argument(
        "--outage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SIGKILL a follower at a third of the run, restart it at two thirds (default: on)",
    )
    p.add_argument("--accounts", type=int, default=transfer.DEFAULT_ACCOUNTS, help="per bank")
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
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out-dir", default="docs/bench", help="where soak.json goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")


def main(args: argparse.Namespace) -> int:
    if args.transactions is None and args.duration is None:
        args.transactions = DEFAULT_TRANSACTIONS
    if args.transactions is not None and args.transactions < 1:
        raise SystemExit("--transactions must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise SystemExit("--duration must be > 0")
    if args.window_s <= 0:
        raise SystemExit("--window-s must be > 0")
    if args.concurrency < 1 or args.accounts < args.concurrency:
        raise SystemExit("--concurrency must be at least 1 and at most --accounts")
    if args.retention_s <= 0 or args.snapshot_entries < 1:
        raise SystemExit("--retention-s must be > 0 and --snapshot-entries at least 1")
    if args.tombstone_retention_s < MIN_TOMBSTONE_RETENTION_S:
        raise SystemExit(f"--tombstone-retention-s must be at least {MIN_TOMBSTONE_RETENTION_S:g}")
    if args.history_retention_days is not None and args.history_retention_days <= 0:
        raise SystemExit("--history-retention-days must be > 0")
    result = run_bench(run(args))
    report.save(result, summary_text(result), args.out_dir, NAME)
    return 0
