"""The `txc` command: start everything, run one node, and operate transactions.

Exit codes a script can use:

| code | meaning |
|---|---|
| 0 | done |
| 1 | failed (unexpected answer, or a start-up error) |
| 2 | bad command line or configuration |
| 3 | transaction not found |
| 4 | state conflict (e.g. `commit` of an aborted transaction) |
| 5 | coordinator unreachable or without a leader |
| 6 | a dry run would change something; an audit or a consistency check found problems |
| 7 | `recover` left work prepared because its transaction is still undecided |
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from coordinator import shutdown
from coordinator.cli_output import CliError
from coordinator.cli_output import emit as _print
from coordinator.cli_output import table as _table

GRACEFUL_SHUTDOWN_S = 10  # open connections and requests get this long on SIGTERM
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
DEFAULT_URL = "http://127.0.0.1:7000"
CLI_TIMEOUT_S = 30.0


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    return httpx.Client(base_url=args.url, headers=headers, timeout=CLI_TIMEOUT_S)


def _request(args: argparse.Namespace, method: str, path: str, **kw: Any) -> dict[str, Any]:
    try:
        with _client(args) as c:
            r = c.request(method, path, **kw)
            leader = r.headers.get("txc-leader")
            if r.status_code == 503 and leader and leader.rstrip("/") != args.url.rstrip("/"):
                r = c.request(method, leader.rstrip("/") + path, **kw)  # once, to the leader
    except httpx.HTTPError as e:
        raise CliError(
            EXIT_UNAVAILABLE, f"cannot reach the coordinator at {args.url}: {e}"
        ) from None
    try:
        body = r.json()
    except ValueError:
        body = {"error": {"code": "http_error", "message": r.text[:300]}}
    if r.status_code < 300:
        return body  # type: ignore[no-any-return]
    err = body.get("error", {}) if isinstance(body, dict) else {}
    msg = f"{r.status_code} {err.get('code', '')}: {err.get('message', '')}"
    code = {
        404: EXIT_NOT_FOUND,
        409: EXIT_CONFLICT,
        503: EXIT_UNAVAILABLE,
        400: EXIT_USAGE,
        422: EXIT_USAGE,
    }
    raise CliError(code.get(r.status_code, EXIT_FAILED), msg)


def _participants_cell(t: dict[str, Any]) -> str:
    return (
        ",".join(f"{p['name']}:{p['vote'] or '?'}/{p['phase2']}" for p in t["participants"]) or "-"
    )


def cmd_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        k: v
        for k, v in (
            ("state", args.state),
            ("label", args.label),
            ("participant", args.participant),
            ("min_age_s", args.min_age),
            ("max_age_s", args.max_age),
            ("cursor", args.cursor),
        )
        if v is not None
    }
    filtered = any(k != "cursor" for k in params)
    params["limit"] = args.limit
    if args.finished:
        params["finished"] = "true"
    data = _request(args, "GET", "/v1/transactions", params=params)
    if args.finished and data.get("source") != "history":
        raise CliError(
            EXIT_FAILED,
            f"the coordinator at {args.url} does not list a history of forgotten "
            "transactions (an older version?)",
        )
    headers = ["TXID", "STATE", "OUTCOME", "CREATED", "PARTICIPANTS", "HEURISTIC"]
    rows = [
        [
            t["txid"],
            t["state"],
            t["outcome"] or "-",
            t["created_at"],
            _participants_cell(t),
            t["heuristic"] or "",
        ]
        for t in data["items"]
    ]
    if args.finished:
        headers.append("FORGOTTEN")
        for row, t in zip(rows, data["items"], strict=True):
            row.append(t.get("forgotten_at") or "-")
    lines = []
    if args.finished:
        lines.append(
            "history: finished transactions the replicated state has forgotten (retention), "
            "newest first, as the node that answered keeps them (each node keeps its own; a "
            "follower answers with its leader's)"
        )
    if rows:
        lines.append(_table(rows, headers))
    elif args.finished:
        lines.append(
            "no forgotten transaction in the history matches"
            if filtered
            else "no forgotten transaction in the history yet"
        )
    else:
        lines.append("no transaction matches" if filtered else "no transaction recorded")
    if data.get("next_cursor"):
        lines.append(f"more: add --cursor {data['next_cursor']}")
    _print(args, data, "\n".join(lines))
    return EXIT_OK


# Where `GET /v1/transactions/{txid}` found the record (its `source`), as `txc show` says it.
SOURCES = {
    "state": "live record (the group's replicated state)",
    "history": (
        "history (the replicated state has forgotten it; the full record, as the node that "
        "answered keeps it)"
    ),
    "tombstone": (
        "tombstone only: the replicated state keeps just the decision, and the node that "
        "answered has no full record in its history (it caught up by snapshot meanwhile; "
        "another node may have it)"
    ),
}


def cmd_show(args: argparse.Namespace) -> int:
    try:
        t = _request(args, "GET", f"/v1/transactions/{args.txid}")
    except CliError as e:
        if e.code != EXIT_NOT_FOUND:
            raise
        raise CliError(
            EXIT_NOT_FOUND,
            f"transaction {args.txid} is not known to the coordinator: never recorded, or "
            "forgotten longer ago than both its tombstone and the history are kept",
        ) from None
    try:
        events = _request(args, "GET", f"/v1/transactions/{args.txid}/timeline")["events"]
    except CliError as e:
        if e.code != EXIT_NOT_FOUND:
            raise
        events = []  # forgotten and purged between the two requests: show what was read
    source = t.get("source")
    lines = []
    if source is not None:
        lines.append(f"record: {SOURCES.get(source, source)}")
    lines += [
        f"{k}: {t[k]}"
        for k in (
            "txid",
            "state",
            "outcome",
            "decision_reason",
            "labels",
            "created_at",
            "expires_at",
            "decided_at",
            "completed_at",
            "forgotten_at",
            "heuristic",
        )
        if t.get(k) not in (None, {}, "")
    ]
    rows = [
        [
            p["name"],
            p["url"],
            p["vote"] or "-",
            p["phase2"],
            str(p["attempts"]),
            p["last_error"] or "",
        ]
        for p in t["participants"]
    ]
    lines.append("")
    if rows or source != "tombstone":
        lines.append(
            _table(rows, ["PARTICIPANT", "URL", "VOTE", "PHASE2", "ATTEMPTS", "LAST ERROR"])
        )
    else:
        lines.append("participants: not kept in a tombstone")
    lines.append("")
    ev_rows = [
        [str(e["index"]), e["at"], e["kind"], json.dumps(e["detail"], separators=(",", ":"))[:100]]
        for e in events
    ]
    if ev_rows or source in (None, "state"):
        lines.append(_table(ev_rows, ["INDEX", "AT", "COMMAND", "DETAIL"]))
    else:
        lines.append("timeline: none kept")
    _print(args, {"transaction": t, "timeline": events}, "\n".join(lines))
    return EXIT_OK


def _action(path: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        t = _request(args, "POST", f"/v1/transactions/{args.txid}/{path}")
        _print(
            args,
            t,
            f"{t.get('txid', args.txid)}: {t.get('state', '')} {t.get('outcome') or ''}".strip(),
        )
        return EXIT_OK

    return run


def cmd_cluster(args: argparse.Namespace) -> int:
    c = _request(args, "GET", "/v1/cluster")
    rows = [
        [
            m.get("node_id", m["id"]),
            m["url"],
            m["role"],
            "-" if m.get("match_index") is None else str(m["match_index"]),
            "-" if m.get("lag") is None else str(m["lag"]),
            {True: "yes", False: "no"}.get(m.get("healthy"), "?"),
        ]
        for m in c["members"]
    ]
    head = (
        f"leader: {c.get('leader')}  term: {c.get('term')}  "
        f"commit: {c.get('commit_index')}  applied: {c.get('applied_index')}"
        + (f"  checkpoint: {c['checkpoint_index']}" if "checkpoint_index" in c else "")
    )
    _print(
        args, c, head + "\n\n" + _table(rows, ["NODE", "URL", "ROLE", "MATCH", "LAG", "HEALTHY"])
    )
    return EXIT_OK


def cmd_add_node(args: argparse.Namespace) -> int:
    r = _request(args, "POST", "/v1/cluster/members", json={"id": args.id, "url": args.node_url})
    _print(args, r, f"node {args.id} added as a learner; it becomes a voter once caught up")
    return EXIT_OK


def cmd_remove_node(args: argparse.Namespace) -> int:
    r = _request(args, "DELETE", f"/v1/cluster/members/{args.id}")
    _print(args, r, f"node {args.id} removed; stop its process")
    return EXIT_OK


def cmd_transfer(args: argparse.Namespace) -> int:
    r = _request(args, "POST", "/v1/cluster/transfer-leadership", json={"to": args.id})
    _print(args, r, f"leadership is moving to node {args.id}")
    return EXIT_OK


# CPython's cyclic garbage collector ran its youngest generation every 700 allocations: about
# 7% of a leader's CPU under `txc bench transfers` (perf: gc_collect_main, visit_decref,
# visit_reachable), for a server whose garbage is nearly all freed by reference counting.
# Collect the youngest generation every GC_GEN0_THRESHOLD allocations instead, and leave the
# objects of start-up (modules, the app) out of every collection (gc.freeze).
GC_GEN0_THRESHOLD = 50_000
# Connections and requests one node serves at once; beyond it uvicorn answers 503 at once
# (a flood of connections, idle or slow, cannot take all of a node's memory and sockets).
# Far above what a group under `txc bench` holds (clients, participants, peers).
MAX_CONCURRENCY = 2048
GC_OLDER_THRESHOLDS = (20, 20)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *GC_OLDER_THRESHOLDS)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from coordinator import config, logs
    from coordinator.node import build_app
    from participant_sdk.header_deadline import server_options

    try:
        settings = config.load(
            args.config,
            port=args.port,
            host=args.host,
            database_url=args.database_url,
            node_id=args.node_id,
        ).validate()
    except config.ConfigError as e:
        print(f"txc serve: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(
        settings.node_id,
        os.environ.get("TXC_LOG_LEVEL", "INFO"),
        os.environ.get("TXC_LOG_FORMAT", "json"),
    )
    try:
        app = build_app(settings)
    except Exception as e:  # the database is unreachable or refuses the migrations
        print(f"txc serve: cannot prepare the database: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=settings.tls_certfile or None,
        ssl_keyfile=settings.tls_keyfile or None,
        # A stop never waits forever on a connection (a peer's stream, a long poll).
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        limit_concurrency=MAX_CONCURRENCY,
        **server_options(settings.header_timeout_s),  # a deadline on headers (slowloris)
    )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from coordinator import migrate
    from coordinator.db import normalise_url

    url = args.database_url or os.environ.get("TXC_DATABASE_URL")
    if not url:
        raise CliError(EXIT_USAGE, "give --database-url or set TXC_DATABASE_URL")
    migrate.upgrade(normalise_url(url), args.branch)
    print(f"migrated {args.branch} to head")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from coordinator.up import up

    return up(args)


def cmd_node(args: argparse.Namespace) -> int:
    """`txc node stop|start|list`: a process of a running `txc up`, on purpose."""
    from pathlib import Path

    from coordinator import supervise

    data_dir = Path(args.data_dir).resolve()
    try:
        if args.action == "list":
            children = supervise.read_status(data_dir)["children"]
            rows = [
                [n, c["state"], c["pid"] or "-", c["restarts"], c["url"]]
                for n, c in children.items()
            ]
            _print(args, children, _table(rows, ["NAME", "STATE", "PID", "RESTARTS", "URL"]))
            return EXIT_OK
        if not args.name:
            raise CliError(EXIT_USAGE, f"txc node {args.action} needs a name (2, node2, bank-a)")
        print(supervise.request(data_dir, args.name, stop=args.action == "stop"))
        return EXIT_OK
    except supervise.ControlError as e:
        raise CliError(EXIT_UNAVAILABLE, str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="txc", description="txc: a two-phase-commit coordinator")
    p.add_argument(
        "--url",
        default=os.environ.get("TXC_URL", DEFAULT_URL),
        help="a coordinator node's URL (TXC_URL)",
    )
    p.add_argument(
        "--token", default=os.environ.get("TXC_API_TOKEN", ""), help="API token (TXC_API_TOKEN)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start everything: PostgreSQL, the coordinator, demo participants"
    )
    up.add_argument(
        "--data-dir",
        default=os.environ.get("TXC_DATA_DIR", ".txc"),
        help="where the embedded database lives (default .txc)",
    )
    up.add_argument("--port", type=int, default=7000, help="first coordinator node's port")
    up.add_argument(
        "--database-url",
        default=os.environ.get("TXC_DATABASE_URL"),
        help="use this PostgreSQL server (superuser URL) instead of the embedded one",
    )
    up.add_argument(
        "--nodes", type=int, choices=[1, 3, 5], default=3, help="coordinator nodes (default 3)"
    )
    up.add_argument("--no-demo", action="store_true", help="do not start the demo participants")
    up.add_argument(
        "--demo-mysql",
        action="store_true",
        help="also a third demo bank, bank-c, on an embedded MariaDB (Debian: mariadb-server)",
    )
    up.set_defaults(func=cmd_up)

    node = sub.add_parser("node", help="stop, start or list the processes of a running `txc up`")
    node.add_argument("action", choices=["stop", "start", "list"])
    node.add_argument("name", nargs="?", help="2 (for node2), node2, bank-a, ...")
    node.add_argument(
        "--data-dir",
        default=os.environ.get("TXC_DATA_DIR", ".txc"),
        help="the data directory of that `txc up` (default .txc)",
    )
    node.set_defaults(func=cmd_node)

    serve = sub.add_parser(
        "serve", help="run one coordinator node (settings from --config / TXC_* variables)"
    )
    serve.add_argument("--config", default=None, help="TOML settings file (TXC_CONFIG)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--database-url", default=None)
    serve.add_argument("--node-id", default=None)
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser("migrate", help="apply the database migrations")
    mig.add_argument("--database-url", default=None)
    mig.add_argument("--branch", choices=["coordinator", "participant"], default="coordinator")
    mig.set_defaults(func=cmd_migrate)

    ls = sub.add_parser(
        "list",
        help="list transactions (--finished: the history of forgotten ones)",
    )
    ls.add_argument(
        "--state", choices=["active", "preparing", "committing", "committed", "aborting", "aborted"]
    )
    ls.add_argument("--label", help="key:value")
    ls.add_argument("--participant")
    ls.add_argument("--min-age", type=float, help="only transactions older than this many seconds")
    ls.add_argument(
        "--max-age", type=float, help="only transactions younger than this many seconds"
    )
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    ls.add_argument(
        "--finished",
        action="store_true",
        help="list the history: finished transactions the replicated state has "
        "forgotten (retention), with when they were forgotten",
    )
    ls.set_defaults(func=cmd_list)

    show = sub.add_parser(
        "show",
        help="one transaction, its participants and its timeline (also a forgotten one, "
        "from the history)",
    )
    show.add_argument("txid")
    show.set_defaults(func=cmd_show)

    for name, path, help_ in (
        ("commit", "commit", "run 2PC for a transaction (commits only on unanimous YES)"),
        ("abort", "abort", "abort a transaction that is not committed"),
        ("retry", "retry", "retry phase 2 of a transaction now"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("txid")
        sp.set_defaults(func=_action(path))

    bench = sub.add_parser("bench", help="benchmarks (report figures; never tests)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    fo = bench_sub.add_parser(
        "failover", help="SIGKILL the leader under load; time until commits resume"
    )
    from coordinator.bench import failover

    failover.add_arguments(fo)
    fo.set_defaults(func=failover.main)
    tr_bench = bench_sub.add_parser(
        "transfers",
        help="throughput and latency of transfers: baseline (no coordinator), txc 1 and 3 nodes",
    )
    from coordinator.bench import transfer

    transfer.add_arguments(tr_bench)
    tr_bench.set_defaults(func=transfer.main)
    raft_bench = bench_sub.add_parser(
        "raft", help="replicated commands/s for 1, 3 and 5 nodes by batch size"
    )
    from coordinator.bench import raftbench

    raftbench.add_arguments(raft_bench)
    raft_bench.set_defaults(func=raftbench.main)
    phase2_bench = bench_sub.add_parser(
        "phase2", help="CPU per phase-2 commit message: one per request against batches"
    )
    from coordinator.bench import phase2bench

    phase2bench.add_arguments(phase2_bench)
    phase2_bench.set_defaults(func=phase2bench.main)
    soak_bench = bench_sub.add_parser(
        "soak",
        help="a 3-node group under sustained load: memory, snapshots and throughput over time",
    )
    from coordinator.bench import soak

    soak.add_arguments(soak_bench)
    soak_bench.set_defaults(func=soak.main)

    from coordinator.ops import cli as ops_cli

    ops_cli.register(sub)

    cl = sub.add_parser("cluster", help="members, leader, term, commit and applied index")
    cl.set_defaults(func=cmd_cluster)
    cl_sub = cl.add_subparsers(dest="cluster_command")
    cl_sub.add_parser("status", help="the default").set_defaults(func=cmd_cluster)
    add = cl_sub.add_parser("add-node", help="add a node (as a learner, promoted once caught up)")
    add.add_argument("id", type=int, help="its raft id (a new number)")
    add.add_argument("node_url", help="its URL, e.g. http://10.0.0.4:7000")
    add.set_defaults(func=cmd_add_node)
    rm = cl_sub.add_parser("remove-node", help="remove a node from the group")
    rm.add_argument("id", type=int)
    rm.set_defaults(func=cmd_remove_node)
    tr = cl_sub.add_parser("transfer-leadership", help="make another voter the leader")
    tr.add_argument("id", type=int)
    tr.set_defaults(func=cmd_transfer)
    return p


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM or Ctrl-C: unwind (`finally` blocks run) within `shutdown.STOP_BOUND_S`; a
    second one ends the command at once."""
    shutdown.request_stop()
    raise KeyboardInterrupt(f"signal {signum}")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM stops a command the way Ctrl-C does: its `finally` blocks run, so a benchmark
    or a recovery run stops the processes and the database it started instead of leaving
    them behind (the default action ends Python at once). Both arm `coordinator.shutdown`'s
    bound, so the command ends in bounded time even when the orderly path hangs. Commands
    that handle signals themselves (`serve`, `up`) install their own handlers over these.
    Only from the main thread (signals can be handled nowhere else); the previous handlers
    are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    replaced = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    replaced = {s: h for s, h in replaced.items() if h in defaults}
    for s in replaced:
        signal.signal(s, _interrupt)
    try:
        yield
    finally:
        # The bound stays armed past this point: interpreter exit joins threads, and that
        # can hang too.
        for s, h in replaced.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            return int(args.func(args))
    except CliError as e:
        print(f"txc: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug or an unexpected answer: one line, no stack trace
        print(f"txc: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
