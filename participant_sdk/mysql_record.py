"""The SDK's durable record (see `record.py`) in a MariaDB/MySQL participant's own database,
and the per-txid lock there.

Same table name, columns and states as the PostgreSQL record, so `txc audit` reads both the
same way; its own DDL and statements because the dialects differ where the record needs
exactness: no `ON CONFLICT ... RETURNING` (a duplicate insert is caught as error 1062), no
`UPDATE ... RETURNING` (a conditional upsert is followed by a read of the row, whose state is
then final: 'committed' and 'aborted' never change), and no advisory locks keyed by two
integers (`GET_LOCK` takes a name of at most 64 characters: a hash).

Timestamps are written as `UTC_TIMESTAMP(6)` by every statement here (DATETIME has no time
zone, and sessions may differ in theirs), and ages are measured against the same clock.

Every function takes an autocommit SQLAlchemy `Connection` (each step durable at once),
except `claim_commits`, which runs its own short transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from participant_sdk.headers import MAX_PARTICIPANT_NAME, MAX_TXID, PG_GID_MAX_BYTES
from participant_sdk.record import MAX_LIST, MAX_URL, STATES, TABLE_NAME, Record

log = logging.getLogger("txc.sdk.mysql_record")

ER_DUP_ENTRY = 1062
# Waiting for another holder of a txid's lock (a request between its XA PREPARE and its
# record, or a phase-2 step): those hold it for a few statements, so this is generous.
TXID_LOCK_TIMEOUT_S = 30
LOCK_NAME_PREFIX = "txc:"  # + 40 hex digits: within GET_LOCK's 64 characters
PREPARED_INDEX = "ix_txc_participant_record_prepared"

_T = TABLE_NAME
CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {_T} (
    participant VARCHAR({MAX_PARTICIPANT_NAME}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    txid VARCHAR({MAX_TXID}) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state VARCHAR(16) CHARACTER SET ascii NOT NULL,
    gid VARCHAR({PG_GID_MAX_BYTES}) NULL,
    coordinator_url VARCHAR({MAX_URL}) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
    PRIMARY KEY (participant, txid),
    KEY {PREPARED_INDEX} (participant, state, created_at),
    CONSTRAINT ck_txc_participant_record_state
        CHECK (state IN ('prepared', 'committed', 'aborted'))
) ENGINE=InnoDB
"""
_COLUMNS = "participant, txid, state, gid, coordinator_url, created_at, updated_at"
_GET_SQL = text(f"SELECT {_COLUMNS} FROM {_T} WHERE participant = :p AND txid = :t")
_STATE_SQL = text(f"SELECT state FROM {_T} WHERE participant = :p AND txid = :t")
_INSERT_SQL = text(
    f"INSERT INTO {_T} (participant, txid, state, gid, coordinator_url, created_at, updated_at) "
    "VALUES (:p, :t, :s, :gid, :url, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
)
# Upsert to :s unless the row says :loser. `updated_at` is assigned first: in ON DUPLICATE
# KEY UPDATE a later assignment sees the earlier ones' new values.
_CLAIM_SQL = text(
    f"INSERT INTO {_T} (participant, txid, state, gid, created_at, updated_at) "
    "VALUES (:p, :t, :s, :gid, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) "
    "ON DUPLICATE KEY UPDATE "
    "updated_at = IF(state = :loser, updated_at, UTC_TIMESTAMP(6)), "
    "state = IF(state = :loser, state, :s)"
)
_CLAIM_COMMIT_SQL = text(
    f"UPDATE {_T} SET state = 'committed', updated_at = UTC_TIMESTAMP(6) "
    "WHERE participant = :p AND txid = :t AND state = 'prepared'"
)
_LOCK_PREPARED_SQL = text(
    f"SELECT txid FROM {_T} WHERE participant = :p AND txid IN :ts AND state = 'prepared' "
    "FOR UPDATE"
).bindparams(bindparam("ts", expanding=True))
_CLAIM_COMMITS_SQL = text(
    f"UPDATE {_T} SET state = 'committed', updated_at = UTC_TIMESTAMP(6) "
    "WHERE participant = :p AND txid IN :ts AND state = 'prepared'"
).bindparams(bindparam("ts", expanding=True))
_LIST_PREPARED_SQL = text(
    f"SELECT {_COLUMNS} FROM {_T} WHERE participant = :p AND state = 'prepared' "
    "AND created_at <= UTC_TIMESTAMP(6) - INTERVAL :us MICROSECOND "
    "ORDER BY created_at LIMIT :lim"
)
_LOCK_SQL = text("SELECT GET_LOCK(:n, :timeout)")
_UNLOCK_SQL = text("SELECT RELEASE_LOCK(:n)")
_LOCK_AND_STATE_SQL = text(
    f"SELECT GET_LOCK(:n, :timeout), (SELECT state FROM {_T} WHERE participant = :p AND txid = :t)"
)


def error_code(e: DBAPIError) -> int | None:
    """The server's error number of a PyMySQL / mysqlclient error (args[0])."""
    args = getattr(e.orig, "args", ())
    return int(args[0]) if args and isinstance(args[0], int) else None


def create_tables(engine: Engine) -> None:
    """Create the record table if missing (idempotent; tests, demos and `create_tables()`:
    the `participant` Alembic branch is PostgreSQL's)."""
    with engine.begin() as conn:
        conn.exec_driver_sql(CREATE_SQL)


def has_table(conn: Connection) -> bool:
    found = conn.execute(
        text(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = :t"
        ),
        {"t": TABLE_NAME},
    ).first()
    return found is not None


def _row(r: Any) -> Record:
    m = r._mapping
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
    row = conn.execute(_GET_SQL, {"p": participant, "t": txid}).first()
    return None if row is None else _row(row)


def state(conn: Connection, participant: str, txid: str) -> str | None:
    found = conn.execute(_STATE_SQL, {"p": participant, "t": txid}).scalar_one_or_none()
    return None if found is None else str(found)


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
    params = {"p": participant, "t": txid, "s": state, "gid": gid, "url": coordinator_url}
    try:
        conn.execute(_INSERT_SQL, params)
    except IntegrityError as e:
        if error_code(e) == ER_DUP_ENTRY:
            return False
        raise
    return True


def _claim(conn: Connection, participant: str, txid: str, new: str, loser: str, gid: str | None):  # type: ignore[no-untyped-def]
    conn.execute(_CLAIM_SQL, {"p": participant, "t": txid, "s": new, "loser": loser, "gid": gid})
    # The row now says `new` or `loser`, both final: this read cannot be overtaken.
    return state(conn, participant, txid) == new


def claim_abort(conn: Connection, participant: str, txid: str, gid: str | None = None) -> bool:
    """Decide abort in the record; False when a commit was decided first."""
    return bool(_claim(conn, participant, txid, "aborted", "committed", gid))


def claim_commit(conn: Connection, participant: str, txid: str, gid: str | None = None) -> bool:
    """Decide commit in the record; False when an abort was decided first."""
    return bool(_claim(conn, participant, txid, "committed", "aborted", gid))


def claim_prepared_commit(conn: Connection, participant: str, txid: str) -> bool:
    """Phase 2's lock-free decision: 'prepared' -> 'committed'; False in any other case.
    (Matched rows equal changed rows here: the condition excludes the new value.)"""
    result = conn.execute(_CLAIM_COMMIT_SQL, {"p": participant, "t": txid})
    return int(result.rowcount) == 1


def claim_commits(engine: Engine, participant: str, txids: list[str]) -> set[str]:
    """`claim_prepared_commit` for a batch, in one short READ COMMITTED transaction: the rows
    still 'prepared' are locked (so a concurrent abort's upsert waits), then moved. READ
    COMMITTED: a locking read at REPEATABLE READ would also lock the gaps of absent txids."""
    if not txids:
        return set()
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="READ COMMITTED")
        with conn.begin():
            params = {"p": participant, "ts": txids}
            claimed = {str(t) for t in conn.execute(_LOCK_PREPARED_SQL, params).scalars()}
            if claimed:
                conn.execute(_CLAIM_COMMITS_SQL, {"p": participant, "ts": sorted(claimed)})
    return claimed


def list_prepared(conn: Connection, participant: str, min_age_s: float = 0.0) -> list[Record]:
    """Records still 'prepared', oldest first; with `min_age_s`, written at least that long ago."""
    us = int(max(0.0, min_age_s) * 1_000_000)
    rows = conn.execute(_LIST_PREPARED_SQL, {"p": participant, "us": us, "lim": MAX_LIST}).all()
    return [_row(r) for r in rows]


def lock_name(database: str, participant: str, txid: str) -> str:
    """GET_LOCK's namespace is the whole server: the database is part of the name."""
    digest = hashlib.sha1(f"{database}/{participant}:{txid}".encode()).hexdigest()
    return LOCK_NAME_PREFIX + digest


class LockTimeout(RuntimeError):
    """The txid's lock was not free within TXID_LOCK_TIMEOUT_S."""


def lock_and_state(
    conn: Connection, database: str, participant: str, txid: str
) -> tuple[bool, str | None]:
    """Take the txid's lock and read the record's state (fresh: `conn` is autocommit) in one
    round trip; (got the lock, state)."""
    row = conn.execute(
        _LOCK_AND_STATE_SQL,
        {
            "n": lock_name(database, participant, txid),
            "timeout": TXID_LOCK_TIMEOUT_S,
            "p": participant,
            "t": txid,
        },
    ).one()
    return row[0] == 1, None if row[1] is None else str(row[1])


def unlock(conn: Connection, database: str, participant: str, txid: str) -> None:
    conn.execute(_UNLOCK_SQL, {"n": lock_name(database, participant, txid)})


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def txid_lock(engine: Engine, database: str, participant: str, txid: str) -> Iterator[Connection]:
    """Serialize the state changes of one (participant, txid) across processes (a MariaDB
    user lock, released with the session if the process dies); yields the autocommit
    connection that holds it."""
    with autocommit(engine) as conn:
        name = lock_name(database, participant, txid)
        got = conn.execute(_LOCK_SQL, {"n": name, "timeout": TXID_LOCK_TIMEOUT_S}).scalar()
        if got != 1:
            raise LockTimeout(f"the lock of {participant}/{txid} was not free in time")
        try:
            yield conn
        finally:
            try:
                conn.execute(_UNLOCK_SQL, {"n": name})
            except Exception:
                # A session that cannot unlock must not go back to the pool holding the lock.
                conn.invalidate()
                raise
