"""`txc backup` and `txc restore`: the applied state of a node as a versioned JSON file.

## What a backup holds

One consistent moment (one REPEATABLE READ READ ONLY transaction) of a node's applied state:
the replicated state complete (every transaction record, `txc_transactions.doc`; every
tombstone that is not purged, `txc_tombstones`; the tombstone horizon), this node's own
history (the full records of forgotten transactions, `txc_archive`, and the timelines,
`txc_history`), the member addresses (`txc_members`), the applied index and term, the
snapshot's metadata and the hard state (for information). Without the tombstones a restored
group would answer "unknown, so presumed abort" for a transaction that committed and was
forgotten (coordinator/retention.py); without the history an operator would lose the old
transactions `txc show` and the dashboard find. On a Raft group, back up the leader's
database: every node's applied state is a consistent prefix of the group's, the leader's is
the most recent (a running Raft node's database holds it as of its last checkpoint, at most
about a second behind what it has applied: coordinator/checkpoint.py). Not the Raft log: the
log is how the state was reached, the applied state is what it is.

## The file (version 2)

JSON Lines, so that neither taking nor restoring a backup ever holds a table whole (the
history keeps `history_retention_days` of transactions): line 1 is the header (format,
version, source, applied index, counts by state, members, tombstone horizon); then lines
`{"section": S, "rows": [...]}` of at most CHUNK_ROWS rows each, the sections in the order
of SECTIONS; the last line is `{"end": {"rows": {S: n, ...}}, "digest": "sha256:..."}`,
the SHA-256 of every byte before it, which lets `restore` refuse a damaged, truncated or
edited file. Rows: a transaction is its record; a timeline row is
{txid, index, seq, at, kind, detail}; a tombstone is [txid, outcome, created_at, decided_at,
completed_at, forgotten_at] (the snapshot's form, coordinator/store.py `dump`); a history
row is {forgotten_at, doc}. Version 1 files (one JSON document without tombstones, horizon
or history, from before retention) are still read and restored.

## What restore writes

`restore` runs the coordinator migrations on an *empty* database (it refuses one that holds
any coordinator state, and re-checks under table locks in the transaction that writes) and
writes the applied state in one transaction, at an index N = max(applied index of the
backup, highest timeline index) so the restored timelines never collide with new entries:

- standalone (the default): `txc_applied` = N (with the tombstone horizon), a hard state
  (term 1, vote `--node-id`, commit N), and one log row at index N of kind `empty` whose data
  says it marks a restore. A standalone node starts when its last log index equals
  `last_applied` (SingleNodeLog.start): here both are N, and its next command gets index N+1.
- seeding a new Raft group (`--peers "1=url,2=url,3=url"`): Raft snapshot form: a
  `txc_snapshot` row (index N, term 1, voters = the peers' ids, data = the replicated state
  in the snapshot format of `Store.dump`: records, tombstones, horizon, and the new members'
  addresses), hard state (term 1, no vote, commit N), `txc_applied` = N, no log rows, and
  `txc_members` = the peers. A Raft node loads that as a node that compacted its log at N
  (raft/storage.py `load`); run the same restore, from the same file, into each founding
  node's empty database (each gets the history too), then start the nodes with `TXC_PEERS`
  equal to `--peers`. Or restore one node with a one-member `--peers`, start it, and add the
  others with `txc cluster add-node` (they catch up by snapshot, without the history).

The file is read twice: once to check it whole (digest, row counts, every record) before
the database is touched, once to write it; the second reading checks the digest again, and a
file that changed in between rolls the restore back.

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
Tombstones and history rows age from their `forgotten_at` as on the node they came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import Connection, func, select, text
from sqlalchemy.exc import DBAPIError

from coordinator import migrate, schema, snapshot_codec
from coordinator.model import Outcome, Transaction
from coordinator.ops.common import OpsError, iso, make_engine, read_node, redact, sync_url
from coordinator.raft.messages import ConfState
from coordinator.store import _archive_row as archive_row
from coordinator.store import _row as transaction_row

FORMAT = "txc-backup"
VERSION = 2
READABLE_VERSIONS = (1, 2)
RESTORE_TERM = 1  # the term of the restored state (a new node, or a new group's first term)
INSERT_CHUNK = 1000
# Rows one line of a version-2 file holds: what a backup reads from its server-side cursor
# at a time, and a restore inserts per statement.
CHUNK_ROWS = 1000
SECTIONS = ("transactions", "history", "tombstones", "archive")
TOMBSTONE_FIELDS = ("txid", "outcome", "created_at", "decided_at", "completed_at", "forgotten_at")
END_PREFIX = b'{"end"'
COORDINATOR_TABLES = (
    "txc_log",
    "txc_hard_state",
    "txc_applied",
    "txc_snapshot",
    "txc_transactions",
    "txc_tombstones",
    "txc_archive",
    "txc_history",
    "txc_members",
)
V1_CONTENT = ("transactions", "history", "members")


def _digest_v1(content: dict[str, Any]) -> str:
    blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


# -- backup -------------------------------------------------------------------------------------


def _exists(conn: Connection, table: str) -> bool:
    return conn.execute(text(f"SELECT to_regclass('{table}')")).scalar() is not None


def _sections(conn: Connection, horizon: float) -> Iterator[tuple[str, Any, Callable[[Any], Any]]]:
    """Each section's query, in file order, with what makes a file row of a result row."""
    t, h = schema.transactions.c, schema.history.c
    yield "transactions", select(t.doc).order_by(t.txid), lambda r: r[0]
    yield (
        "history",
        select(h.txid, h.index, h.seq, h.at, h.kind, h.detail).order_by(h.index, h.seq, h.txid),
        lambda r: {
            "txid": r[0],
            "index": r[1],
            "seq": r[2],
            "at": r[3],
            "kind": r[4],
            "detail": r[5],
        },
    )
    if _exists(conn, "txc_tombstones"):  # a node database from before retention has none
        tb = schema.tombstones.c
        yield (
            "tombstones",
            # Those under the horizon are purged: gone for every read, only not deleted yet.
            select(*(tb[f] for f in TOMBSTONE_FIELDS))
            .where(tb.forgotten_at >= horizon)
            .order_by(tb.txid),
            list,
        )
    if _exists(conn, "txc_archive"):
        a = schema.archive.c
        yield (
            "archive",
            select(a.forgotten_at, a.doc).order_by(a.forgotten_at, a.txid),
            lambda r: {"forgotten_at": r[0], "doc": r[1]},
        )


def take_backup(database_url: str, out: str) -> dict[str, Any]:
    """Write the backup of the node at `database_url` to `out` (atomically: a partial file
    never has the final name) and return its summary."""
    path = Path(out)
    tmp = path.with_name(path.name + ".partial")
    try:
        with read_node(database_url, check_table="txc_transactions") as conn, open(tmp, "wb") as f:
            summary = _write_backup(conn, database_url, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)
    return {"out": out, **summary}


def _write_backup(conn: Connection, database_url: str, f: IO[bytes]) -> dict[str, Any]:
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
    t = schema.transactions.c
    counts = {
        str(r[0]): int(r[1])
        for r in conn.execute(select(t.state, func.count()).group_by(t.state)).all()
    }
    horizon = float(getattr(ap, "tombstone_horizon", 0.0) or 0.0) if ap is not None else 0.0
    vote = hs.vote if hs is not None else None
    mode = "standalone" if vote is not None and not str(vote).isdigit() else "raft"
    header: dict[str, Any] = {
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
        "counts": dict(sorted(counts.items())),
        "members": members,
        "tombstone_horizon": horizon,
        "sections": list(SECTIONS),
    }
    digest = hashlib.sha256()

    def put(obj: Any) -> None:
        b = _line(obj)
        digest.update(b)
        f.write(b)

    put(header)
    rows = dict.fromkeys(SECTIONS, 0)
    for section, query, shape in _sections(conn, horizon):
        result = conn.execute(query.execution_options(yield_per=CHUNK_ROWS))
        for part in result.partitions():
            put({"section": section, "rows": [shape(r) for r in part]})
            rows[section] += len(part)
    final = "sha256:" + digest.hexdigest()
    f.write(_line({"end": {"rows": rows}, "digest": final}))
    return {
        "created_at": header["created_at"],
        "database": redact(database_url),
        "mode": mode,
        "applied_index": header["applied"]["index"],
        "transactions": rows["transactions"],
        "history_rows": rows["history"],
        "tombstones": rows["tombstones"],
        "archive_rows": rows["archive"],
        "tombstone_horizon": iso(horizon or None),
        "counts": header["counts"],
        "digest": final,
    }


# -- reading a backup ---------------------------------------------------------------------------


@dataclass
class Backup:
    """A checked backup file: its header, how many rows each section holds, and (for a
    version-1 file, which is one document) the document itself. `chunks` reads the rows."""

    path: str
    header: dict[str, Any]
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SECTIONS, 0))
    max_history_index: int = 0
    doc: dict[str, Any] | None = None

    @property
    def version(self) -> int:
        return int(self.header["version"])

    def chunks(self) -> Iterator[tuple[str, list[Any]]]:
        """(section, rows) in file order, at most CHUNK_ROWS rows at a time."""
        if self.doc is not None:
            for section in ("transactions", "history"):
                items = self.doc[section]
                for i in range(0, len(items), CHUNK_ROWS):
                    yield section, items[i : i + CHUNK_ROWS]
            return
        yield from _scan(self.path, self.header)


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as e:
        raise OpsError(3, f"cannot read {path}: {e}") from None


def _check_header(path: str, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise OpsError(1, f"{path} is not a txc backup (format {FORMAT!r} expected)")
    if doc.get("version") not in READABLE_VERSIONS:
        raise OpsError(
            1,
            f"{path} is a version {doc.get('version')} backup; this txc reads versions "
            + ", ".join(map(str, READABLE_VERSIONS)),
        )
    return doc


def _damaged(path: str, what: str) -> OpsError:
    return OpsError(1, f"{path}: {what}: the file is damaged or was edited")


def _scan(path: str, header: dict[str, Any] | None = None) -> Iterator[tuple[str, list[Any]]]:
    """The sections of a version-2 file, checked as they are read: the header (the same as
    `header` when given: a second reading), the order of the sections, the row counts and the
    digest. A problem raises OpsError, after the chunks read before it were yielded."""
    digest = hashlib.sha256()
    rows = dict.fromkeys(SECTIONS, 0)
    position = 0  # index in SECTIONS of the section being read
    with _open(path) as f:
        first = f.readline()
        try:
            doc = json.loads(first)
        except ValueError as e:
            raise OpsError(1, f"{path}: the header is not JSON: {e}") from None
        if header is not None and doc != header:
            raise OpsError(1, f"{path} changed while it was being restored")
        digest.update(first)
        n = 1
        for line in f:
            n += 1
            if line.startswith(END_PREFIX):
                end = _parse(path, n, line)
                if f.read(1):
                    raise _damaged(path, f"data after the end (line {n})")
                if end.get("digest") != "sha256:" + digest.hexdigest():
                    raise _damaged(path, "digest mismatch")
                if end.get("end", {}).get("rows") != rows:
                    raise _damaged(path, "row counts mismatch")
                return
            digest.update(line)
            chunk = _parse(path, n, line)
            section = chunk.get("section") if isinstance(chunk, dict) else None
            if section not in SECTIONS or SECTIONS.index(section) < position:
                raise _damaged(path, f"unexpected section {section!r} at line {n}")
            position = SECTIONS.index(section)
            items = chunk.get("rows")
            if not isinstance(items, list):
                raise _damaged(path, f"no rows at line {n}")
            rows[section] += len(items)
            yield section, items
    raise _damaged(path, "it ends before its last line (truncated)")


def _parse(path: str, n: int, line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        raise _damaged(path, f"line {n} is not JSON") from None


def _check_rows(path: str, section: str, rows: list[Any]) -> None:
    """Every row restore will write is one it can write."""
    for r in rows:
        try:
            if section == "transactions":
                Transaction.from_dict(r)
            elif section == "archive":
                Transaction.from_dict(r["doc"])
                float(r["forgotten_at"])
            elif section == "tombstones":
                assert isinstance(r, list) and len(r) == len(TOMBSTONE_FIELDS)
                Outcome(r[1])
                for v in r[2:]:
                    float(v)
            elif section == "history":
                int(r["index"])
        except Exception as e:
            what = r.get("txid") if isinstance(r, dict) else r
            raise OpsError(
                1, f"{path}: invalid {section} row {what!r}: {type(e).__name__}: {e}"
            ) from e


def read_backup(path: str) -> Backup:
    """Check a backup file whole (format, version, digest, every row) and return it."""
    with _open(path) as f:
        first = f.readline()
        try:
            head = json.loads(first)
            rest_is_empty = not f.read(1).strip()
        except ValueError:
            head, rest_is_empty = None, False
    if head is None or (isinstance(head, dict) and head.get("version") == 1 and not rest_is_empty):
        # Not one document per line: a version-1 file someone re-formatted (its digest is
        # over its content, so that is allowed), or not a backup at all.
        try:
            with _open(path) as f:
                head = json.load(f)
        except ValueError as e:
            raise OpsError(1, f"{path} is not a JSON document: {e}") from None
    head = _check_header(path, head)
    if head["version"] == 1:
        return _read_v1(path, head)
    backup = Backup(path, head)
    for section, rows in _scan(path):
        _check_rows(path, section, rows)
        backup.rows[section] += len(rows)
        if section == "history":
            backup.max_history_index = max(
                backup.max_history_index, max((int(r["index"]) for r in rows), default=0)
            )
    return backup


def _read_v1(path: str, doc: dict[str, Any]) -> Backup:
    content = {k: doc.get(k) for k in V1_CONTENT}
    if doc.get("digest") != _digest_v1(content):
        raise OpsError(1, f"{path}: digest mismatch: the file is damaged or was edited")
    for section in ("transactions", "history"):
        if not isinstance(doc[section], list):
            raise _damaged(path, f"no {section}")
        _check_rows(path, section, doc[section])
    header = {k: v for k, v in doc.items() if k not in ("transactions", "history")}
    header["tombstone_horizon"] = 0.0
    backup = Backup(path, header, doc=doc)
    backup.rows.update(transactions=len(doc["transactions"]), history=len(doc["history"]))
    backup.max_history_index = max((int(h["index"]) for h in doc["history"]), default=0)
    return backup


# -- restore ------------------------------------------------------------------------------------


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
        if not _exists(conn, table):
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
    if _exists(conn, "txc_participant_record"):
        raise OpsError(4, f"refusing to restore into {redact(url)}: it is a participant's database")


def restore(
    database_url: str,
    path: str,
    *,
    node_id: str = "node1",
    peers: str | None = None,
) -> dict[str, Any]:
    backup = read_backup(path)
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
                index = _write(conn, backup, node_id=node_id, members=members)
        except DBAPIError as e:
            raise OpsError(5, f"cannot write the database: {e.orig}") from None
    finally:
        engine.dispose()
    counts = backup.header.get("counts", {})
    inflight = sum(n for s, n in counts.items() if s not in ("committed", "aborted"))
    horizon = float(backup.header.get("tombstone_horizon") or 0.0)
    return {
        "database": redact(database_url),
        "backup": path,
        "backup_created_at": backup.header.get("created_at"),
        "backup_version": backup.version,
        "mode": "raft-seed" if members else "standalone",
        "applied_index": index,
        "transactions": backup.rows["transactions"],
        "history_rows": backup.rows["history"],
        "tombstones": backup.rows["tombstones"],
        "archive_rows": backup.rows["archive"],
        "tombstone_horizon": iso(horizon or None),
        "in_flight": inflight,
        "members": {str(k): v for k, v in sorted(members.items())} if members else None,
    }


def _insert(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), INSERT_CHUNK):
        conn.execute(table.insert(), rows[i : i + INSERT_CHUNK])


class _SnapshotData:
    """The data of a seeded group's snapshot, `Store.dump`'s format, compressed as its rows
    stream by (records first, then tombstones: the file's order)."""

    def __init__(self) -> None:
        self.packer = snapshot_codec.Packer()
        self.packer.add(b'{"transactions":[')
        self.part = "transactions"
        self.empty = True

    def add(self, part: str, items: list[bytes]) -> None:
        if not items:
            return
        if part != self.part:
            assert (self.part, part) == ("transactions", "tombstones")
            self.packer.add(b'],"tombstones":[')
            self.part, self.empty = part, True
        self.packer.add((b"" if self.empty else b",") + b",".join(items))
        self.empty = False

    def finish(self, horizon: float, members: dict[int, str]) -> bytes:
        if self.part == "transactions":
            self.packer.add(b'],"tombstones":[')
        tail = {
            "tombstone_horizon": horizon,
            "members": {str(k): v for k, v in sorted(members.items())},
        }
        self.packer.add(b"]," + orjson.dumps(tail)[1:])
        return self.packer.finish()


def _write(
    conn: Connection, backup: Backup, *, node_id: str, members: dict[int, str] | None
) -> int:
    horizon = float(backup.header.get("tombstone_horizon") or 0.0)
    snapshot = _SnapshotData() if members is not None else None
    for section, rows in backup.chunks():
        if section == "transactions":
            txns = [Transaction.from_dict(d) for d in rows]
            _insert(conn, schema.transactions, [transaction_row(t) for t in txns])
            if snapshot is not None:
                snapshot.add(section, [orjson.dumps(t.to_dict()) for t in txns])
        elif section == "history":
            _insert(conn, schema.history, list(rows))
        elif section == "tombstones":
            _insert(
                conn,
                schema.tombstones,
                [dict(zip(TOMBSTONE_FIELDS, r, strict=True)) for r in rows],
            )
            if snapshot is not None:
                snapshot.add(section, [orjson.dumps(r) for r in rows])
        elif section == "archive":
            _insert(
                conn,
                schema.archive,
                [
                    archive_row(Transaction.from_dict(r["doc"]), float(r["forgotten_at"]))
                    for r in rows
                ],
            )
    index = max(int(backup.header["applied"]["index"]), backup.max_history_index)
    marker = {
        "restored_from": backup.header.get("created_at"),
        "source": backup.header.get("source", {}).get("database"),
        "applied_index": backup.header["applied"]["index"],
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
        assert snapshot is not None
        index = max(index, 1)  # a snapshot at 0 would mean "no snapshot"
        conf = ConfState(frozenset(members))
        conn.execute(
            schema.snapshot_meta.insert().values(
                id=1,
                index=index,
                term=RESTORE_TERM,
                config=conf.to_dict(),
                data=snapshot.finish(horizon, members),
            )
        )
        conn.execute(
            schema.hard_state.insert().values(id=1, term=RESTORE_TERM, vote="0", commit_index=index)
        )
        _insert(conn, schema.members, [{"id": k, "url": v} for k, v in sorted(members.items())])
    conn.execute(
        schema.applied_state.insert().values(
            id=1, last_applied=index, last_applied_term=RESTORE_TERM, tombstone_horizon=horizon
        )
    )
    return index
