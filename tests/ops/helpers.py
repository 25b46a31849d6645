"""Shared by the operator-tooling tests: running `txc` in-process, and a participant bank
(a PostgreSQL database with the SDK's record table and an `accounts` table) whose prepared
transactions a test can create, look at and clean up."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text

from coordinator.cli import main
from participant_sdk import PgResourceManager, create_tables, make_gid
from participant_sdk import record as sdk_record
from tests.conftest import PgServer

DEAD_URL = "http://127.0.0.1:9"
# Prepared transactions keep their row locks: a test gives each transaction its own account.
ACCOUNTS = ["a", "b", "c", "d", "e", "f"]  # nothing listens there: phase 2 never reaches the bank


def txc(*argv: str) -> tuple[int, str, str]:
    """Run `txc argv...` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def txc_json(*argv: str) -> tuple[int, Any]:
    code, out, err = txc("--json", *argv)
    assert out, f"no output (exit {code}): {err}"
    return code, json.loads(out)


@dataclass
class Bank:
    name: str
    url: str
    engine: Engine
    public_url: str = DEAD_URL  # where the coordinator reaches its protocol endpoints

    def balances(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(text("SELECT id, balance FROM accounts"))}

    def prepared(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(
                conn.execute(
                    text("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                ).scalars()
            )

    def record(self, txid: str) -> str | None:
        with self.engine.connect() as conn:
            rec = sdk_record.get(conn, self.name, txid)
            return rec.state if rec else None

    def set_record(self, txid: str, state: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE txc_participant_record SET state = :s "
                    "WHERE participant = :p AND txid = :t"
                ),
                {"s": state, "p": self.name, "t": txid},
            )

    def manager(self, coordinator_url: str) -> PgResourceManager:
        return PgResourceManager(
            self.name,
            self.engine,
            public_url=self.public_url,
            coordinator_url=coordinator_url,
            development=True,  # the ops tests' node runs open (no tokens)
        )

    def work(self, coordinator_url: str, txid: str, account: str, delta: int) -> None:
        """The SDK's real path: prepare, record, enlist with vote yes."""
        rm = self.manager(coordinator_url)
        try:
            with rm.work(txid) as w:
                w.connection.execute(
                    text("UPDATE accounts SET balance = balance + :d WHERE id = :a"),
                    {"d": delta, "a": account},
                )
        finally:
            rm.close()

    def plant_prepared(self, txid: str, account: str, delta: int, *, record: bool) -> str:
        """Prepared work as a crash would leave it: with or without the SDK's record, and
        never enlisted."""
        gid = make_gid(self.name, txid)
        with self.engine.connect() as conn:
            conn.begin()
            conn.execute(
                text("UPDATE accounts SET balance = balance + :d WHERE id = :a"),
                {"d": delta, "a": account},
            )
            conn.exec_driver_sql(f"PREPARE TRANSACTION '{gid}'")
            conn.commit()
            if record:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                sdk_record.insert_if_absent(conn, self.name, txid, "prepared", gid)
        return gid

    def cleanup(self) -> None:
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            for gid in self.prepared():
                conn.exec_driver_sql(f"ROLLBACK PREPARED '{gid}'")
        self.engine.dispose()


def make_bank(pg: PgServer, name: str) -> Bank:
    url = pg.new_database(name.replace("-", "_"))
    engine = create_engine(url)
    create_tables(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id text PRIMARY KEY, balance int NOT NULL)"))
        conn.execute(
            text("INSERT INTO accounts SELECT x, 100 FROM unnest(CAST(:ids AS text[])) AS x"),
            {"ids": ACCOUNTS},
        )
    return Bank(name, url, engine)
