"""The applied state, and the apply step that turns committed commands into it.

`apply_batch` is the pure step plus the reads it needs: it returns each command's result,
the transactions it changed and the timeline rows it adds. The in-memory view is
authoritative for everything applied: `inflight` holds every unfinished transaction (the
engine scans it for work without querying), `recent` the newest finished ones, and
`unflushed`/`flushing` whatever is applied but not yet in PostgreSQL. PostgreSQL holds the
applied state as of the last checkpoint (coordinator/checkpoint.py writes it, with
`last_applied`, in one transaction: DESIGN §7), so reads that go to the database (lists,
timelines, the audit trail) first ask for a checkpoint (`before_read`).
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import Text, and_, cast, func, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import batch_sql, schema, snapshot_codec
from coordinator.batch_sql import ApplyRows
from coordinator.commands import AuditNote, Begin, Command, Forget, PurgeTombstones
from coordinator.model import Outcome, Transaction, TxState, tombstone
from coordinator.pgconn import HotConnection
from coordinator.statemachine import Result, Status, apply, visible

T = TypeVar("T")

MAX_BATCH_LOOKUP = 1000  # txids fetched in one query when a batch touches cold transactions
# Finished transactions kept in memory (newest): a commit's answer, a client's or participant's
# read just after the end, and a repeated message are served without a query.
MAX_RECENT_FINISHED = 10_000
DUMP_BATCH_ROWS = 5000  # records a snapshot reads from its cursor at a time
TOMBSTONE_COLUMNS = ("txid", "outcome", "created_at", "decided_at", "completed_at", "forgotten_at")


def _tombstone_columns() -> list[Any]:
    """A tombstone's columns in the order `_tombstone_from` reads them."""
    return [schema.tombstones.c[name] for name in TOMBSTONE_COLUMNS]


_STATE_KEYS = frozenset({"transactions", "tombstones", "tombstone_horizon"})
_COPY_TOMBSTONES = f"COPY txc_tombstones ({', '.join(TOMBSTONE_COLUMNS)}) FROM STDIN"


@dataclass(frozen=True)
class LogEntry:
    """A committed log entry that carries a 2PC command."""

    index: int
    term: int
    command: Command
    seq: int = 0  # position of the command within its log entry (a Raft entry holds a batch)


@dataclass
class ListFilter:
    state: str | None = None
    label: tuple[str, str] | None = None
    participant: str | None = None
    min_age_s: float | None = None
    max_age_s: float | None = None
    limit: int = 50
    cursor: str | None = None


def encode_cursor(created_at: float, txid: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, txid]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        created_at, txid = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return float(created_at), str(txid)
    except (ValueError, TypeError) as e:
        raise ValueError("malformed cursor") from e


def filter_conditions(c: Any, f: ListFilter, now: float) -> list[Any]:
    """The WHERE terms of a listing, for any table with the record's columns (`state`,
    `labels`, `doc`, `created_at`, `txid`): the live records, or a node's history."""
    conds: list[Any] = []
    if f.state:
        conds.append(c.state == f.state)
    if f.label:
        conds.append(c.labels.contains({f.label[0]: f.label[1]}))
    if f.participant:
        conds.append(c.doc["participants"].contains([{"name": f.participant}]))
    if f.min_age_s is not None:
        conds.append(c.created_at <= now - f.min_age_s)
    if f.max_age_s is not None:
        conds.append(c.created_at >= now - f.max_age_s)
    if f.cursor:
        c_at, c_txid = decode_cursor(f.cursor)
        conds.append(or_(c.created_at < c_at, and_(c.created_at == c_at, c.txid < c_txid)))
    return conds


def page(items: list[T], limit: int, txn: Callable[[T], Transaction]) -> tuple[list[T], str | None]:
    """The first `limit` of `items` (read as `limit + 1`, newest first) and the cursor of
    the next page, if there is one."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    last = txn(items[-1])
    return items, encode_cursor(last.created_at, last.txid)


def fill_rows(rows: ApplyRows, txns: Iterable[Transaction]) -> ApplyRows:
    """Rows for the newest version of each changed transaction: a record for batch_sql's
    `txns` part (its whole record as `doc`), or for a forgotten one its tombstone and the
    removal of its record. Each txid lands in exactly one of the two (they touch disjoint
    rows of one statement)."""
    for t in txns:
        if t.forgotten_at is None:
            rows.transactions.append(_row(t))
        else:
            rows.tombstones.append(_tombstone_row(t))
            rows.forgotten.append(t.txid)
    return rows


def _tombstone_row(t: Transaction) -> dict[str, Any]:
    assert t.forgotten_at is not None and t.outcome is not None
    assert t.decided_at is not None and t.completed_at is not None
    return {
        "txid": t.txid,
        "outcome": t.outcome.value,
        "created_at": t.created_at,
        "decided_at": t.decided_at,
        "completed_at": t.completed_at,
        "forgotten_at": t.forgotten_at,
    }


def _tombstone_from(row: Sequence[Any]) -> Transaction:
    """A tombstone from (txid, outcome, created_at, decided_at, completed_at, forgotten_at)."""
    txid, outcome, created_at, decided_at, completed_at, forgotten_at = row
    return tombstone(txid, Outcome(outcome), created_at, decided_at, completed_at, forgotten_at)


def _archive_row(full: Transaction, forgotten_at: float) -> dict[str, Any]:
    """The history table's row of a record as it was when forgotten (coordinator/history.py)."""
    return {
        "txid": full.txid,
        "forgotten_at": forgotten_at,
        "state": full.state.value,
        "outcome": full.outcome.value if full.outcome else None,
        "created_at": full.created_at,
        "updated_at": full.updated_at,
        "labels": full.labels,
        "doc": full.to_dict(),
    }


def _row(t: Transaction) -> dict[str, Any]:
    return {
        "txid": t.txid,
        "state": t.state.value,
        "outcome": t.outcome.value if t.outcome else None,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "expires_at": t.expires_at,
        "heuristic": t.heuristic.value if t.heuristic else None,
        "labels": t.labels,
        "doc": t.to_dict(),
    }


def _audit_row(e: LogEntry, note: AuditNote) -> dict[str, Any]:
    return {
        "index": e.index,
        "seq": e.seq,
        "at": note.at,
        "actor": note.actor,
        "action": note.action,
        "txid": note.txid,
        "detail": note.detail,
    }


def _reads(cmd: Command) -> bool:
    """Whether applying `cmd` needs its transaction's current record. An audit note names no
    record. A Begin without an idempotency key names a txid the leader drew at random (uuid4,
    coordinator/engine.py `begin`), so no record can exist under it: looking it up cost a
    database round trip per applied batch on every node, in the Raft loop. A lazy begin
    (coordinator/engine.py `Carried`) is a keyless Begin whose txid the client chose: it is
    never proposed alone, always in one entry with commands that read the same txid, and
    `apply_batch` loads every txid any command of the batch reads, so it finds an existing
    record (e.g. a presumed abort) and does not overwrite it."""
    if isinstance(cmd, AuditNote | PurgeTombstones):
        return False
    return not (isinstance(cmd, Begin) and cmd.idempotency_key is None)


def _history_detail(cmd: Command, result: Result) -> dict[str, Any]:
    d = cmd.to_dict()
    for k in ("txid", "at", "type"):
        d.pop(k, None)
    d["status"] = result.status.value
    if result.message:
        d["message"] = result.message
    if result.txn is not None:
        d["state"] = result.txn.state.value
    return d


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Tombstones forgotten before this time are purged (replicated, like the records).
        self.tombstone_horizon = 0.0
        self.inflight: dict[str, Transaction] = {}
        # Committed, finished transactions, oldest first; at most MAX_RECENT_FINISHED.
        self.recent: OrderedDict[str, Transaction] = OrderedDict()
        # Applied, not yet written: the newest version of each transaction, and the timeline
        # and audit rows, in log order. `flushing` is what a checkpoint is writing now.
        self.unflushed: dict[str, Transaction] = {}
        self.unflushed_history: list[dict[str, Any]] = []
        self.unflushed_audit: list[dict[str, Any]] = []
        self.unflushed_archive: list[dict[str, Any]] = []
        self.flushing: dict[str, Transaction] = {}
        # Called before a read that the database answers, so that it sees everything
        # applied so far (the log sets it to its checkpoint's flush).
        self.before_read: Callable[[], Awaitable[object]] | None = None

    def _in_memory(self, txid: str) -> Transaction | None:
        t = (
            self.inflight.get(txid)
            or self.recent.get(txid)
            or self.unflushed.get(txid)
            or self.flushing.get(txid)
        )
        return visible(t, self.tombstone_horizon)

    async def sync(self) -> None:
        """Make the database hold everything applied so far (a checkpoint on a Raft node):
        for reads of tables that only checkpoints write (lists, timelines, history)."""
        if self.before_read is not None:
            await self.before_read()

    def _remember(self, t: Transaction) -> None:
        assert t.state.terminal
        self.recent[t.txid] = t
        self.recent.move_to_end(t.txid)
        while len(self.recent) > MAX_RECENT_FINISHED:
            self.recent.popitem(last=False)

    async def record_count(self) -> int:
        """How many records and tombstones the database holds (what a snapshot taken now
        would hold, give or take a checkpoint)."""
        records, tombstones = await self.counts()
        return records + tombstones

    async def counts(self) -> tuple[int, int]:
        """Records and (unpurged) tombstones in the database's replicated state."""
        tb = schema.tombstones.c
        async with self.engine.connect() as conn:
            records = await conn.scalar(select(func.count()).select_from(schema.transactions))
            tombs = await conn.scalar(
                select(func.count())
                .select_from(schema.tombstones)
                .where(tb.forgotten_at >= self.tombstone_horizon)
            )
        return int(records or 0), int(tombs or 0)

    async def oldest_tombstone(self) -> float | None:
        """When the oldest unpurged tombstone in the database was forgotten (index scan)."""
        tb = schema.tombstones.c
        async with self.engine.connect() as conn:
            oldest = await conn.scalar(
                select(func.min(tb.forgotten_at)).where(tb.forgotten_at >= self.tombstone_horizon)
            )
        return None if oldest is None else float(oldest)

    async def forgettable(self, finished_before: float, limit: int) -> list[str]:
        """Finished records last changed before `finished_before`, oldest first, at most
        `limit` (the leader's retention pass: coordinator/retention.py). Read from the last
        checkpoint; records that memory has already forgotten, or changed since, are left
        out. The state machine checks again when the Forget is applied."""
        t = schema.transactions.c
        q = (
            select(t.txid)
            .where(
                t.state.in_([TxState.COMMITTED.value, TxState.ABORTED.value]),
                t.updated_at < finished_before,
                or_(
                    t.heuristic.is_(None),
                    t.doc["heuristic_acknowledged"].as_boolean().is_(True),
                ),
            )
            .order_by(t.updated_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            txids = [r[0] for r in (await conn.execute(q)).fetchall()]
        out = []
        for txid in txids:
            mem = self._in_memory(txid)
            if mem is None or (mem.finished and mem.forgotten_at is None):
                out.append(txid)
        return out

    async def load_inflight(self) -> None:
        """Fill the in-memory map of unfinished transactions (on start and after a snapshot)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(schema.transactions.c.doc).where(
                    schema.transactions.c.state.notin_(
                        [TxState.COMMITTED.value, TxState.ABORTED.value]
                    )
                )
            )
            self.inflight = {
                t.txid: t for t in (Transaction.from_dict(r[0]) for r in rows.fetchall())
            }
            horizon = await conn.scalar(select(schema.applied_state.c.tombstone_horizon))
        self.tombstone_horizon = float(horizon or 0.0)
        self.recent.clear()

    async def get(self, txid: str) -> Transaction | None:
        """The record, its tombstone once forgotten, or None (never seen, or purged)."""
        t = self._in_memory(txid)
        if t is not None:
            return t
        tb = schema.tombstones.c
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(schema.transactions.c.doc).where(schema.transactions.c.txid == txid)
                )
            ).first()
            if row is not None:
                return Transaction.from_dict(row[0])
            tomb = (
                await conn.execute(
                    select(*_tombstone_columns()).where(
                        tb.txid == txid, tb.forgotten_at >= self.tombstone_horizon
                    )
                )
            ).first()
        return _tombstone_from(tomb) if tomb is not None else None

    async def _load(self, db: HotConnection, txids: set[str]) -> dict[str, Transaction]:
        found: dict[str, Transaction] = {}
        cold: list[str] = []
        for txid in txids:
            t = self._in_memory(txid)
            if t is None:
                cold.append(txid)
            else:
                found[txid] = t
        for i in range(0, len(cold), MAX_BATCH_LOOKUP):
            chunk = cold[i : i + MAX_BATCH_LOOKUP]
            params = {"txids": chunk, "horizon": self.tombstone_horizon}
            for kind, doc in await db.fetchall(batch_sql.LOOKUP_DOCS, params):
                t = Transaction.from_dict(doc) if kind == "r" else _tombstone_from(doc)
                assert t.txid not in found, f"{t.txid}: a record and a tombstone"
                found[t.txid] = t
        return found

    async def apply_batch(
        self, db: HotConnection, entries: Sequence[LogEntry]
    ) -> tuple[list[Result], dict[str, Transaction], ApplyRows]:
        """Apply committed commands in log order (the pure state machine), reading the
        transactions they touch that are not in memory from `db`.

        Returns each command's result, the transactions it changed and the timeline and
        audit rows it adds (`transactions` left empty: the record written is the newest
        version at write time, `fill_rows`). The caller stages or writes them with
        `last_applied`, then calls `publish` with the changed transactions."""
        rows = ApplyRows()
        if not entries:
            return [], {}, rows
        current = await self._load(db, {e.command.txid for e in entries if _reads(e.command)})
        changed: dict[str, Transaction] = {}
        results: list[Result] = []
        horizon = self.tombstone_horizon
        for e in entries:
            if isinstance(e.command, AuditNote):
                rows.audit.append(_audit_row(e, e.command))
                results.append(Result(Status.OK, None))
                continue
            if isinstance(e.command, PurgeTombstones):
                # Every later command of the batch already sees the new horizon.
                horizon = rows.horizon = max(horizon, e.command.before)
                results.append(Result(Status.OK, None))
                continue
            before = visible(current.get(e.command.txid), horizon)
            result = apply(before, e.command, horizon)
            results.append(result)
            if result.changed:
                assert result.txn is not None
                if isinstance(e.command, Forget):
                    assert before is not None
                    rows.archive.append(_archive_row(before, e.command.at))
                current[e.command.txid] = result.txn
                changed[e.command.txid] = result.txn
                rows.history.append(
                    {
                        "txid": e.command.txid,
                        "index": e.index,
                        "seq": e.seq,
                        "at": e.command.at,
                        "kind": e.command.kind,
                        "detail": _history_detail(e.command, result),
                    }
                )
        return results, changed, rows

    def stage(self, changed: dict[str, Transaction], rows: ApplyRows) -> None:
        """Keep an applied batch's writes for the next checkpoint."""
        self.unflushed.update(changed)
        self.unflushed_history.extend(rows.history)
        self.unflushed_audit.extend(rows.audit)
        self.unflushed_archive.extend(rows.archive)

    def take_unflushed(self) -> ApplyRows:
        """What the next checkpoint writes; readable in `flushing` until `flushed`. The
        horizon is the one published with the last staged batch (stage and publish happen in
        one step), so it is the horizon at the checkpoint's index."""
        assert not self.flushing, "one checkpoint at a time"
        rows = fill_rows(
            ApplyRows(
                history=self.unflushed_history,
                audit=self.unflushed_audit,
                archive=self.unflushed_archive,
                horizon=self.tombstone_horizon,
            ),
            self.unflushed.values(),
        )
        self.flushing, self.unflushed = self.unflushed, {}
        self.unflushed_history, self.unflushed_audit, self.unflushed_archive = [], [], []
        return rows

    def flushed(self) -> None:
        self.flushing = {}

    def restage(self, rows: ApplyRows) -> None:
        """A checkpoint that took `rows` was not written: keep them staged, in front of what
        was staged since (it is newer)."""
        self.unflushed = {**self.flushing, **self.unflushed}
        self.unflushed_history[:0] = rows.history
        self.unflushed_audit[:0] = rows.audit
        self.unflushed_archive[:0] = rows.archive
        self.flushing = {}

    def discard_unflushed(self) -> None:
        """The applied state was replaced (a snapshot): staged writes are superseded."""
        self.unflushed, self.flushing = {}, {}
        self.unflushed_history, self.unflushed_audit, self.unflushed_archive = [], [], []

    def publish(self, changed: dict[str, Transaction], horizon: float | None = None) -> None:
        """Make applied changes visible to the engine and to reads (and a moved tombstone
        horizon, when the batch purged)."""
        if horizon is not None:
            assert horizon >= self.tombstone_horizon
            self.tombstone_horizon = horizon
        for txid, t in changed.items():
            if t.state.terminal:
                self.inflight.pop(txid, None)
                self._remember(t)
            else:
                self.inflight[txid] = t

    async def list_page(self, f: ListFilter, now: float) -> tuple[list[Transaction], str | None]:
        await self.sync()
        t = schema.transactions.c
        q = (
            select(t.doc)
            .where(and_(true(), *filter_conditions(t, f, now)))
            .order_by(t.created_at.desc(), t.txid.desc())
            .limit(f.limit + 1)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).fetchall()
        items = [Transaction.from_dict(r[0]) for r in rows]
        return page(items, f.limit, lambda t: t)

    async def history(self, txid: str) -> list[dict[str, Any]]:
        await self.sync()
        h = schema.history.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(h.index, h.at, h.kind, h.detail)
                .where(h.txid == txid)
                .order_by(h.index, h.seq)
            )
            return [
                {"index": r._mapping["index"], "at": r.at, "kind": r.kind, "detail": r.detail}
                for r in rows.fetchall()
            ]

    async def dump(
        self, conn: AsyncConnection, extra: dict[str, Any] | None = None
    ) -> tuple[bytes, int]:
        """The replicated state in the database, as a snapshot's data (Raft log compaction;
        the caller checkpoints first, `snapshot_codec` says why it is compressed): the live
        records, the unpurged tombstones and the tombstone horizon; and how many records and
        tombstones it holds. Forgotten records are not in it (they are each node's history),
        so its size follows the load, not the history."""
        # The records as PostgreSQL prints them, joined: parsing every record only to print
        # it again was most of a snapshot's cost. They stream through a server-side cursor
        # into the compressor, DUMP_BATCH_ROWS at a time, so that neither the rows nor the
        # JSON are ever held whole.
        horizon = float(await conn.scalar(select(schema.applied_state.c.tombstone_horizon)) or 0.0)
        tb = schema.tombstones.c
        packer = snapshot_codec.Packer()
        count = 0
        for head, query in (
            (
                b'{"transactions":[',
                select(cast(schema.transactions.c.doc, Text)).order_by(schema.transactions.c.txid),
            ),
            (
                b'],"tombstones":[',
                select(
                    cast(
                        func.json_build_array(*_tombstone_columns()),
                        Text,
                    )
                )
                .where(tb.forgotten_at >= horizon)
                .order_by(tb.txid),
            ),
        ):
            packer.add(head)
            first = True
            result = await conn.stream(query.execution_options(yield_per=DUMP_BATCH_ROWS))
            async for rows in result.partitions():
                piece = b",".join(r[0].encode() for r in rows)
                packer.add(piece if first else b"," + piece)
                first = False
                count += len(rows)
        tail = {"tombstone_horizon": horizon, **(extra or {})}
        packer.add(b"]," + orjson.dumps(tail)[1:])
        return packer.finish(), count

    async def restore(
        self, conn: AsyncConnection, data: bytes
    ) -> tuple[dict[str, Transaction], float, dict[str, Any]]:
        """Replace the replicated state with a snapshot's (InstallSnapshot): records,
        tombstones and horizon. This node's history (timelines, forgotten records) is its
        own and stays. Returns the live records, the horizon and the snapshot's other keys
        (`dump`'s `extra`: the members), from its one parse; the caller publishes them
        (`reset_inflight`) after commit."""
        doc = orjson.loads(snapshot_codec.unpack(data)) if data else {}
        await conn.execute(schema.transactions.delete())
        await conn.execute(schema.tombstones.delete())
        txns = [Transaction.from_dict(d) for d in doc.get("transactions", [])]
        for i in range(0, len(txns), MAX_BATCH_LOOKUP):
            chunk = txns[i : i + MAX_BATCH_LOOKUP]
            await conn.execute(schema.transactions.insert(), [_row(t) for t in chunk])
        tombs = doc.get("tombstones", [])
        if tombs:
            # COPY on this transaction's own connection: an INSERT per batch cost ~29 us a
            # tombstone (adapting the parameters, mostly), COPY a few.
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            assert pg is not None
            async with pg.cursor() as cur, cur.copy(_COPY_TOMBSTONES) as copy:
                for t in tombs:
                    await copy.write_row(t)
        horizon = float(doc.get("tombstone_horizon", 0.0))
        applied = pg_insert(schema.applied_state).values(
            id=1, last_applied=0, last_applied_term=0, tombstone_horizon=horizon
        )
        await conn.execute(
            applied.on_conflict_do_update(
                index_elements=["id"], set_={"tombstone_horizon": horizon}
            )
        )
        extra = {k: v for k, v in doc.items() if k not in _STATE_KEYS}
        return {t.txid: t for t in txns}, horizon, extra

    def reset_inflight(self, txns: dict[str, Transaction], horizon: float = 0.0) -> None:
        self.inflight = {k: t for k, t in txns.items() if not t.state.terminal}
        self.tombstone_horizon = horizon
        self.recent.clear()
        self.discard_unflushed()

    async def audit_trail(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is an index to page back from."""
        await self.sync()
        a = schema.audit.c
        q = select(a.index, a.seq, a.at, a.actor, a.action, a.txid, a.detail)
        if before is not None:
            q = q.where(a.index < before)
        q = q.order_by(a.index.desc(), a.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).fetchall()
        return [dict(r._mapping) for r in rows]
