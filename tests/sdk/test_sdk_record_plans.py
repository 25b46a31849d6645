"""The record's hot statements stay one-row lookups as the record table grows.

psycopg prepares a statement after a few runs and PostgreSQL may then use a generic plan. With
the old (participant, state) index, the generic plan of the phase-2 claim scanned every record
the participant had ever prepared (dead index entries too) and filtered on txid: a commit got
slower with every commit before it. These tests force the generic plan and count the buffers
one claim touches on a table with many decided records.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text

from participant_sdk import pg_fastpath, record

DECIDED_RECORDS = 3000  # records that went prepared -> committed before the claim we measure
MAX_CLAIM_BUFFERS = 12  # a few index and heap pages; the old index read 73 here
VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"
UPGRADE_WAIT_S = 20.0  # far above what creating a table takes; a lock wait never ends


def _fill(engine: Engine, participant: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {record.TABLE_NAME} (participant, txid, state) "
                "SELECT :p, 'done-' || g, 'prepared' FROM generate_series(1, :n) g"
            ),
            {"p": participant, "n": DECIDED_RECORDS},
        )
    with engine.begin() as conn:  # decided: each leaves a dead 'prepared' row version behind
        conn.execute(
            text(f"UPDATE {record.TABLE_NAME} SET state = 'committed' WHERE participant = :p"),
            {"p": participant},
        )
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {record.TABLE_NAME} (participant, txid, state) "
                "VALUES (:p, 'live', 'prepared')"
            ),
            {"p": participant},
        )


def _claim_plan(engine: Engine, participant: str) -> tuple[int, str]:
    """Buffers touched by one claim under a generic plan, and the plan's text."""
    sql = pg_fastpath._CLAIM_COMMIT_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)
    with engine.connect() as conn:
        trans = conn.begin()
        conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        conn.exec_driver_sql(f"PREPARE claim(text, text) AS {sql}")
        lines = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE claim('{participant}', 'live')"
        ).scalars()
        plan = "\n".join(lines)
        trans.rollback()  # the claim itself is not wanted
        conn.exec_driver_sql("DEALLOCATE claim")  # prepared statements outlive transactions
    buffers = sum(int(n) for n in re.findall(r"shared hit=(\d+)", plan.split("Planning")[0]))
    return buffers, plan


def test_the_phase_2_claim_reads_one_row_among_thousands(engine: Engine) -> None:
    _fill(engine, "bank")
    buffers, plan = _claim_plan(engine, "bank")
    assert "Update on" in plan and "rows=1" in plan, plan
    assert buffers <= MAX_CLAIM_BUFFERS, plan


def test_create_tables_replaces_the_old_state_index(engine: Engine) -> None:
    """A database made by an earlier SDK (p0001's index) is brought up to date by
    create_tables, and the claim is a one-row lookup there too."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {record.PREPARED_INDEX}"))
        conn.execute(
            text(
                f"CREATE INDEX {record.OLD_STATE_INDEX} ON {record.TABLE_NAME} (participant, state)"
            )
        )
    _fill(engine, "bank")
    old_buffers, old_plan = _claim_plan(engine, "bank")
    assert old_buffers > MAX_CLAIM_BUFFERS, old_plan  # the cost this change removes

    record.create_tables(engine)
    names = {i["name"] for i in inspect(engine).get_indexes(record.TABLE_NAME)}
    assert names == {record.PREPARED_INDEX}
    buffers, plan = _claim_plan(engine, "bank")
    assert buffers <= MAX_CLAIM_BUFFERS, plan
    record.create_tables(engine)  # idempotent


def test_recovery_lists_prepared_records_only(engine: Engine) -> None:
    _fill(engine, "bank")
    with record.autocommit(engine) as conn:
        listed = record.list_prepared(conn, "bank")
        assert [r.txid for r in listed] == ["live"]
        assert record.list_prepared(conn, "other") == []


def test_migration_p0003_is_in_the_participant_branch() -> None:
    spec = importlib.util.spec_from_file_location(
        "p0003", VERSIONS / "p0003_participant_record_prepared_index.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (module.revision, module.down_revision) == ("p0003", "p0002")


def test_schema_upgrades_do_not_wait_for_work_in_doubt(
    engine: Engine, pg, make_engine, tmp_path: Path
) -> None:
    """Every work transaction reads the record table, and a prepared one keeps that lock
    until it is resolved, which the starting participant does only after its tables are
    ready. So neither create_tables (run at each start) nor migration p0004 may take a lock
    that waits for it (ALTER TABLE on the record table would, for ever)."""
    # A database from before p0003 (its old index), with work in doubt.
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE INDEX {record.OLD_STATE_INDEX} ON {record.TABLE_NAME} (participant, state)"
            )
        )
    gid = "txc:doubt:t-1"
    with engine.connect() as conn:
        conn.execute(text(f"SELECT count(*) FROM {record.TABLE_NAME}"))
        conn.exec_driver_sql(f"PREPARE TRANSACTION '{gid}'")
    try:
        done = threading.Event()

        def start_up() -> None:
            record.create_tables(engine)
            done.set()

        threading.Thread(target=start_up, daemon=True).start()
        assert done.wait(UPGRADE_WAIT_S), "create_tables waited for a prepared transaction"
        # The old index could not be dropped without waiting: kept for a later start.
        assert record.OLD_STATE_INDEX in _index_names(engine)

        # A database at p0003 with work in doubt: p0004 applies without waiting.
        old = make_engine(pg.new_database("p3"))
        for name in (
            "p0001_participant_record",
            "p0002_demo_bank",
            "p0003_participant_record_prepared_index",
        ):
            _migrate(old, name, "upgrade")
        old_gid = "txc:doubt:t-2"
        with old.connect() as conn:
            conn.execute(text(f"SELECT count(*) FROM {record.TABLE_NAME}"))
            conn.exec_driver_sql(f"PREPARE TRANSACTION '{old_gid}'")
        migrated = threading.Event()

        def upgrade() -> None:
            _migrate(old, "p0004_participant_xid", "upgrade")
            migrated.set()

        threading.Thread(target=upgrade, daemon=True).start()
        assert migrated.wait(UPGRADE_WAIT_S), "migration p0004 waited for a prepared transaction"
        assert inspect(old).has_table(record.XID_TABLE_NAME)
    finally:
        for eng in [engine] + ([old] if "old" in locals() else []):
            with eng.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                for g in conn.execute(
                    text("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")
                ).scalars():
                    conn.exec_driver_sql(f"ROLLBACK PREPARED '{g}'")
    record.create_tables(engine)  # nothing in doubt now: the old index goes
    assert _index_names(engine) == {record.PREPARED_INDEX}


def _index_names(engine: Engine) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(record.TABLE_NAME)}


def test_migration_p0003_with_work_in_doubt_fails_with_advice(pg, make_engine) -> None:
    """p0003 drops an index, which waits behind prepared transactions that read the record
    table: it gives up after its lock timeout with what to do, instead of hanging, and
    changes nothing."""
    eng = make_engine(pg.new_database("p2"))
    _migrate(eng, "p0001_participant_record", "upgrade")
    _migrate(eng, "p0002_demo_bank", "upgrade")
    with eng.connect() as conn:
        conn.execute(text(f"SELECT count(*) FROM {record.TABLE_NAME}"))
        conn.exec_driver_sql("PREPARE TRANSACTION 'txc:doubt:t-3'")
    try:
        with pytest.raises(RuntimeError, match="txc recover"):
            _migrate(eng, "p0003_participant_record_prepared_index", "upgrade", LOCK_TIMEOUT_MS=300)
        assert _index_names(eng) == {record.OLD_STATE_INDEX}
    finally:
        with eng.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("ROLLBACK PREPARED 'txc:doubt:t-3'")
    _migrate(eng, "p0003_participant_record_prepared_index", "upgrade")
    assert _index_names(eng) == {record.PREPARED_INDEX}


def _migrate(engine: Engine, name: str, step: str, **overrides: object) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    spec = importlib.util.spec_from_file_location(name, VERSIONS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for key, value in overrides.items():
        setattr(module, key, value)
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        getattr(module, step)()
