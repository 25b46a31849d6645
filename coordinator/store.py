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
from typing import Any

import orjson
from sqlalchemy import Text, and_, cast, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import batch_sql, schema, snapshot_codec
from coordinator.batch_sql import ApplyRows
from coordinator.commands import AuditNote, Begin, Command
from coordinator.model import Transaction, TxState
from coordinator.pgconn import HotConnection
from coordinator.statemachine import Result, Status, apply

MAX_BATCH_LOOKUP = 1000  # txids fetched in one query when a batch touches cold transactions
# Finished transactions kept in memory (newest): a commit's answer, a client's or participant's
# read just after the end, and a repeated message are served without a query.
MAX_RECENT_FINISHED = 10_000
DUMP_BATCH_ROWS = 5000  # records a snapshot reads from its cursor at a time


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


def transaction_rows(txns: Iterable[Transaction]) -> list[dict[str, Any]]:
    """Rows for batch_sql's `txns` part (one per transaction, its whole record as `doc`)."""
    return [_row(t) for t in txns]


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
    if isinstance(cmd, AuditNote):
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
        self.inflight: dict[str, Transaction] = {}
        # Committed, finished transactions, oldest first; at most MAX_RECENT_FINISHED.
        self.recent: OrderedDict[str, Transaction] = OrderedDict()
        # Applied, not yet written: the newest version of each transaction, and the timeline
        # and audit rows, in log order. `flushing` is what a checkpoint is writing now.
        self.unflushed: dict[str, Transaction] = {}
        self.unflushed_history: list[dict[str, Any]] = []
        self.unflushed_audit: list[dict[str, Any]] = []
        self.flushing: dict[str, Transaction] = {}
        # Called before a read that the database answers, so that it sees everything
        # applied so far (the log sets it to its checkpoint's flush).
        self.before_read: Callable[[], Awaitable[object]] | None = None

    def _in_memory(self, txid: str) -> Transaction | None:
        return (
            self.inflight.get(txid)
            or self.recent.get(txid)
            or self.unflushed.get(txid)
            or self.flushing.get(txid)
        )

    async def _sync(self) -> None:
        if self.before_read is not None:
            await self.before_read()

    def _remember(self, t: Transaction) -> None:
        assert t.state.terminal
        self.recent[t.txid] = t
        self.recent.move_to_end(t.txid)
        while len(self.recent) > MAX_RECENT_FINISHED:
            self.recent.popitem(last=False)

    async def record_count(self) -> int:
        """How many transactions the database holds (what a snapshot taken now would hold,
        give or take a checkpoint)."""
        async with self.engine.connect() as conn:
            n = await conn.scalar(select(func.count()).select_from(schema.transactions))
        return int(n or 0)

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
        self.recent.clear()

    async def get(self, txid: str) -> Transaction | None:
        t = self._in_memory(txid)
        if t is not None:
            return t
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(schema.transactions.c.doc).where(schema.transactions.c.txid == txid)
                )
            ).first()
        return Transaction.from_dict(row[0]) if row else None

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
            rows = await db.fetchall(batch_sql.LOOKUP_DOCS, {"txids": chunk})
            for (doc,) in rows:
                t = Transaction.from_dict(doc)
                found[t.txid] = t
        return found

    async def apply_batch(
        self, db: HotConnection, entries: Sequence[LogEntry]
    ) -> tuple[list[Result], dict[str, Transaction], ApplyRows]:
        """Apply committed commands in log order (the pure state machine), reading the
        transactions they touch that are not in memory from `db`.

        Returns each command's result, the transactions it changed and the timeline and
        audit rows it adds (`transactions` left empty: the record written is the newest
        version at write time, `transaction_rows`). The caller stages or writes them with
        `last_applied`, then calls `publish` with the changed transactions."""
        rows = ApplyRows()
        if not entries:
            return [], {}, rows
        current = await self._load(db, {e.command.txid for e in entries if _reads(e.command)})
        changed: dict[str, Transaction] = {}
        results: list[Result] = []
        for e in entries:
            if isinstance(e.command, AuditNote):
                rows.audit.append(_audit_row(e, e.command))
                results.append(Result(Status.OK, None))
                continue
            result = apply(current.get(e.command.txid), e.command)
            results.append(result)
            if result.changed:
                assert result.txn is not None
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

    def take_unflushed(self) -> ApplyRows:
        """What the next checkpoint writes; readable in `flushing` until `flushed`."""
        assert not self.flushing, "one checkpoint at a time"
        rows = ApplyRows(
            transactions=transaction_rows(self.unflushed.values()),
            history=self.unflushed_history,
            audit=self.unflushed_audit,
        )
        self.flushing, self.unflushed = self.unflushed, {}
        self.unflushed_history, self.unflushed_audit = [], []
        return rows

    def flushed(self) -> None:
        self.flushing = {}

    def discard_unflushed(self) -> None:
        """The applied state was replaced (a snapshot): staged writes are superseded."""
        self.unflushed, self.flushing = {}, {}
        self.unflushed_history, self.unflushed_audit = [], []

    def publish(self, changed: dict[str, Transaction]) -> None:
        """Make applied changes visible to the engine and to reads."""
        for txid, t in changed.items():
            if t.state.terminal:
                self.inflight.pop(txid, None)
                self._remember(t)
            else:
                self.inflight[txid] = t

    async def list_page(self, f: ListFilter, now: float) -> tuple[list[Transaction], str | None]:
        await self._sync()
        t = schema.transactions.c
        conds = []
        if f.state:
            conds.append(t.state == f.state)
        if f.label:
            conds.append(t.labels.contains({f.label[0]: f.label[1]}))
        if f.participant:
            conds.append(t.doc["participants"].contains([{"name": f.participant}]))
        if f.min_age_s is not None:
            conds.append(t.created_at <= now - f.min_age_s)
        if f.max_age_s is not None:
            conds.append(t.created_at >= now - f.max_age_s)
        if f.cursor:
            c_at, c_txid = decode_cursor(f.cursor)
            conds.append(or_(t.created_at < c_at, and_(t.created_at == c_at, t.txid < c_txid)))
        q = (
            select(t.doc)
            .where(and_(true(), *conds))
            .order_by(t.created_at.desc(), t.txid.desc())
            .limit(f.limit + 1)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).fetchall()
        items = [Transaction.from_dict(r[0]) for r in rows[: f.limit]]
        cursor = None
        if len(rows) > f.limit:
            last = items[-1]
            cursor = encode_cursor(last.created_at, last.txid)
        return items, cursor

    async def history(self, txid: str) -> list[dict[str, Any]]:
        await self._sync()
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
        """The applied state in the database, as a snapshot's data (Raft log compaction;
        the caller checkpoints first, `snapshot_codec` says why it is compressed), and how many
        records it holds."""
        # The records as PostgreSQL prints them, joined: parsing every record only to print
        # it again was most of a snapshot's cost (the whole table). They stream through a
        # server-side cursor into the compressor, DUMP_BATCH_ROWS at a time, so that neither
        # the rows nor the JSON are ever held whole.
        packer = snapshot_codec.Packer()
        packer.add(b'{"transactions":[')
        count = 0
        result = await conn.stream(
            select(cast(schema.transactions.c.doc, Text))
            .order_by(schema.transactions.c.txid)
            .execution_options(yield_per=DUMP_BATCH_ROWS)
        )
        async for rows in result.partitions():
            piece = b",".join(r[0].encode() for r in rows)
            packer.add(b"," + piece if count else piece)
            count += len(rows)
        packer.add(b"]" + (b"," + orjson.dumps(extra)[1:] if extra else b"}"))
        return packer.finish(), count

    async def restore(self, conn: AsyncConnection, data: bytes) -> dict[str, Transaction]:
        """Replace the applied state with a snapshot's (InstallSnapshot). The timeline of
        transactions in the snapshot starts again from here; the caller publishes after commit."""
        docs = orjson.loads(snapshot_codec.unpack(data))["transactions"] if data else []
        await conn.execute(schema.transactions.delete())
        await conn.execute(schema.history.delete())
        txns = [Transaction.from_dict(d) for d in docs]
        if txns:
            await conn.execute(schema.transactions.insert(), [_row(t) for t in txns])
        return {t.txid: t for t in txns}

    def reset_inflight(self, txns: dict[str, Transaction]) -> None:
        self.inflight = {k: t for k, t in txns.items() if not t.state.terminal}
        self.recent.clear()
        self.discard_unflushed()

    async def audit_trail(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is an index to page back from."""
        await self._sync()
        a = schema.audit.c
        q = select(a.index, a.seq, a.at, a.actor, a.action, a.txid, a.detail)
        if before is not None:
            q = q.where(a.index < before)
        q = q.order_by(a.index.desc(), a.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).fetchall()
        return [dict(r._mapping) for r in rows]
