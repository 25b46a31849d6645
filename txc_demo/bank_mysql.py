"""The demo bank's tables and its one movement on MariaDB/MySQL (bank.py picks this module
when `--database-url` is a mysql:// or mariadb:// URL).

Why a module of its own rather than bank.py's SQLAlchemy tables: MariaDB has no
`UPDATE ... RETURNING` (the new balance is read back inside the same XA branch, under the row
lock the update took), no `lock_timeout` (`innodb_lock_wait_timeout`, whole seconds, per
session), and its own error numbers; and the schema is made here (idempotent DDL), since the
`participant` Alembic branch is PostgreSQL's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from participant_sdk import mysql_record

# Waiting for a row another (prepared) branch holds; MariaDB counts in whole seconds.
WORK_LOCK_TIMEOUT_S = 5
ER_LOCK_WAIT_TIMEOUT = 1205  # only the statement is rolled back (innodb_rollback_on_timeout)
ER_LOCK_DEADLOCK = 1213  # the whole branch is rolled back

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS bank_account (
        name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
        balance BIGINT NOT NULL,
        CONSTRAINT ck_bank_account_balance CHECK (balance >= 0)
    ) ENGINE=InnoDB
    """,
    """
    CREATE TABLE IF NOT EXISTS bank_ledger (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        txid VARCHAR(128) NULL,
        account VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        delta BIGINT NOT NULL,
        created_at DATETIME(6) NOT NULL DEFAULT UTC_TIMESTAMP(6)
    ) ENGINE=InnoDB
    """,
)


class Busy(Exception):
    """The account's row stayed locked by another transfer (the caller answers 409)."""


def init_database(engine: Engine, seed: dict[str, int]) -> None:
    """The SDK's record table and the bank's tables; seed accounts if there are none."""
    mysql_record.create_tables(engine)
    with engine.begin() as conn:
        for ddl in SCHEMA:
            conn.exec_driver_sql(ddl)
        if conn.execute(text("SELECT COUNT(*) FROM bank_account")).scalar_one() == 0:
            conn.execute(
                text("INSERT INTO bank_account (name, balance) VALUES (:n, :b)"),
                [{"n": n, "b": b} for n, b in seed.items()],
            )


def move(conn: Connection, txid: str | None, account: str, delta: int) -> int | None:
    """Apply `delta` to `account` inside the caller's branch; the new balance, or None when
    the account does not exist or cannot pay (the caller tells which). Raises Busy."""
    try:
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {WORK_LOCK_TIMEOUT_S}")
        cond = " AND balance >= :pay" if delta < 0 else ""
        moved = conn.execute(
            text(f"UPDATE bank_account SET balance = balance + :d WHERE name = :n{cond}"),
            {"d": delta, "n": account, "pay": -delta},
        ).rowcount
        if moved != 1:
            return None
        balance = conn.execute(
            text("SELECT balance FROM bank_account WHERE name = :n"), {"n": account}
        ).scalar_one()
        conn.execute(
            text("INSERT INTO bank_ledger (txid, account, delta) VALUES (:t, :a, :d)"),
            {"t": txid, "a": account, "d": delta},
        )
    except DBAPIError as e:
        if mysql_record.error_code(e) in (ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK):
            raise Busy(str(e.orig)) from e
        raise
    return int(balance)


def accounts(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(text("SELECT name, balance FROM bank_account ORDER BY name")).all()
    return [{"name": r.name, "balance": int(r.balance)} for r in rows]


def account(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(
        text("SELECT name, balance FROM bank_account WHERE name = :n"), {"n": name}
    ).first()
    return None if row is None else {"name": row.name, "balance": int(row.balance)}
