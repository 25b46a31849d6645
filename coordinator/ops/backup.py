"""`txc backup` and `txc restore`: the applied state of a node as a versioned JSON document.

## What a backup holds

One consistent moment (one REPEATABLE READ READ ONLY transaction) of a node's applied state:
every transaction record (`txc_transactions.doc`), their timelines (`txc_history`), the
member addresses (`txc_members`), the applied index and term, the snapshot's metadata and the
hard state (for information). On a Raft group, back up the leader's database: every node's
applied state is a consistent prefix of the group's, the leader's is the most recent (a running
Raft node's database holds it as of its last checkpoint, at most about a second behind what
it has applied: coordinator/checkpoint.py). Not the
Raft log: the log is how the state was reached, the applied state is what it is. A SHA-256
digest over the content lets `restore` refuse a damaged or edited file.

## What restore writes

`restore` runs the coordinator migrations on an *empty* database (it refuses one that holds
any coordinator state, and re-checks under table locks in the transaction that writes) and
writes the applied state in one transaction, at an index N = max(applied index of the
backup, highest timeline index) so the restored timelines never collide with new entries:

- standalone (the default): `txc_applied` = N, a hard state (term 1, vote `--node-id`,
  commit N), and one log row at index N of kind `empty` whose data says it marks a restore.
  A standalone node starts when its last log index equals `last_applied` (SingleNodeLog.start):
  here both are N, and its next command gets index N+1.
- seeding a new Raft group (`--peers "1=url,2=url,3=url"`): Raft snapshot form: a
  `txc_snapshot` row (index N, term 1, voters = the peers' ids, data = the applied state in
  the snapshot format of `Store.dump`, with the new members' addresses), hard state (term 1,
  no vote, commit N), `txc_applied` = N, no log rows, and `txc_members` = the peers. A Raft
  node loads that as a node that compacted its log at N (raft/storage.py `load`); run the
  same restore, from the same file, into each founding node's empty database, then start
  the nodes with `TXC_PEERS` equal to `--peers`. Or restore one node with a one-member
  `--peers`, start it, and add the others with `txc cluster add-node` (they catch up by
  snapshot).

## What it is safe for

A backup is only as recent as the moment it was taken. A coordinator restored from it does
not know the decisions made after that moment; a participant still in doubt about one of
them would be told ABORT (presumed abort) while others may already have committed. So:

- SAFE: moving a node's state to a new database or server (stop the node or the whole group,
  back up, restore, start on the new database); rebuilding a lost standalone node or a lost
  group from the latest backup *when nothing happened after it* (check with `txc audit`);
  seeding a new group from a standalone node's state (or the reverse); forensics (restore
  into a scratch database and inspect it, with no participant pointed at it).
- NOT SAFE: restoring into a node that rejoins an existing group. Its applied state would
  not match the group's log, and Raft would not repair it. Add it fresh instead: an empty
  database, `TXC_JOIN=true`, `txc cluster add-node ID URL`; it catches up by snapshot.
- After any restore that may be older than the last decision, run `txc audit` against every
  participant before serving traffic: work committed at a participant for a transaction the
  restored coordinator does not know shows up as a `mismatch`.

Transactions that were in flight in the backup are resumed by the restored node like after
any restart: undecided ones abort when they expire, decided ones are driven through phase 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

from coordinator import migrate, schema
from coordinator.model import Transaction
from coordinator.ops.common import OpsError, iso, make_engine, read_node, redact, sync_url
from coordinator.raft.messages import ConfState
from coordinator.store import _row as transaction_row

FORMAT = "txc-backup"
VERSION = 1
RESTORE_TERM = 1  # the term of the restored state (a new node, or a new group's first term)
INSERT_CHUNK = 1000
COORDINATOR_TABLES = (
    "txc_log",
    "txc_hard_state",
    "txc_applied",
    "txc_snapshot",
    "txc_transactions",
    "txc_history",
    "txc_members",
)


def _digest(content: dict[str, Any]) -> str:
    blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# -- backup -------------------------------------------------------------------------------------


def take_backup(database_url: str) -> dict[str, Any]:
    h = schema.history.c
    with read_node(database_url, check_table="txc_transactions") as conn:
        hs = conn.execute(select(schema.hard_state)).first()
        ap = conn.execute(select(schema.applied_state)).first()
        sn = conn.execute(
            select(
                schema.snapshot_meta.c.index,
                schema.snapshot_meta.c.term,
                schema.snapshot_meta.c.config,
            )
        ).first()
        last_log = conn.execute(select(func.max(schema.log_entries.c.index))).scalar()
        members = [
            {"id": int(r[0]), "url": str(r[1])}
            for r in conn.execute(
                select(schema.members.c.id, schema.members.c.url).order_by(schema.members.c.id)
            ).all()
        ]
        txns = [
            r[0]
            for r in conn.execute(
                select(schema.transactions.c.doc).order_by(schema.transactions.c.txid)
            ).all()
        ]
        history = [
            {
                "txid": r.txid,
                "index": r._mapping["index"],
                "seq": r.seq,
                "at": r.at,
                "kind": r.kind,
                "detail": r.detail,
            }
            for r in conn.execute(
                select(h.txid, h.index, h.seq, h.at, h.kind, h.detail).order_by(
                    h.index, h.seq, h.txid
                )
            ).all()
        ]
    vote = hs.vote if hs is not None else None
    mode = "standalone" if vote is not None and not str(vote).isdigit() else "raft"
    content = {"transactions": txns, "history": history, "members": members}
    counts: dict[str, int] = {}
    for d in txns:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": iso(time.time()),
        "source": {
            "database": redact(database_url),
            "mode": mode,
            "hard_state": (
                {"term": hs.term, "vote": hs.vote, "commit_index": hs.commit_index} if hs else None
            ),
            "last_log_index": last_log,
        },
        "applied": {
            "index": ap.last_applied if ap else 0,
            "term": ap.last_applied_term if ap else 0,
        },
        "snapshot": ({"index": sn[0], "term": sn[1], "config": sn[2]} if sn is not None else None),
        "counts": counts,
        "digest": _digest(content),
        **content,
    }


def write_backup(doc: dict[str, Any], out: str) -> None:
    """Write atomically: a partial file never has the final name."""
    path = Path(out)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- restore ------------------------------------------------------------------------------------


def read_backup(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise OpsError(3, f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise OpsError(1, f"{path} is not a JSON document: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise OpsError(1, f"{path} is not a txc backup (format {FORMAT!r} expected)")
    if doc.get("version") != VERSION:
        raise OpsError(
            1, f"{path} is a version {doc.get('version')} backup; this txc reads version {VERSION}"
        )
    content = {k: doc.get(k) for k in ("transactions", "history", "members")}
    if doc.get("digest") != _digest(content):
        raise OpsError(1, f"{path}: digest mismatch: the file is damaged or was edited")
    for d in doc["transactions"]:
        try:
            Transaction.from_dict(d)
        except Exception as e:
            raise OpsError(1, f"{path}: invalid transaction record {d.get('txid')!r}: {e}") from e
    return doc


def parse_peers(peers: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for item in filter(None, (p.strip() for p in peers.split(","))):
        key, sep, url = item.partition("=")
        key = key.strip()
        if (
            not sep
            or not key.isdigit()
            or int(key) < 1
            or not url.startswith(("http://", "https://"))
        ):
            raise OpsError(2, f"--peers: expected id=http(s)://host:port,..., got {item!r}")
        out[int(key)] = url.strip().rstrip("/")
    if not out:
        raise OpsError(2, "--peers is empty")
    return out


def _existing_state(conn: Connection) -> list[str]:
    """The coordinator tables that hold rows (empty list: the database may be restored into)."""
    found = []
    for table in COORDINATOR_TABLES:
        if conn.execute(text(f"SELECT to_regclass('{table}')")).scalar() is None:
            continue
        if conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {table})")).scalar():
            found.append(table)
    return found


def _refuse_if_not_empty(conn: Connection, url: str) -> None:
    found = _existing_state(conn)
    if found:
        raise OpsError(
            4,
            f"refusing to restore into {redact(url)}: it already holds coordinator state "
            f"({', '.join(found)}). Restore only into an empty database; a node that rejoins "
            "a group must be added fresh (txc cluster add-node) and catch up by snapshot.",
        )
    if conn.execute(text("SELECT to_regclass('txc_participant_record')")).scalar() is not None:
        raise OpsError(4, f"refusing to restore into {redact(url)}: it is a participant's database")


def restore(
    database_url: str,
    path: str,
    *,
    node_id: str = "node1",
    peers: str | None = None,
) -> dict[str, Any]:
    doc = read_backup(path)
    members = parse_peers(peers) if peers else None
    url = sync_url(database_url)
    engine = make_engine(url, read_only=False)
    try:
        try:
            with engine.connect() as conn:
                _refuse_if_not_empty(conn, url)
            migrate.upgrade(url, "coordinator")
            with engine.begin() as conn:
                # Nothing may start on this database while it is being restored.
                conn.execute(
                    text(f"LOCK TABLE {', '.join(COORDINATOR_TABLES)} IN ACCESS EXCLUSIVE MODE")
                )
                _refuse_if_not_empty(conn, url)
                index = _write(conn, doc, node_id=node_id, members=members)
        except DBAPIError as e:
            raise OpsError(5, f"cannot write the database: {e.orig}") from None
    finally:
        engine.dispose()
    inflight = sum(n for s, n in doc["counts"].items() if s not in ("committed", "aborted"))
    return {
        "database": redact(database_url),
        "backup": path,
        "backup_created_at": doc.get("created_at"),
        "mode": "raft-seed" if members else "standalone",
        "applied_index": index,
        "transactions": len(doc["transactions"]),
        "history_rows": len(doc["history"]),
        "in_flight": inflight,
        "members": {str(k): v for k, v in sorted(members.items())} if members else None,
    }


def _insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), INSERT_CHUNK):
        conn.execute(table.insert(), rows[i : i + INSERT_CHUNK])


def _write(
    conn: Connection, doc: dict[str, Any], *, node_id: str, members: dict[int, str] | None
) -> int:
    txns = [Transaction.from_dict(d) for d in doc["transactions"]]
    _insert(conn, schema.transactions, [transaction_row(t) for t in txns])
    _insert(conn, schema.history, list(doc["history"]))
    max_history = max((int(h["index"]) for h in doc["history"]), default=0)
    index = max(int(doc["applied"]["index"]), max_history)
    marker = {
        "restored_from": doc.get("created_at"),
        "source": doc.get("source", {}).get("database"),
        "applied_index": doc["applied"]["index"],
    }
    if members is None:
        conn.execute(
            schema.hard_state.insert().values(
                id=1, term=RESTORE_TERM, vote=node_id, commit_index=index
            )
        )
        if index > 0:
            conn.execute(
                schema.log_entries.insert().values(
                    index=index,
                    term=RESTORE_TERM,
                    kind="empty",
                    data=json.dumps(marker).encode(),
                )
            )
    else:
        index = max(index, 1)  # a snapshot at 0 would mean "no snapshot"
        conf = ConfState(frozenset(members))
        data = json.dumps(
            {
                "transactions": [t.to_dict() for t in sorted(txns, key=lambda t: t.txid)],
                "members": {str(k): v for k, v in sorted(members.items())},
            }
        ).encode()
        conn.execute(
            schema.snapshot_meta.insert().values(
                id=1, index=index, term=RESTORE_TERM, config=conf.to_dict(), data=data
            )
        )
        conn.execute(
            schema.hard_state.insert().values(id=1, term=RESTORE_TERM, vote="0", commit_index=index)
        )
        _insert(conn, schema.members, [{"id": k, "url": v} for k, v in sorted(members.items())])
    conn.execute(
        schema.applied_state.insert().values(
            id=1, last_applied=index, last_applied_term=RESTORE_TERM
        )
    )
    return index
