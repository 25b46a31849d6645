"""In-doubt recovery: a participant that prepared and then lost track (crash) resolves its
prepared transactions by asking the coordinator's /outcome."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from sdk_apps import serve_items
from sdk_helpers import items, prepared_gids, record_state
from sqlalchemy import Engine, text

from participant_sdk import MissingTransaction, PgResourceManager, make_gid
from participant_sdk.recovery import InDoubt, RecoveryLoop
from participant_sdk.recovery_cli import main as recovery_main

POLL_TIMEOUT_S = 20.0
POLL_STEP_S = 0.05


def prepare_then_crash(
    db_url: str, make_engine: Callable[[str], Engine], coord, txid: str, key: str
) -> None:
    """Do the work of `txid` in a participant instance, then drop that instance and its engine
    without resolving anything: its prepared transaction is left in doubt."""
    engine = make_engine(db_url)
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    with rm.work(txid) as w:
        w.connection.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": key})
    rm.close()
    engine.dispose()


def test_restart_applies_outcomes_and_leaves_pending(db_url, engine, make_engine, coord) -> None:
    coord.fake.drive_phase2 = False
    txs = {}
    for key in ("c", "a", "p"):
        txs[key] = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
        prepare_then_crash(db_url, make_engine, coord, txs[key], key)
    assert len(prepared_gids(engine)) == 3
    coord.fake.set_outcome(txs["c"], "commit")
    coord.fake.set_outcome(txs["a"], "abort")

    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    dry = rm.resolve_in_doubt(dry_run=True)
    assert dry.actions() == {
        txs["c"]: "would_commit",
        txs["a"]: "would_abort",
        txs["p"]: "left_pending",
    }
    assert len(prepared_gids(engine)) == 3 and items(engine) == {}  # dry run changed nothing

    report = rm.resolve_in_doubt()
    assert report.actions() == {
        txs["c"]: "committed",
        txs["a"]: "rolled_back",
        txs["p"]: "left_pending",
    }
    assert items(engine) == {"c": 1}
    assert prepared_gids(engine) == [make_gid("svc", txs["p"])]
    assert record_state(engine, "svc", txs["c"]) == "committed"
    assert record_state(engine, "svc", txs["a"]) == "aborted"
    assert record_state(engine, "svc", txs["p"]) == "prepared"
    # A second pass only asks about the pending one again.
    assert rm.resolve_in_doubt().actions() == {txs["p"]: "left_pending"}
    rm.close()


def test_orphan_and_half_finished_states(engine: Engine, coord) -> None:
    """Decided without asking: prepared with no record (crash before the record, so never
    enlisted) -> rolled back; record 'prepared' with nothing prepared (crash after COMMIT
    PREPARED) -> marked committed; record 'aborted' still prepared -> rolled back."""
    orphan, committed, aborting = "t-orphan", "t-committed", "t-aborting"
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        for txid in (orphan, aborting):
            conn.exec_driver_sql("BEGIN")
            conn.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": txid})
            conn.exec_driver_sql(f"PREPARE TRANSACTION '{make_gid('svc', txid)}'")
        conn.execute(
            text(
                "INSERT INTO txc_participant_record (participant, txid, state) VALUES "
                "('svc', :c, 'prepared'), ('svc', :a, 'aborted')"
            ),
            {"c": committed, "a": aborting},
        )
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    report = rm.resolve_in_doubt()
    assert report.actions() == {
        orphan: "rolled_back_orphan",
        committed: "committed",
        aborting: "rolled_back",
    }
    assert coord.fake.count("outcome") == 0
    assert prepared_gids(engine) == [] and items(engine) == {}
    assert record_state(engine, "svc", orphan) == "aborted"
    assert record_state(engine, "svc", committed) == "committed"
    rm.close()


def test_recovery_loop_runs_at_startup(db_url, engine, make_engine, coord) -> None:
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    prepare_then_crash(db_url, make_engine, coord, txid, "k")
    coord.fake.set_outcome(txid, "commit")
    with serve_items(engine, coord.url, recovery=True, recovery_interval_s=0.2):
        deadline = time.monotonic() + POLL_TIMEOUT_S
        while items(engine) != {"k": 1} and time.monotonic() < deadline:
            time.sleep(POLL_STEP_S)
    assert items(engine) == {"k": 1}
    assert prepared_gids(engine) == []


def test_work_naming_only_a_caller_coordinator_is_refused(engine: Engine, coord) -> None:
    """No coordinator configured: the URL a caller passes (its Txc-Coordinator header) does
    not become one. Nothing is done, nothing enlisted, and recovery has nobody to ask."""
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    rm = PgResourceManager("svc", engine, public_url="http://127.0.0.1:9")
    with pytest.raises(MissingTransaction) as e, rm.work(txid, coordinator_url=coord.url) as w:
        w.connection.execute(text("INSERT INTO items VALUES ('h', 1)"))
    assert e.value.code == "no_coordinator"
    assert items(engine) == {} and rm.in_doubt() == []
    assert coord.fake.txs[txid].participants == {}
    rm.close()


def test_recovery_cli(db_url, engine, make_engine, coord, capsys) -> None:
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    prepare_then_crash(db_url, make_engine, coord, txid, "z")
    coord.fake.set_outcome(txid, "commit")
    args = ["--name", "svc", "--database-url", db_url, "--coordinator-url", coord.url]
    assert recovery_main([*args, "--dry-run"]) == 0
    assert '"would_commit"' in capsys.readouterr().out
    assert recovery_main(args) == 0
    assert '"committed"' in capsys.readouterr().out
    assert items(engine) == {"z": 1}


def test_recent_work_waits_for_a_later_pass(db_url, engine, make_engine, coord) -> None:
    """A pass with `min_age_s` leaves out work prepared more recently than that (normal
    in-flight work under load) and does not ask the coordinator about it; a pass without the
    bound (start-up, the CLI) sees it."""
    coord.fake.drive_phase2 = False
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    prepare_then_crash(db_url, make_engine, coord, txid, "young")
    coord.fake.set_outcome(txid, "commit")
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    assert rm.resolve_in_doubt(min_age_s=60).items == []
    assert coord.fake.count("outcome") == 0 and len(prepared_gids(engine)) == 1
    time.sleep(0.3)
    assert rm.resolve_in_doubt(min_age_s=0.2).actions() == {txid: "committed"}
    assert items(engine) == {"young": 1}
    rm.close()


def test_recent_orphan_and_record_wait_too(engine: Engine, coord) -> None:
    """The age bound applies to both sources: prepared work without a record (age from
    pg_prepared_xacts) and a 'prepared' record without prepared work (age from the record)."""
    orphan, committed = "t-young-orphan", "t-young-committed"
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN")
        conn.execute(text("INSERT INTO items VALUES (:k, 1)"), {"k": orphan})
        conn.exec_driver_sql(f"PREPARE TRANSACTION '{make_gid('svc', orphan)}'")
        conn.execute(
            text(
                "INSERT INTO txc_participant_record (participant, txid, state) "
                "VALUES ('svc', :c, 'prepared')"
            ),
            {"c": committed},
        )
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    assert rm.in_doubt(min_age_s=60) == []
    assert {c.txid for c in rm.in_doubt()} == {orphan, committed}
    rm.close()


def test_recovery_loop_later_passes_skip_young_work(engine: Engine, coord) -> None:
    """The loop's first pass takes everything; later ones skip work younger than the
    interval, so an in-flight transaction is not asked about while phase 2 is on its way."""
    coord.fake.drive_phase2 = False
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    loop = RecoveryLoop(rm, interval_s=30.0)
    assert loop.next_min_age_s() == 0.0
    loop.start()
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while loop.passes < 1 and time.monotonic() < deadline:
        time.sleep(POLL_STEP_S)
    assert loop.passes == 1 and loop.next_min_age_s() == 30.0
    txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
    with rm.work(txid) as w:
        w.connection.execute(text("INSERT INTO items VALUES ('inflight', 1)"))
    report = rm.resolve_in_doubt(min_age_s=loop.next_min_age_s())
    assert report.items == [] and coord.fake.count("outcome") == 0
    assert [c.txid for c in rm.in_doubt()] == [txid]
    loop.stop()
    rm.close()


def test_prepared_work_past_the_listing_limit_is_asked_about_not_committed(
    db_url, engine, make_engine, coord, monkeypatch
) -> None:
    """More prepared transactions than one pass lists: the ones left out of the listing still
    count as prepared (the coordinator is asked), never as "committed, record lagging"
    (which would COMMIT PREPARED them without a decision)."""
    monkeypatch.setattr("participant_sdk.pg_resource.MAX_IN_DOUBT_PER_PASS", 1)
    coord.fake.drive_phase2 = False
    txids = []
    for key in ("first", "second", "third"):
        txid = httpx.post(f"{coord.url}/v1/transactions", json={}).json()["txid"]
        prepare_then_crash(db_url, make_engine, coord, txid, key)
        txids.append(txid)
    rm = PgResourceManager(
        "svc", engine, public_url="http://127.0.0.1:9", coordinator_url=coord.url
    )
    assert all(c.prepared for c in rm.in_doubt())
    report = rm.resolve_in_doubt()  # the coordinator has decided nothing: all stay pending
    assert set(report.actions().values()) == {"left_pending"}
    assert len(prepared_gids(engine)) == 3 and items(engine) == {}
    rm.close()


class _ManyPending:
    """A participant with five prepared transactions the coordinator leaves pending."""

    name = "many"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def in_doubt(self, min_age_s: float = 0.0) -> list[InDoubt]:
        return [InDoubt(t, prepared=True, record_state="prepared") for t in "edcba"]

    def coordinator_for(self, url: str | None) -> _ManyPending:
        return self

    def outcome(self, txid: str) -> str:
        self.asked.append(txid)
        return "pending"


def test_full_passes_take_turns_so_pending_work_cannot_hide_the_rest(monkeypatch) -> None:
    """With more candidates than a pass looks at, the next pass starts after the last txid
    the previous one saw (wrapping round): every candidate is looked at within a few passes."""
    monkeypatch.setattr("participant_sdk.recovery.MAX_IN_DOUBT_PER_PASS", 2)
    p = _ManyPending()
    loop = RecoveryLoop(p, interval_s=60)  # type: ignore[arg-type]
    seen = [[i.txid for i in loop.run_once().items] for _ in range(4)]
    assert seen == [["a", "b"], ["c", "d"], ["e", "a"], ["b", "c"]]
    assert set(p.asked) == set("abcde")
