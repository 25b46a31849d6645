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
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect, text

from participant_sdk import pg_fastpath, record

DECIDED_RECORDS = 3000  # records that went prepared -> committed before the claim we measure
MAX_CLAIM_BUFFERS = 12  # a few index and heap pages; the old index read 73 here
VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"


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


def test_create_tables_adds_the_xid_column(engine: Engine, tmp_path: Path) -> None:
    """A record table made before p0004 (no xid) gets the column, on PostgreSQL and SQLite
    (the callback participant's record store), and its old records read with xid None."""
    sqlite = create_engine(f"sqlite:///{tmp_path / 'record.db'}")
    record.create_tables(sqlite)
    for eng in (engine, sqlite):
        with eng.begin() as conn:
            conn.execute(text(f"ALTER TABLE {record.TABLE_NAME} DROP COLUMN {record.XID_COLUMN}"))
            conn.execute(
                text(
                    f"INSERT INTO {record.TABLE_NAME} (participant, txid, state) "
                    "VALUES ('p', 'old', 'committed')"
                )
            )
        assert record.XID_COLUMN not in {
            c["name"] for c in inspect(eng).get_columns(record.TABLE_NAME)
        }
        record.create_tables(eng)
        record.create_tables(eng)  # idempotent
        with record.autocommit(eng) as conn:
            old = record.get(conn, "p", "old")
            assert old is not None and old.xid is None and old.state == "committed"
            assert record.insert_if_absent(conn, "p", "new", "prepared", "g", xid=42)
            new = record.get(conn, "p", "new")
            assert new is not None and new.xid == 42
    sqlite.dispose()
