"""The PostgreSQL participant's hot path in plain psycopg: the few statements every transfer
runs, each one round trip and as few PostgreSQL transactions as the rules allow.

Why plain psycopg here: these statements are fixed and tiny, and SQLAlchemy Core's compile
and result machinery cost more CPU than the statements themselves. The connections still
come from the application's SQLAlchemy engine (`engine.raw_connection()`), so its pool,
`connect_args` and events apply; the application's own work keeps its SQLAlchemy
`Connection` (`PgWork.connection`).

What one transfer costs a participant (see `pg_resource.py` for why each step is safe):
- the work transaction: the application's statements, one record check at its start, the
  txid lock taken with a second record check at its end, then PREPARE TRANSACTION (whose
  command status says whether it prepared: no look-up in pg_prepared_xacts);
- one statement that inserts the 'prepared' record and releases the txid lock;
- phase 2: one statement moving the record 'prepared' -> 'committed', then COMMIT PREPARED;
  a batch of commits (`POST {prefix}/batch`) moves all its records in one statement.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import cast

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import TupleRow
from sqlalchemy import Engine

from participant_sdk.record import ADVISORY_LOCK_CLASS, TABLE_NAME, XID_TABLE_NAME, lock_key

Driver = psycopg.Connection[TupleRow]

PREPARED_STATUS = "PREPARE TRANSACTION"  # command status of a PREPARE that prepared
# A PREPARE of a transaction that had already failed answers "ROLLBACK" and prepares nothing.

# The statements are plain strings built once: a `sql.Composed` is rendered again on every
# execute, which costs more than a short statement's own client-side work. The table name is
# the SDK's constant, checked here to need no quoting.
for _name in (TABLE_NAME, XID_TABLE_NAME):
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", _name):
        raise RuntimeError(f"the record table's name needs quoting: {_name!r}")
_T = TABLE_NAME
_STATE_SQL = f"SELECT state FROM {_T} WHERE participant = %s AND txid = %s"
# The work transaction's first statement: the record, and the transaction's isolation level
# in the same round trip (see work_start).
_WORK_START_SQL = (
    "SELECT current_setting('transaction_isolation'), "
    f"(SELECT state FROM {_T} WHERE participant = %s AND txid = %s)"
)
READ_COMMITTED = "read committed"
# The record check rides along with taking the lock (one round trip). Its snapshot may predate
# the lock, so it can miss a record another lock holder has just written: that only costs a
# PREPARE that the record insert below then refuses (and rolls back, still under the lock).
# Should the process die before that rollback, the record's xid shows the prepared
# transaction is not the recorded one, and whoever meets it next rolls it back: so the
# statement also reads the work transaction's id (the 32-bit xid that pg_prepared_xacts shows
# once it is prepared; pg_current_xact_id() adds the epoch above it).
_LOCK_AND_STATE_SQL = (
    "SELECT pg_advisory_lock(%s, hashtext(%s)), "
    f"(SELECT state FROM {_T} WHERE participant = %s AND txid = %s), "
    "pg_current_xact_id()::text::bigint & 4294967295"
)
# Insert the 'prepared' record and, only when it was inserted, release the txid lock, in one
# statement (one transaction). The unlock takes effect just before that transaction commits:
# a lock holder that comes next may still read "no record" for an instant. Every step that
# acts on such a read does so through a conflict-checked insert or upsert of the record row
# (record.claim_abort / claim_commit / insert_if_absent), which waits for this insert and then
# sees it, so the instant changes no decision. When a record already exists, no row comes
# back and the lock stays held for the caller to undo its PREPARE first.
# The record's xid row rides along (only when the record was inserted).
_X = XID_TABLE_NAME
_RECORD_AND_UNLOCK_SQL = (
    "WITH ins AS ("
    f"INSERT INTO {_T} (participant, txid, state, gid, coordinator_url) "
    "VALUES (%(p)s, %(t)s, 'prepared', %(gid)s, %(url)s) "
    "ON CONFLICT (participant, txid) DO NOTHING RETURNING 1), "
    f"x AS (INSERT INTO {_X} (participant, txid, xid) SELECT %(p)s, %(t)s, %(xid)s FROM ins "
    "ON CONFLICT (participant, txid) DO UPDATE SET xid = excluded.xid) "
    "SELECT pg_advisory_unlock(%(cls)s, hashtext(%(key)s)) FROM ins"
)
_UNLOCK_SQL = "SELECT pg_advisory_unlock(%s, hashtext(%s))"
# Phase 2's decision: the record moves 'prepared' -> 'committed' before COMMIT PREPARED, so a
# concurrent abort (which moves it to 'aborted' first) and this commit cannot both win.
_CLAIM_COMMIT_SQL = (
    f"UPDATE {_T} SET state = 'committed', updated_at = now() "
    "WHERE participant = %s AND txid = %s AND state = 'prepared' RETURNING 1"
)
# The same for a batch of txids (`POST {prefix}/batch`): one statement, one transaction, each
# row decided exactly as the single-row statement would (READ COMMITTED re-checks a row that a
# concurrent abort changed). Two batches over the same txids lock them in the order their
# plans visit the rows (index order with the primary key); should they ever deadlock,
# PostgreSQL fails one of them, and that batch's commits go one by one (commit_many's caller).
_CLAIM_COMMITS_SQL = (
    f"UPDATE {_T} SET state = 'committed', updated_at = now() "
    "WHERE participant = %s AND txid = ANY(%s) AND state = 'prepared' RETURNING txid"
)
_FINISH = {"COMMIT": sql.SQL("COMMIT PREPARED {}"), "ROLLBACK": sql.SQL("ROLLBACK PREPARED {}")}


def driver_of(dbapi_connection: object) -> Driver:
    """The psycopg connection under a SQLAlchemy pooled connection."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if not isinstance(driver, psycopg.Connection):
        raise TypeError("the PostgreSQL participant needs the psycopg (3) driver")
    return cast(Driver, driver)


@contextlib.contextmanager
def autocommit_driver(engine: Engine) -> Iterator[Driver]:
    """A pooled psycopg connection in autocommit mode (COMMIT PREPARED refuses to run in a
    transaction block, and each step must be durable at once), handed back to the pool in the
    mode it came in. A connection that failed at the connection level is discarded."""
    raw = engine.raw_connection()
    try:
        driver = driver_of(raw)
        driver.autocommit = True
        try:
            yield driver
        finally:
            if not driver.closed:
                driver.autocommit = False
    except psycopg.OperationalError:
        raw.invalidate()
        raise
    finally:
        raw.close()


def work_start(driver: Driver, participant: str, txid: str) -> tuple[str, str | None]:
    """The work transaction's isolation level and the record's state. Why the level: the
    record check taken with the txid lock before PREPARE must see records committed up to
    that moment, which only READ COMMITTED gives inside a transaction; under REPEATABLE READ
    a duplicate request could read "no record" from its old snapshot, PREPARE the gid of a
    transaction already committed, and a crash before it undid that would leave recovery
    committing the duplicate's work."""
    row = driver.execute(_WORK_START_SQL, (participant, txid)).fetchone()
    assert row is not None
    return str(row[0]), None if row[1] is None else str(row[1])


def record_state(driver: Driver, participant: str, txid: str) -> str | None:
    row = driver.execute(_STATE_SQL, (participant, txid)).fetchone()
    return None if row is None else str(row[0])


def lock_and_state(driver: Driver, participant: str, txid: str) -> tuple[str | None, int]:
    """Take the txid's session advisory lock (it outlives the PREPARE that follows); the
    record's state and the work transaction's xid."""
    key = lock_key(participant, txid)
    row = driver.execute(_LOCK_AND_STATE_SQL, (ADVISORY_LOCK_CLASS, key, participant, txid))
    found = row.fetchone()
    assert found is not None
    return (None if found[1] is None else str(found[1])), int(found[2])


def unlock(driver: Driver, participant: str, txid: str) -> None:
    driver.execute(_UNLOCK_SQL, (ADVISORY_LOCK_CLASS, lock_key(participant, txid)))


def prepare_transaction(driver: Driver, gid: str) -> bool:
    """PREPARE TRANSACTION; False when the transaction had failed (nothing was prepared).
    Raises psycopg's errors (e.g. DuplicateObject when the gid is in use)."""
    cur = driver.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)), prepare=False)
    return cur.statusmessage == PREPARED_STATUS


def record_prepared_and_unlock(
    driver: Driver,
    participant: str,
    txid: str,
    gid: str,
    coordinator_url: str | None,
    xid: int,
) -> bool:
    """Insert the 'prepared' record of the prepared transaction `xid` and release the txid
    lock; False (lock still held, nothing written) when a record for the txid already exists."""
    key = lock_key(participant, txid)
    params = {
        "p": participant,
        "t": txid,
        "gid": gid,
        "url": coordinator_url,
        "xid": xid,
        "cls": ADVISORY_LOCK_CLASS,
        "key": key,
    }
    cur = driver.execute(_RECORD_AND_UNLOCK_SQL, params)
    return cur.fetchone() is not None


def claim_commit(driver: Driver, participant: str, txid: str) -> bool:
    """Move the record 'prepared' -> 'committed'; False when it is in any other state or
    absent (the caller then takes the careful path)."""
    return driver.execute(_CLAIM_COMMIT_SQL, (participant, txid)).fetchone() is not None


def claim_commits(driver: Driver, participant: str, txids: list[str]) -> set[str]:
    """`claim_commit` for several txids in one statement: the ones moved 'prepared' ->
    'committed' (the others take the careful path, one by one)."""
    rows = driver.execute(_CLAIM_COMMITS_SQL, (participant, txids)).fetchall()
    return {str(r[0]) for r in rows}


class PreparedBusy(Exception):
    """Another session is finishing this prepared transaction right now (PostgreSQL: "prepared
    transaction ... is busy"); it is gone as soon as that session is done."""


def finish_prepared(driver: Driver, verb: str, gid: str) -> bool:
    """COMMIT/ROLLBACK PREPARED; False when no such prepared transaction exists. Raises
    PreparedBusy when another session is finishing it at this moment."""
    try:
        driver.execute(_FINISH[verb].format(sql.Literal(gid)), prepare=False)
    except pg_errors.UndefinedObject:
        return False
    except pg_errors.ObjectNotInPrerequisiteState as e:
        raise PreparedBusy(str(e)) from e
    return True
