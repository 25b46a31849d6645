"""The operator subcommands of `txc`: recover, audit, raft log|state, backup, restore.

Exit codes (0-5 as every `txc` command, see coordinator/cli.py):

| code | meaning |
|---|---|
| 0 | done; nothing to report (recover: nothing left in doubt; audit: clean) |
| 1 | failed (an action failed, or an unexpected answer) |
| 2 | bad command line, or the wrong kind of database |
| 3 | not found (a node database without coordinator tables, a missing backup file) |
| 4 | conflict (restore into a database that is not empty) |
| 5 | a database or the coordinator is unreachable |
| 6 | attention: a dry run would change something, the audit found problems, or
        `raft state` found an inconsistency |
| 7 | `recover`: prepared work still waits for an undecided transaction (left pending) |
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from coordinator.cli_output import CliError, emit, table
from coordinator.ops.common import OpsError, age, redact

EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 conflict, 5 unavailable, "
    "6 attention (would change something / problems found), 7 still in doubt (recover)"
)


def _run(fn: Any) -> Any:
    """Run an ops command, turning OpsError into the CLI's CliError (same exit codes)."""

    def run(args: argparse.Namespace) -> int:

        try:
            return int(fn(args))
        except OpsError as e:
            raise CliError(e.code, str(e)) from None

    return run


def _coordinator_urls(args: argparse.Namespace) -> str:
    return str(args.coordinator_url or args.url)


# -- recover ------------------------------------------------------------------------------------


def cmd_recover(args: argparse.Namespace) -> int:
    from coordinator.ops.recover import recover

    res = recover(
        args.participant,
        args.database_url,
        _coordinator_urls(args),
        token=args.token or None,
        apply=args.apply,
        participant_token=args.participant_token or None,
    )
    res.database = redact(res.database)
    data = res.to_dict()
    rows = [
        [
            i["txid"],
            "yes" if i["prepared"] else "no",
            i["record_state"] or "-",
            i["outcome"] or "-",
            i["action"],
            i["note"] + (f": {i['error']}" if i["error"] else ""),
        ]
        for i in data["items"]
    ]
    mode = "dry run (nothing changed; --apply to resolve)" if res.dry_run else "applied"
    lines = [f"participant {res.participant} at {res.database}; coordinator {res.coordinator}"]
    lines.append(f"{mode}: {len(rows)} in-doubt transaction(s)")
    if rows:
        lines += [
            "",
            table(rows, ["TXID", "PREPARED", "RECORD", "OUTCOME", "ACTION", "WHAT"]),
        ]
    if res.other_gids:
        lines += [
            "",
            f"note: {len(res.other_gids)} prepared transaction(s) here belong to other "
            "participants: " + ", ".join(res.other_gids[:5]),
        ]
    if res.truncated:
        lines.append("note: more candidates than one pass looks at; run again")
    emit(args, data, "\n".join(lines))
    return res.exit_code()


# -- audit --------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from coordinator.ops.audit import audit

    res = audit(
        args.participant,
        _coordinator_urls(args),
        token=args.token or None,
        since_s=args.since,
        grace_s=args.grace,
    )
    lines = [f"coordinator {res.coordinator}"]
    rows = []
    for p in res.participants:
        lines.append(
            f"{p.participant} ({p.database}): {p.checked} transaction(s) checked, "
            f"{len(p.findings)} finding(s), {p.problems} problem(s)"
        )
        rows += [
            [
                f.participant,
                f.txid,
                f.kind,
                "yes" if f.problem else "no (in flight)",
                f.local,
                f.coordinator,
                age(f.since),
                f.detail,
            ]
            for f in p.findings
        ]
    if rows:
        lines += [
            "",
            table(
                rows,
                ["PARTICIPANT", "TXID", "KIND", "PROBLEM", "HERE", "COORDINATOR", "AGE", "DETAIL"],
            ),
        ]
    lines += ["", "clean" if res.problems == 0 else f"{res.problems} problem(s) found"]
    emit(args, res.to_dict(), "\n".join(lines))
    return res.exit_code()


# -- raft ---------------------------------------------------------------------------------------


def cmd_raft_log(args: argparse.Namespace) -> int:
    from coordinator.ops.raftinspect import read_log

    res = read_log(args.database_url, args.start, args.limit)
    rows = [[e["index"], e["term"], e["kind"], e["summary"]] for e in res["entries"]]
    head = (
        f"log of {res['database']}: entries {res['first_index'] or '-'}..{res['last_index'] or '-'}"
        f" ({res['entries_stored']} stored), snapshot at {res['snapshot_index'] or '-'}"
    )
    emit(args, res, head + "\n\n" + table(rows, ["INDEX", "TERM", "KIND", "CONTENT"]))
    return 0


def cmd_raft_state(args: argparse.Namespace) -> int:
    from coordinator.ops.raftinspect import read_state, state_exit_code

    st = read_state(args.database_url)
    hs, ap, sn, lg = st["hard_state"], st["applied"], st["snapshot"], st["log"]
    lines = [f"node database {st['database']}: {st['mode']}"]
    if hs:
        lines.append(
            f"hard state: term {hs['term']}, vote {hs['vote']}, commit {hs['commit_index']}"
        )
    else:
        lines.append("hard state: none")
    lines.append(
        f"applied:    {ap['last_applied']} (term {ap['last_applied_term']})" if ap else "applied: -"
    )
    if sn:
        conf = sn["config"]
        lines.append(
            f"snapshot:   index {sn['index']}, term {sn['term']}, voters {conf.get('voters')}, "
            f"learners {conf.get('learners')}, {sn['data_bytes']} bytes"
        )
    else:
        lines.append("snapshot:   none")
    lines.append(
        f"log:        {lg['entries']} entries, {lg['first_index'] or '-'}.."
        f"{lg['last_index'] or '-'} (last term {lg['last_term'] or '-'})"
    )
    members = ", ".join(f"{k}={v}" for k, v in st["members"].items()) or "-"
    lines.append(f"members:    {members}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st["transactions"].items())) or "none"
    lines.append(f"transactions: {counts}; timeline rows {st['history_rows']}")
    ret = st.get("retention")
    if ret is not None:
        lines.append(
            f"retention:  tombstones {ret['tombstones']}"
            + (
                f" (+{ret['purged_tombstones']} purged, awaiting deletion)"
                if ret["purged_tombstones"]
                else ""
            )
            + f", horizon {ret['tombstone_horizon'] or '-'}; history (forgotten "
            f"transactions) {ret['history_rows']}"
        )
    lines.append("")
    if st["problems"]:
        lines += ["PROBLEMS:", *(f"- {p}" for p in st["problems"])]
    else:
        lines.append("consistent")
    emit(args, st, "\n".join(lines))
    return state_exit_code(st)


# -- backup / restore ---------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    from coordinator.ops.backup import take_backup

    summary = take_backup(args.database_url, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items())) or "none"
    emit(
        args,
        summary,
        f"backup of {summary['database']} ({summary['mode']}) at applied index "
        f"{summary['applied_index']} written to {args.out}\n"
        f"transactions: {counts}; tombstones {summary['tombstones']}; history (forgotten "
        f"transactions) {summary['archive_rows']}; timeline rows {summary['history_rows']}",
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from coordinator.ops.backup import restore

    res = restore(args.database_url, args.input, node_id=args.node_id, peers=args.peers)
    lines = [
        f"restored {res['transactions']} transaction(s), {res['tombstones']} tombstone(s), "
        f"{res['archive_rows']} forgotten transaction(s) of the history and "
        f"{res['history_rows']} timeline row(s) into {res['database']} at applied index "
        f"{res['applied_index']} ({res['mode']}; backup taken {res['backup_created_at']})",
    ]
    if res["mode"] == "raft-seed":
        peers = ",".join(f"{k}={v}" for k, v in res["members"].items())
        lines.append(f"start the founding nodes with TXC_PEERS={peers}")
    else:
        lines.append("start a standalone node on it (no TXC_PEERS)")
    if res["in_flight"]:
        lines.append(
            f"{res['in_flight']} transaction(s) were in flight in the backup: the node resumes "
            "them (undecided ones abort when they expire; decided ones finish phase 2)"
        )
    lines.append(
        "if anything may have been decided after the backup was taken, run `txc audit` "
        "against every participant before serving traffic"
    )
    emit(args, res, "\n".join(lines))
    return 0


# -- the parser ---------------------------------------------------------------------------------

RECOVER_HELP = """\
Find the prepared transactions a participant built with participant_sdk holds in its
database (gids txc:<NAME>:<txid> in pg_prepared_xacts, and SDK records in state 'prepared'),
find out each one's outcome, and show what resolving them does: COMMIT PREPARED, ROLLBACK
PREPARED, or leave it prepared while the transaction is undecided. Nothing changes without
--apply.

The dry run reads GET /v1/transactions/{txid}; it never asks /outcome, so it changes
nothing at the coordinator either. --apply asks GET /v1/transactions/{txid}/outcome, as the
participant itself does: for a transaction the coordinator has no record of, that answer is
ABORT and it is first made durable (presumed abort), so a late commit can never contradict
it. Prepared work without an SDK record (the process died between PREPARE TRANSACTION and
enlisting) is rolled back without asking. Safe to run while the participant runs: every
step takes the SDK's per-transaction lock and re-checks.

A MariaDB/MySQL participant (--database-url mysql://, mariadb:// or mysql+pymysql://): its XA
branches in XA RECOVER (gtrid txc:<txid>, bqual <NAME>) instead of gids, resolved with
XA COMMIT / XA ROLLBACK.
"""

AUDIT_HELP = """\
Compare, for each participant database, the SDK's records and prepared transactions with the
coordinator's transactions that enlisted it. Reports orphans (prepared here, but unknown or
aborted at the coordinator, or not enlisted), mismatches (a participant outcome that
contradicts the decision: heuristic; or committed work the coordinator has no record of),
work still in doubt, transactions whose phase 2 the coordinator is still driving, and
acknowledged commits the participant has no record of (missing). Read-only: participant
databases through read-only connections, the coordinator through GETs only. Findings younger
than --grace are listed as in flight and do not count as problems.
"""

RESTORE_HELP = """\
Restore a `txc backup` file into an EMPTY node database (refused otherwise): runs the
coordinator migrations, then writes the applied state in one transaction. Default: a
standalone node (applied index N, one marker log entry at N; the node continues at N+1).
With --peers: Raft snapshot form, to seed the founding nodes of a NEW group (restore the
same file into each founding node's empty database, start them with TXC_PEERS = --peers).
Never restore into a node that rejoins an existing group: add it fresh with
`txc cluster add-node` (empty database, TXC_JOIN=true); it catches up by snapshot. A backup
does not know decisions made after it was taken: run `txc audit` before serving traffic
when that may be the case.
"""


def register(sub: Any) -> None:
    """Add the operator subcommands to `txc`'s subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    rc = sub.add_parser(
        "recover",
        help="resolve a participant database's in-doubt prepared transactions (dry run first)",
        description=RECOVER_HELP,
        epilog=EXIT_CODES_HELP
        + ". recover: 6 = the dry run would change something, 7 = work left pending",
        formatter_class=fmt,
    )
    rc.add_argument("--participant", required=True, help="the participant's name (its gid prefix)")
    rc.add_argument(
        "--database-url", required=True, help="the participant's database (SQLAlchemy URL)"
    )
    rc.add_argument(
        "--coordinator-url",
        default=None,
        help="coordinator node URL(s), comma-separated (default: --url / TXC_URL)",
    )
    rc.add_argument(
        "--apply", action="store_true", help="resolve (default: dry run, change nothing)"
    )
    rc.add_argument(
        "--participant-token",
        default=os.environ.get("TXC_PARTICIPANT_TOKEN", ""),
        help="the participant's own secret (TXC_PARTICIPANT_TOKEN): --apply then asks the "
        "outcomes signed as the participant and accepts only answers the coordinator signed",
    )
    rc.set_defaults(func=_run(cmd_recover))

    au = sub.add_parser(
        "audit",
        help="reconcile the coordinator's decisions with what participants hold (read-only)",
        description=AUDIT_HELP,
        epilog=EXIT_CODES_HELP + ". audit: 0 = clean, 6 = problems found",
        formatter_class=fmt,
    )
    au.add_argument(
        "--participant",
        action="append",
        required=True,
        metavar="NAME=DATABASE_URL",
        help="a participant and its database; repeat for each participant",
    )
    au.add_argument(
        "--coordinator-url",
        default=None,
        help="coordinator node URL(s), comma-separated (default: --url / TXC_URL)",
    )
    au.add_argument(
        "--since",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only transactions created (coordinator) or records updated (participant) in "
        "the last SECONDS; prepared work is always checked (default: everything)",
    )
    au.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("TXC_AUDIT_GRACE_S", 60.0)),
        metavar="SECONDS",
        help="in-doubt, orphan and phase-2 findings younger than this are in flight, not "
        "problems (default 60)",
    )
    au.set_defaults(func=_run(cmd_audit))

    rf = sub.add_parser("raft", help="inspect a node's Raft log and state from its database")
    rf_sub = rf.add_subparsers(dest="raft_command", required=True)
    lg = rf_sub.add_parser(
        "log",
        help="decoded log entries (read-only)",
        description="Decode a node's log rows: index, term, kind, and what they carry (2PC "
        "commands, member addresses, membership changes, leader no-ops).",
        epilog=EXIT_CODES_HELP,
    )
    lg.add_argument("--database-url", required=True, help="the node's database")
    lg.add_argument(
        "--from",
        dest="start",
        type=int,
        default=None,
        metavar="N",
        help="first index to show (default: the last --limit entries)",
    )
    lg.add_argument("--limit", type=int, default=50, metavar="N", help="entries (default 50)")
    lg.set_defaults(func=_run(cmd_raft_log))
    st = rf_sub.add_parser(
        "state",
        help="hard state, applied index, snapshot, log bounds, members; consistency checks",
        description="Read a node's hard state (term, vote, commit), applied index, snapshot "
        "metadata, log bounds and members, and check what its start-up relies on.",
        epilog=EXIT_CODES_HELP + ". raft state: 6 = an inconsistency was found",
    )
    st.add_argument("--database-url", required=True, help="the node's database")
    st.set_defaults(func=_run(cmd_raft_state))

    bk = sub.add_parser(
        "backup",
        help="write a node's applied state to a versioned JSON file (read-only on the node)",
        description="Back up a node's applied state (transactions, tombstones and their "
        "horizon, the node's history of forgotten transactions, timelines, members, applied "
        "index, snapshot metadata) in one consistent read, streamed to the file. Safe on a "
        "running node.",
        epilog=EXIT_CODES_HELP,
    )
    bk.add_argument("--database-url", required=True, help="the node's database")
    bk.add_argument("--out", required=True, metavar="FILE", help="where to write the backup")
    bk.set_defaults(func=_run(cmd_backup))

    rs = sub.add_parser(
        "restore",
        help="restore a backup into an EMPTY node database (standalone, or seeding a new group)",
        description=RESTORE_HELP,
        epilog=EXIT_CODES_HELP + ". restore: 4 = the database is not empty",
        formatter_class=fmt,
    )
    rs.add_argument("--database-url", required=True, help="an empty database for the node")
    rs.add_argument(
        "--in", dest="input", required=True, metavar="FILE", help="a file `txc backup` wrote"
    )
    rs.add_argument(
        "--node-id", default="node1", help="standalone: the node's id (TXC_NODE_ID; default node1)"
    )
    rs.add_argument(
        "--peers",
        default=None,
        metavar="ID=URL,...",
        help="seed a NEW Raft group with these founding members (the TXC_PEERS they start with)",
    )
    rs.set_defaults(func=_run(cmd_restore))
