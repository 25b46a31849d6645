"""`txc recover` and `txc audit` on a MariaDB participant (a real MariaDB server and a real
coordinator node): the dry run lists the right actions and changes nothing, --apply resolves
the XA branches by asking the coordinator, the audit finds a planted orphan, and bad
database URLs are clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, text

from participant_sdk import mysql_record
from participant_sdk.mysql_engine import create_engine
from participant_sdk.mysql_resource import MySqlResourceManager
from tests.ops.helpers import txc, txc_json
from tests.sdk import mariadb_fixture as mdb
from tests.test_node import begin, running_node

mariadb = mdb.mariadb

DEAD_URL = "http://127.0.0.1:9"  # nothing listens there: phase 2 never reaches the bank
ACCOUNTS = ["a", "b", "c", "d", "e"]  # a prepared branch keeps its row locks: one each
UNTOUCHED = dict.fromkeys(ACCOUNTS, 100)


@dataclass
class MyBank:
    name: str
    url: str
    engine: Engine

    def balances(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, balance FROM accounts"))
            return {r[0]: int(r[1]) for r in rows}

    def prepared(self) -> list[str]:
        return mdb.branches(self.engine)

    def record(self, txid: str) -> str | None:
        return mdb.record_state(self.engine, self.name, txid)

    def work(self, coordinator_url: str, txid: str, account: str, delta: int) -> None:
        """The SDK's real path: XA PREPARE, record, enlist with vote yes."""
        rm = MySqlResourceManager(
            self.name,
            self.engine,
            public_url=DEAD_URL,
            coordinator_url=coordinator_url,
            development=True,
        )
        try:
            with rm.work(txid) as w:
                w.connection.execute(
                    text("UPDATE accounts SET balance = balance + :d WHERE id = :a"),
                    {"d": delta, "a": account},
                )
        finally:
            rm.close()

    def plant_prepared(self, txid: str, account: str, delta: int, *, record: bool) -> None:
        """A prepared branch as a crash leaves it: with or without its record, never
        enlisted."""
        rm = MySqlResourceManager(self.name, self.engine, public_url=DEAD_URL, development=True)
        xid = rm.xid(txid)
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"XA START {xid.sql}")
            conn.execute(
                text("UPDATE accounts SET balance = balance + :d WHERE id = :a"),
                {"d": delta, "a": account},
            )
            conn.exec_driver_sql(f"XA END {xid.sql}")
            conn.exec_driver_sql(f"XA PREPARE {xid.sql}")
            conn.invalidate()  # the session ends: the branch is detached
        if record:
            with mysql_record.autocommit(self.engine) as conn:
                mysql_record.insert_if_absent(conn, self.name, txid, "prepared", xid.display)


@pytest.fixture
def bank(mariadb: mdb.MariaServer) -> Iterator[MyBank]:
    url = mariadb.new_database("opsbank")
    engine = create_engine(url)
    mysql_record.create_tables(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id VARCHAR(8) PRIMARY KEY, balance INT)"))
        conn.execute(text("INSERT INTO accounts VALUES (:i, 100)"), [{"i": a} for a in ACCOUNTS])
    yield MyBank("bank-my", url, engine)
    mdb.rollback_branches(engine)
    engine.dispose()


async def test_recover_and_audit_a_mariadb_participant(bank: MyBank, node_db: str) -> None:
    async with running_node(node_db, phase2_inline_wait_s=0.2) as c:
        url = str(c.base_url)
        run = ("--url", url, "recover", "--participant", bank.name, "--database-url", bank.url)
        committed = await begin(c)
        await asyncio.to_thread(bank.work, url, committed, "a", 10)
        assert (await c.post(f"/v1/transactions/{committed}/commit")).json()["outcome"] == "commit"
        aborted = await begin(c)
        await asyncio.to_thread(bank.work, url, aborted, "b", 20)
        assert (await c.post(f"/v1/transactions/{aborted}/abort")).status_code == 200
        pending = await begin(c, timeout_s=600)
        await asyncio.to_thread(bank.work, url, pending, "c", 30)
        bank.plant_prepared("orphan-1", "d", 40, record=False)
        bank.plant_prepared("unknown-1", "e", 50, record=True)
        before = bank.prepared()
        assert len(before) == 5 and bank.balances() == UNTOUCHED

        # The audit sees what is wrong, read-only (grace 0: nothing counts as in flight).
        audit = ("--url", url, "audit", "--grace", "0", "--participant", f"{bank.name}={bank.url}")
        code, report = await asyncio.to_thread(txc_json, *audit)
        assert code == 6, report
        kinds = {f["txid"]: f["kind"] for f in report["participants"][0]["findings"]}
        assert kinds == {
            committed: "phase2_pending",  # the coordinator keeps sending it (to a dead URL)
            aborted: "phase2_pending",
            pending: "in_doubt",
            "orphan-1": "orphan",
            "unknown-1": "orphan",
        }

        code, report = await asyncio.to_thread(txc_json, *run)
        assert code == 6, report
        assert {i["txid"]: i["action"] for i in report["items"]} == {
            committed: "would_commit",
            aborted: "would_abort",
            pending: "left_pending",
            "orphan-1": "would_abort_orphan",
            "unknown-1": "would_abort",
        }
        notes = {i["txid"]: i["note"] for i in report["items"]}
        assert notes[committed] == "XA COMMIT" and "presumed abort" in notes["unknown-1"]
        assert bank.prepared() == before and bank.balances() == UNTOUCHED
        assert (await c.get("/v1/transactions/unknown-1")).status_code == 404

        code, report = await asyncio.to_thread(txc_json, *run, "--apply")
        assert code == 7, report  # the pending one is still in doubt
        assert {i["txid"]: i["action"] for i in report["items"]} == {
            committed: "committed",
            aborted: "rolled_back",
            pending: "left_pending",
            "orphan-1": "rolled_back_orphan",
            "unknown-1": "rolled_back",
        }
        assert bank.prepared() == [pending]
        assert bank.balances() == {**UNTOUCHED, "a": 110}
        assert bank.record(committed) == "committed" and bank.record("orphan-1") == "aborted"

        assert (await c.post(f"/v1/transactions/{pending}/abort")).status_code == 200
        code, report = await asyncio.to_thread(txc_json, *run, "--apply")
        assert code == 0, report
        assert bank.prepared() == [] and bank.balances() == {**UNTOUCHED, "a": 110}
        # Phase 2 of the committed one never reached the bank (dead URL), and the pending
        # one's abort is still being sent: audit lists those, nothing else.
        code, report = await asyncio.to_thread(txc_json, *audit)
        kinds = {f["txid"]: f["kind"] for f in report["participants"][0]["findings"]}
        assert set(kinds.values()) <= {"phase2_pending"}, report


async def test_bad_mariadb_urls_are_clear_errors(mariadb: mdb.MariaServer, node_db: str) -> None:
    missing = mariadb.url("no_such_participant_db")
    code, _, err = await asyncio.to_thread(
        txc, "recover", "--participant", "p", "--database-url", missing
    )
    assert code == 5 and "Unknown database 'no_such_participant_db'" in err, err
    code, _, err = await asyncio.to_thread(
        txc, "recover", "--participant", "p", "--database-url", "mysql+nosuchdriver://x/y"
    )
    assert code == 2 and "--database-url" in err, err
    # A MariaDB database that is not a participant's.
    plain = mariadb.new_database("plain")
    code, _, err = await asyncio.to_thread(
        txc, "--url", DEAD_URL, "audit", "--participant", f"p={plain}"
    )
    assert code == 2 and "txc_participant_record" in err, err
    assert "Traceback" not in err
