"""The SDK's durable record: one row per (participant, txid) in the participant's own database.

Why it exists: PostgreSQL forgets a prepared transaction once it is committed or rolled back,
so on its own it cannot answer "was this txid already committed here?" (a repeated commit),
"was this txid aborted before its work arrived?" (abort-before-work must refuse later work),
or "did I prepare this and am I still waiting?" (recovery). The record answers all three.

State machine: (none) -> prepared -> committed | aborted, and (none) -> aborted (an abort
that arrived first, or a NO vote). The one rule that recovery depends on: a prepared
transaction is only ever rolled back *after* its record says 'aborted'; so 'prepared' with no
prepared transaction left means it was committed.

Concurrency: every state-changing step for one txid runs under `txid_lock` (a PostgreSQL
session advisory lock, so replicas of one participant sharing a database serialize too),
except the PostgreSQL participant's phase-2 commit, which needs no lock: its decision is one
conditional update of the record row ('prepared' -> 'committed', `pg_fastpath`), and every
conflicting decision is one too (`claim_abort`, `claim_commit`), so PostgreSQL's row lock
picks exactly one winner. For the same reason a step that read "no record" under the lock
acts only through a conflict-checked insert or upsert, which waits for (and then sees) a
record another session is inserting at that moment.
Works on PostgreSQL and, for `CallbackParticipant`, on SQLite (process-local lock).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Index,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from participant_sdk.headers import MAX_PARTICIPANT_NAME, MAX_TXID, PG_GID_MAX_BYTES

log = logging.getLogger("txc.sdk.record")

TABLE_NAME = "txc_participant_record"
STATES = ("prepared", "committed", "aborted")
MAX_URL = 2048
MAX_LIST = 10_000  # bound on rows one listing returns
# Advisory-lock namespace (the two-int form keeps us apart from an app's one-bigint locks).
ADVISORY_LOCK_CLASS = 0x7478  # "tx"
LOCAL_LOCK_STRIPES = 64
PREPARED_INDEX = "ix_txc_participant_record_prepared"
XID_TABLE_NAME = "txc_participant_xid"  # migration p0004
# CallbackParticipant: the `gid` of a record written just before the application's prepare
# callback runs, cleared once it has voted yes (a callback participant has no PostgreSQL gid).
# A record still carrying it is a prepare that did not finish: never answered YES, so the
# outcome can only be ABORT, and recovery asks and aborts it like any prepared record.
CALLBACK_PREPARING = "txc-callback:preparing"
OLD_STATE_INDEX = "ix_txc_participant_record_state"  # before migration p0003
DROP_OLD_INDEX_LOCK_TIMEOUT_MS = 2000

metadata = MetaData()

participant_record = Table(
    TABLE_NAME,
    metadata,
    Column("participant", String(MAX_PARTICIPANT_NAME), primary_key=True),
    Column("txid", String(MAX_TXID), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("gid", String(PG_GID_MAX_BYTES), nullable=True),
    # Where to ask for the outcome when the participant has no configured coordinator.
    Column("coordinator_url", String(MAX_URL), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        "state IN ('prepared', 'committed', 'aborted')", name="ck_txc_participant_record_state"
    ),
    # Only the records still 'prepared' (what recovery lists): a row leaves the index when it
    # is decided. Keyed by the whole primary key on purpose: a plan for the phase-2 claim
    # (participant, txid, state = 'prepared') that picks this index still finds exactly one
    # row. The index it replaces, (participant, state), did not: PostgreSQL's generic plan for
    # the claim used it and walked every record ever prepared (dead entries included) per
    # commit, a cost that grew with the table (migration p0003).
    Index(
        PREPARED_INDEX,
        "participant",
        "txid",
        postgresql_where=text("state = 'prepared'"),
        sqlite_where=text("state = 'prepared'"),
    ),
)


# PostgreSQL participant: the (32-bit) id of the prepared transaction a record is about. Every
# request of a txid prepares under the same gid, so the gid alone cannot tell the recorded
# transaction from another request's, left prepared under that gid by a crash (see
# PgResourceManager._prepared_here). Written with the record, read only on the careful paths.
# A table of its own rather than a column of the record: adding a column takes an ACCESS
# EXCLUSIVE lock on the record table, which waits for every prepared transaction that read
# it (each work transaction checks the record), i.e. for the very transactions a starting
# participant has to resolve. Creating a table locks nothing that exists.
participant_xid = Table(
    XID_TABLE_NAME,
    metadata,
    Column("participant", String(MAX_PARTICIPANT_NAME), primary_key=True),
    Column("txid", String(MAX_TXID), primary_key=True),
    Column("xid", BigInteger, nullable=False),
)


TABLE_NAMES = (TABLE_NAME, XID_TABLE_NAME)


def create_tables(engine: Engine) -> None:
    """Create the record tables if missing, and bring an existing record table's indexes up
    to date (tests and demos; production runs the `participant` Alembic branch, migrations
    p0001, p0003 and p0004, which make the same tables). Never waits for prepared
    transactions (see `participant_xid`): a participant starts to resolve them.
    A MariaDB/MySQL engine gets that dialect's record table (`mysql_record.py`)."""
    if engine.dialect.name in ("mysql", "mariadb"):
        from participant_sdk import mysql_record

        mysql_record.create_tables(engine)
        return
    metadata.create_all(engine, checkfirst=True)
    with engine.begin() as conn:
        # create_all skips a table that exists, indexes included: a database made by an
        # earlier version gets the current index here (CREATE INDEX's lock does not conflict
        # with the ACCESS SHARE that prepared work transactions hold on the table) ...
        for index in participant_record.indexes:
            index.create(conn, checkfirst=True)
    # ... and loses the one it replaces, unless work is in doubt: DROP INDEX needs an ACCESS
    # EXCLUSIVE lock, which waits for every prepared transaction that read the table. The old
    # index only costs speed, so it is then kept until a later start.
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL lock_timeout = '{DROP_OLD_INDEX_LOCK_TIMEOUT_MS}ms'"))
            conn.execute(text(f"DROP INDEX IF EXISTS {OLD_STATE_INDEX}"))
    except OperationalError as e:
        log.warning(
            "kept the old index %s for now (work in doubt holds the table): %s",
            OLD_STATE_INDEX,
            e.orig,
        )


@dataclass(frozen=True)
class Record:
    participant: str
    txid: str
    state: str
    gid: str | None
    coordinator_url: str | None
    created_at: datetime | None
    updated_at: datetime | None


def _row(r: object) -> Record:
    m = r._mapping  # type: ignore[attr-defined]
    return Record(
        m["participant"],
        m["txid"],
        m["state"],
        m["gid"],
        m["coordinator_url"],
        m["created_at"],
        m["updated_at"],
    )


def get(conn: Connection, participant: str, txid: str) -> Record | None:
    t = participant_record
    row = conn.execute(select(t).where(t.c.participant == participant, t.c.txid == txid)).first()
    return _row(row) if row is not None else None


def _insert(conn: Connection):  # type: ignore[no-untyped-def]
    return _insert_into(conn, participant_record)


def _insert_into(conn: Connection, table: Table):  # type: ignore[no-untyped-def]
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the txc record supports postgresql and sqlite, not {name}")


def insert_if_absent(
    conn: Connection,
    participant: str,
    txid: str,
    state: str,
    gid: str | None = None,
    coordinator_url: str | None = None,
) -> bool:
    """Insert a record; False (and no change) when one already exists."""
    assert state in STATES
    stmt = (
        _insert(conn)
        .values(
            participant=participant,
            txid=txid,
            state=state,
            gid=gid,
            coordinator_url=coordinator_url,
        )
        .on_conflict_do_nothing(index_elements=["participant", "txid"])
        .returning(participant_record.c.txid)
    )
    # RETURNING rather than rowcount: it says for sure whether this statement inserted.
    inserted = conn.execute(stmt).first() is not None
    _commit_if_needed(conn)
    return inserted


def set_state(
    conn: Connection,
    participant: str,
    txid: str,
    state: str,
    gid: str | None = None,
) -> None:
    """Upsert the record's state (creating it when absent, e.g. abort-before-work)."""
    assert state in STATES
    ins = _insert(conn).values(participant=participant, txid=txid, state=state, gid=gid)
    stmt = ins.on_conflict_do_update(
        index_elements=["participant", "txid"],
        set_={"state": state, "updated_at": func.now()},
    )
    conn.execute(stmt)
    _commit_if_needed(conn)


def _claim(
    conn: Connection, participant: str, txid: str, state: str, loser: str, gid: str | None
) -> bool:
    """Upsert the record to `state` unless it is in state `loser`; True when it now says
    `state` (it was absent, or in any other state, including `state` itself)."""
    t = participant_record
    ins = _insert(conn).values(participant=participant, txid=txid, state=state, gid=gid)
    stmt = ins.on_conflict_do_update(
        index_elements=["participant", "txid"],
        set_={"state": state, "updated_at": func.now()},
        where=t.c.state != loser,
    ).returning(t.c.txid)
    claimed = conn.execute(stmt).first() is not None
    _commit_if_needed(conn)
    return claimed


def claim_abort(conn: Connection, participant: str, txid: str, gid: str | None = None) -> bool:
    """Decide abort in the record (before any ROLLBACK PREPARED); False when a commit was
    decided first (the record says 'committed')."""
    return _claim(conn, participant, txid, "aborted", "committed", gid)


def claim_commit(conn: Connection, participant: str, txid: str, gid: str | None = None) -> bool:
    """Decide commit in the record (before any COMMIT PREPARED); False when an abort was
    decided first (the record says 'aborted')."""
    return _claim(conn, participant, txid, "committed", "aborted", gid)


def finish_preparing(conn: Connection, participant: str, txid: str) -> bool:
    """The prepare callback voted yes: the record stops saying CALLBACK_PREPARING. False when
    the record no longer says 'prepared' with that mark (someone aborted it meanwhile: only
    possible where the txid lock did not hold, e.g. two processes on one SQLite store)."""
    t = participant_record
    row = conn.execute(
        update(t)
        .where(
            t.c.participant == participant,
            t.c.txid == txid,
            t.c.state == "prepared",
            t.c.gid == CALLBACK_PREPARING,
        )
        .values(gid=None, updated_at=func.now())
        .returning(t.c.txid)
    ).first()
    _commit_if_needed(conn)
    return row is not None


def forget_preparing(conn: Connection, participant: str, txid: str) -> None:
    """The prepare callback voted read-only: nothing to finish, no record kept."""
    t = participant_record
    conn.execute(
        delete(t).where(
            t.c.participant == participant,
            t.c.txid == txid,
            t.c.state == "prepared",
            t.c.gid == CALLBACK_PREPARING,
        )
    )
    _commit_if_needed(conn)


def remember_xid(conn: Connection, participant: str, txid: str, xid: int) -> None:
    """Note which prepared transaction `txid`'s record is about (see `participant_xid`)."""
    ins = _insert_into(conn, participant_xid).values(participant=participant, txid=txid, xid=xid)
    conn.execute(
        ins.on_conflict_do_update(index_elements=["participant", "txid"], set_={"xid": xid})
    )
    _commit_if_needed(conn)


def recorded_xid(conn: Connection, participant: str, txid: str) -> int | None:
    """The xid `remember_xid` noted for `txid`, or None (not a PostgreSQL participant's
    record, or one written before migration p0004)."""
    t = participant_xid
    xid = conn.execute(
        select(t.c.xid).where(t.c.participant == participant, t.c.txid == txid)
    ).scalar_one_or_none()
    return None if xid is None else int(xid)


def mark(conn: Connection, participant: str, txid: str, state: str) -> None:
    """Update an existing record's state (no-op when absent)."""
    assert state in STATES
    t = participant_record
    conn.execute(
        update(t)
        .where(t.c.participant == participant, t.c.txid == txid)
        .values(state=state, updated_at=func.now())
    )
    _commit_if_needed(conn)


def list_prepared(conn: Connection, participant: str, min_age_s: float = 0.0) -> list[Record]:
    """The records still waiting for an outcome (recovery's candidates), oldest first; with
    `min_age_s`, only those written at least that long ago (by the database's clock)."""
    t = participant_record
    where = [t.c.participant == participant, t.c.state == "prepared"]
    if min_age_s > 0:
        where.append(_older_than(conn, t.c.created_at, min_age_s))
    rows = conn.execute(select(t).where(*where).order_by(t.c.created_at).limit(MAX_LIST)).all()
    return [_row(r) for r in rows]


def _older_than(conn: Connection, column: Column[datetime], seconds: float) -> ColumnElement[bool]:
    """`column` at least `seconds` in the past, by the database's own clock (a database's
    `now()` and the timestamps it wrote agree; this process's clock may not)."""
    if conn.dialect.name == "sqlite":  # CURRENT_TIMESTAMP text, UTC, second precision
        return func.datetime(column) <= func.datetime("now", f"-{float(seconds)} seconds")
    return column <= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _commit_if_needed(conn: Connection) -> None:
    """Commit when the caller's connection is not in autocommit mode (each record step is
    durable on its own; callers never batch them with other work)."""
    if conn.in_transaction():
        conn.commit()


def autocommit(engine: Engine) -> contextlib.AbstractContextManager[Connection]:
    """A pooled connection in autocommit mode (COMMIT/ROLLBACK PREPARED refuse to run inside
    a transaction block, and every record step should be durable at once)."""

    @contextlib.contextmanager
    def cm() -> Iterator[Connection]:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    return cm()


_local_locks = [threading.RLock() for _ in range(LOCAL_LOCK_STRIPES)]


def lock_key(participant: str, txid: str) -> str:
    return f"{participant}:{txid}"


def acquire(conn: Connection, participant: str, txid: str) -> None:
    """Take the PostgreSQL session advisory lock for (participant, txid) on `conn`."""
    conn.execute(
        text("SELECT pg_advisory_lock(:cls, hashtext(:key))"),
        {"cls": ADVISORY_LOCK_CLASS, "key": lock_key(participant, txid)},
    )


def release(conn: Connection, participant: str, txid: str) -> None:
    conn.execute(
        text("SELECT pg_advisory_unlock(:cls, hashtext(:key))"),
        {"cls": ADVISORY_LOCK_CLASS, "key": lock_key(participant, txid)},
    )


@contextlib.contextmanager
def txid_lock(engine: Engine, participant: str, txid: str) -> Iterator[Connection]:
    """Serialize every state change of one (participant, txid); yields an autocommit
    connection to do it with. PostgreSQL: session advisory lock (across processes).
    Otherwise: a process-local striped lock."""
    with autocommit(engine) as conn:
        if conn.dialect.name != "postgresql":
            stripe = zlib.crc32(lock_key(participant, txid).encode()) % LOCAL_LOCK_STRIPES
            with _local_locks[stripe]:
                yield conn
            return
        acquire(conn, participant, txid)
        try:
            yield conn
        finally:
            try:
                release(conn, participant, txid)
            except Exception:
                # A session that cannot unlock must not go back to the pool holding the lock.
                conn.invalidate()
                raise
