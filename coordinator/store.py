"""The applied state in PostgreSQL, and the apply step that turns committed commands into it.

`apply_batch` runs inside the caller's database transaction, the same one that advances
`last_applied`, so a crash leaves either the whole batch applied or none of it (DESIGN §7).
The in-memory `inflight` map mirrors the rows of unfinished transactions: the engine scans
it for work without querying, and it is only updated after the database commit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator import schema
from coordinator.commands import AuditNote, Command
from coordinator.model import Transaction, TxState
from coordinator.statemachine import Result, Status, apply

MAX_BATCH_LOOKUP = 1000  # txids fetched in one query when a batch touches cold transactions


def _transaction_upsert() -> Any:
    stmt = pg_insert(schema.transactions)
    columns = ("state", "outcome", "updated_at", "expires_at", "heuristic", "labels", "doc")
    return stmt.on_conflict_do_update(
        index_elements=["txid"], set_={c: stmt.excluded[c] for c in columns}
    )


# Built once: these run for every batch the log applies.
TRANSACTION_UPSERT = _transaction_upsert()
HISTORY_INSERT = pg_insert(schema.history).on_conflict_do_nothing()
AUDIT_INSERT = pg_insert(schema.audit).on_conflict_do_nothing()
LOOKUP_DOCS = select(schema.transactions.c.doc).where(
    schema.transactions.c.txid.in_(bindparam("txids", expanding=True))
)


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

    async def get(self, txid: str) -> Transaction | None:
        t = self.inflight.get(txid)
        if t is not None:
            return t
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(schema.transactions.c.doc).where(schema.transactions.c.txid == txid)
                )
            ).first()
        return Transaction.from_dict(row[0]) if row else None

    async def _load(self, conn: AsyncConnection, txids: set[str]) -> dict[str, Transaction]:
        found: dict[str, Transaction] = {}
        cold = [t for t in txids if t not in self.inflight]
        for txid in txids - set(cold):
            found[txid] = self.inflight[txid]
        for i in range(0, len(cold), MAX_BATCH_LOOKUP):
            chunk = cold[i : i + MAX_BATCH_LOOKUP]
            rows = await conn.execute(LOOKUP_DOCS, {"txids": chunk})
            for (doc,) in rows.fetchall():
                t = Transaction.from_dict(doc)
                found[t.txid] = t
        return found

    async def apply_batch(
        self, conn: AsyncConnection, entries: Sequence[LogEntry]
    ) -> tuple[list[Result], dict[str, Transaction]]:
        """Apply committed commands in log order inside `conn`'s transaction.

        Returns each command's result and the transactions it changed; the caller commits,
        then calls `publish` with the latter."""
        if not entries:
            return [], {}
        current = await self._load(
            conn, {e.command.txid for e in entries if not isinstance(e.command, AuditNote)}
        )
        changed: dict[str, Transaction] = {}
        results: list[Result] = []
        history_rows: list[dict[str, Any]] = []
        audit_rows: list[dict[str, Any]] = []
        for e in entries:
            if isinstance(e.command, AuditNote):
                audit_rows.append(_audit_row(e, e.command))
                results.append(Result(Status.OK, None))
                continue
            result = apply(current.get(e.command.txid), e.command)
            results.append(result)
            if result.changed:
                assert result.txn is not None
                current[e.command.txid] = result.txn
                changed[e.command.txid] = result.txn
                history_rows.append(
                    {
                        "txid": e.command.txid,
                        "index": e.index,
                        "seq": e.seq,
                        "at": e.command.at,
                        "kind": e.command.kind,
                        "detail": _history_detail(e.command, result),
                    }
                )
        if audit_rows:
            await conn.execute(AUDIT_INSERT, audit_rows)
        if changed:
            await conn.execute(TRANSACTION_UPSERT, [_row(t) for t in changed.values()])
            await conn.execute(HISTORY_INSERT, history_rows)
        return results, changed

    def publish(self, changed: dict[str, Transaction]) -> None:
        """Make committed changes visible to the engine (after the database commit)."""
        for txid, t in changed.items():
            if t.state.terminal:
                self.inflight.pop(txid, None)
            else:
                self.inflight[txid] = t

    async def list_page(self, f: ListFilter, now: float) -> tuple[list[Transaction], str | None]:
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

    async def dump(self, conn: AsyncConnection, extra: dict[str, Any] | None = None) -> bytes:
        """The whole applied state, as a snapshot's data (Raft log compaction)."""
        rows = await conn.execute(
            select(schema.transactions.c.doc).order_by(schema.transactions.c.txid)
        )
        state = {"transactions": [r[0] for r in rows.fetchall()], **(extra or {})}
        return json.dumps(state).encode()

    async def restore(self, conn: AsyncConnection, data: bytes) -> dict[str, Transaction]:
        """Replace the applied state with a snapshot's (InstallSnapshot). The timeline of
        transactions in the snapshot starts again from here; the caller publishes after commit."""
        docs = json.loads(data)["transactions"] if data else []
        await conn.execute(schema.transactions.delete())
        await conn.execute(schema.history.delete())
        txns = [Transaction.from_dict(d) for d in docs]
        if txns:
            await conn.execute(schema.transactions.insert(), [_row(t) for t in txns])
        return {t.txid: t for t in txns}

    def reset_inflight(self, txns: dict[str, Transaction]) -> None:
        self.inflight = {k: t for k, t in txns.items() if not t.state.terminal}

    async def audit_trail(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is an index to page back from."""
        a = schema.audit.c
        q = select(a.index, a.seq, a.at, a.actor, a.action, a.txid, a.detail)
        if before is not None:
            q = q.where(a.index < before)
        q = q.order_by(a.index.desc(), a.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).fetchall()
        return [dict(r._mapping) for r in rows]
