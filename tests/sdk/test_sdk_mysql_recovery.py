"""In-doubt recovery of a MariaDB participant against a real server: a participant process
SIGKILLed after XA PREPARE (with and without its record), a MariaDB server SIGKILLed with
prepared branches (with and without a binary log), the half-finished states a crash leaves
between a decision and its XA COMMIT/ROLLBACK, and the recovery CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from participant_sdk import mysql_record
from participant_sdk.mysql_engine import create_engine
from participant_sdk.mysql_resource import MySqlResourceManager
from participant_sdk.recovery_cli import main as recovery_main
from tests.sdk import mariadb_fixture as mdb
from tests.sdk.mariadb_fixture import branches, items, record_state, rollback_branches

mariadb, my_url, my_engine, make_my_engine = (
    mdb.mariadb,
    mdb.my_url,
    mdb.my_engine,
    mdb.make_my_engine,
)

REPO = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT_S = 30.0
KILL_WAIT_S = 10.0


def manager(engine: Engine, coord) -> MySqlResourceManager:
    return MySqlResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )


def begin(coord) -> str:
    return str(httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"])


def run_and_kill(url: str, coord, *args: str, until: str = "READY") -> None:
    """Start the crash worker, wait for `until` on its stdout, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sdk.mysql_crash_worker", url, coord.url, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        seen = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.strip() == until:
                break
        else:
            raise AssertionError(f"worker did not say {until}: {''.join(seen)}")
        assert seen and seen[-1].strip() == until, "".join(seen)
    finally:
        proc.kill()
        proc.wait(KILL_WAIT_S)


def test_participant_killed_after_prepare_follows_the_outcomes(
    my_url: str, my_engine: Engine, coord
) -> None:
    """SIGKILL after XA PREPARE, record and enlistment: the branches survive their sessions'
    end; a restarted participant asks the coordinator and commits, rolls back, or waits."""
    coord.fake.drive_phase2 = False
    txs = {k: begin(coord) for k in ("commit", "abort", "pending")}
    run_and_kill(my_url, coord, *txs.values())
    assert branches(my_engine) == sorted(txs.values())
    coord.fake.set_outcome(txs["commit"], "commit")
    coord.fake.set_outcome(txs["abort"], "abort")
    rm = manager(my_engine, coord)
    dry = rm.resolve_in_doubt(dry_run=True)
    assert dry.actions() == {
        txs["commit"]: "would_commit",
        txs["abort"]: "would_abort",
        txs["pending"]: "left_pending",
    }
    assert len(branches(my_engine)) == 3 and items(my_engine) == {}
    assert rm.resolve_in_doubt().actions() == {
        txs["commit"]: "committed",
        txs["abort"]: "rolled_back",
        txs["pending"]: "left_pending",
    }
    assert items(my_engine) == {txs["commit"][:8]: 1}
    assert branches(my_engine) == [txs["pending"]]
    assert record_state(my_engine, "svc", txs["abort"]) == "aborted"
    # A pass with an age bound leaves young work alone; the pending one is asked again.
    assert rm.resolve_in_doubt(min_age_s=3600).items == []
    assert rm.resolve_in_doubt().actions() == {txs["pending"]: "left_pending"}
    rm.close()


def test_participant_killed_between_prepare_and_record_is_rolled_back(
    my_url: str, my_engine: Engine, coord
) -> None:
    """The window where the branch is prepared but neither recorded nor enlisted: nobody
    counts on it, so recovery rolls it back without asking the coordinator."""
    coord.fake.drive_phase2 = False
    txid = begin(coord)
    run_and_kill(my_url, coord, "--before-record", txid, until="PREPARED-NO-RECORD")
    rm = manager(my_engine, coord)
    # The killed session's end is processed by the server asynchronously: the branch is
    # listed at once and detached a moment later; recovery waits that out.
    assert [c.txid for c in rm.in_doubt()] == [txid]
    assert rm.resolve_in_doubt().actions() == {txid: "rolled_back_orphan"}
    assert coord.fake.count("outcome") == 0 and coord.fake.count("enlist") == 0
    assert branches(my_engine) == [] and items(my_engine) == {}
    assert record_state(my_engine, "svc", txid) == "aborted"  # late work is refused
    rm.close()


def test_half_finished_states_are_finished_without_asking(my_engine: Engine, coord) -> None:
    """A crash between a decision in the record and its XA COMMIT/ROLLBACK, and after XA
    COMMIT before the record: recovery finishes each from the record alone."""
    coord.fake.drive_phase2 = False
    rm = manager(my_engine, coord)
    committing, aborting, committed = begin(coord), begin(coord), begin(coord)
    for txid in (committing, aborting, committed):
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": txid[:8]})
    with mysql_record.autocommit(my_engine) as conn:
        assert mysql_record.claim_prepared_commit(conn, "svc", committing)  # ... and crash
        assert mysql_record.claim_abort(conn, "svc", aborting)  # ... and crash
        conn.exec_driver_sql(f"XA COMMIT {rm.xid(committed).sql}")  # ... record not updated
    assert rm.resolve_in_doubt().actions() == {
        committing: "committed",
        aborting: "rolled_back",
        committed: "committed",
    }
    assert coord.fake.count("outcome") == 0
    assert sorted(items(my_engine)) == sorted([committing[:8], committed[:8]])
    assert branches(my_engine) == []
    assert record_state(my_engine, "svc", committed) == "committed"
    rm.close()


@pytest.mark.parametrize("binlog", [False, True], ids=["innodb-only", "binlog"])
def test_prepared_branches_survive_a_server_crash(tmp_path: Path, coord, binlog: bool) -> None:
    """SIGKILL of mariadbd with a prepared branch (its session already gone), restart on the
    same data: XA RECOVER lists the branch again, and the record with it; recovery applies
    the outcome. With a binary log, the binlog is the server's transaction coordinator and
    recovers the XA PREPARE from it (MariaDB >= 10.5), so both configurations qualify."""
    server = mdb.start_or_skip(tmp_path / "mdb", binlog=binlog)
    engine = None
    try:
        url = mdb.MariaServer(server.url()).new_database("crash")
        engine = create_engine(url)
        mysql_record.create_tables(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE items (k VARCHAR(64) PRIMARY KEY, v INT NOT NULL)"))
        coord.fake.drive_phase2 = False
        rm = manager(engine, coord)
        txid = begin(coord)
        with rm.work(txid) as w:
            w.connection.execute(text("INSERT INTO items VALUES ('survivor', 1)"))
        rm.close()
        engine.dispose()
        server.kill()
        server.start()
        assert branches(engine) == [txid]
        assert record_state(engine, "svc", txid) == "prepared"
        coord.fake.set_outcome(txid, "commit")
        rm = manager(engine, coord)
        assert rm.resolve_in_doubt().actions() == {txid: "committed"}
        assert items(engine) == {"survivor": 1} and branches(engine) == []
        rm.close()
    finally:
        if engine is not None:
            if server.running():
                rollback_branches(engine)
            engine.dispose()
        server.stop()


def test_recovery_cli_on_a_mariadb_url(my_url: str, my_engine: Engine, coord, capsys) -> None:
    coord.fake.drive_phase2 = False
    txid = begin(coord)
    run_and_kill(my_url, coord, txid)
    coord.fake.set_outcome(txid, "commit")
    args = ["--name", "svc", "--database-url", my_url, "--coordinator-url", coord.url]
    assert recovery_main([*args, "--dry-run"]) == 0
    assert '"would_commit"' in capsys.readouterr().out
    assert recovery_main(args) == 0
    assert '"committed"' in capsys.readouterr().out
    assert items(my_engine) == {txid[:8]: 1}
    # A database URL that leads nowhere: a clear error and exit 5, no stack trace.
    bad = my_url.rsplit("/", 1)[0] + "/no_such_database"
    assert (
        recovery_main(["--name", "svc", "--database-url", bad, "--coordinator-url", coord.url]) == 5
    )
    assert "cannot read the participant database" in capsys.readouterr().err
