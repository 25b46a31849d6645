"""The `participant` Alembic branch creates the same tables as the SDK's SQLAlchemy metadata
(`create_tables()`), and nothing else: the demo bank creates its own tables."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, MetaData, inspect

from participant_sdk import record
from txc_demo import bank

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, VERSIONS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(engine: Engine, module: ModuleType, step: str) -> None:
    with engine.begin() as conn:
        with Operations.context(MigrationContext.configure(conn)):
            getattr(module, step)()


def shape(engine: Engine, tables: list[str]) -> dict:
    insp = inspect(engine)
    out = {}
    for t in tables:
        out[t] = {
            "columns": {
                c["name"]: (str(c["type"]), c["nullable"], c.get("default") is not None)
                for c in insp.get_columns(t)
            },
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "checks": sorted(c["name"] for c in insp.get_check_constraints(t)),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    str(i.get("dialect_options", {}).get("postgresql_where")),
                )
                for i in insp.get_indexes(t)
            ),
        }
    return out


def test_migrations_match_metadata(pg, make_engine: Callable[[str], Engine]) -> None:
    p1, p2 = load("p0001_participant_record"), load("p0002_demo_bank")
    p3 = load("p0003_participant_record_prepared_index")
    p4 = load("p0004_participant_xid")
    assert p1.branch_labels == ("participant",) and p1.down_revision is None
    assert p1.depends_on is None and p2.down_revision == p1.revision
    assert p3.down_revision == p2.revision and p4.down_revision == p3.revision
    tables = [record.TABLE_NAME, record.XID_TABLE_NAME]

    migrated = make_engine(pg.new_database("mig"))
    run(migrated, p1, "upgrade")
    run(migrated, p2, "upgrade")
    run(migrated, p3, "upgrade")
    run(migrated, p4, "upgrade")
    direct = make_engine(pg.new_database("meta"))
    record.create_tables(direct)
    assert shape(migrated, tables) == shape(direct, tables)
    # Only the SDK's tables: the demo bank's are the demo's to create (p0002 is empty now).
    assert set(inspect(migrated).get_table_names()) == set(tables)

    shapes = shape(migrated, tables)
    assert shapes[record.TABLE_NAME]["indexes"] == [
        (record.PREPARED_INDEX, ("participant", "txid"), "((state)::text = 'prepared'::text)")
    ]
    run(migrated, p4, "downgrade")
    assert not inspect(migrated).has_table(record.XID_TABLE_NAME)
    run(migrated, p3, "downgrade")
    assert [i[0] for i in shape(migrated, [record.TABLE_NAME])[record.TABLE_NAME]["indexes"]] == [
        record.OLD_STATE_INDEX
    ]
    run(migrated, p2, "downgrade")
    run(migrated, p1, "downgrade")
    reflected = MetaData()
    reflected.reflect(migrated)
    assert not set(tables) & set(reflected.tables)


def test_alembic_participant_branch(pg, make_engine: Callable[[str], Engine]) -> None:
    """Through Alembic itself (the project's env.py), as `txc migrate` runs it."""
    from coordinator import migrate

    url = pg.new_database("alembic")
    migrate.upgrade(url, "participant")
    migrate.upgrade(url, "participant")  # idempotent
    direct = make_engine(pg.new_database("meta"))
    record.create_tables(direct)
    tables = [record.TABLE_NAME, record.XID_TABLE_NAME]
    assert shape(make_engine(url), tables) == shape(direct, tables)
    # A participant's database gets the SDK's tables and Alembic's, nothing of the demo's.
    assert set(inspect(make_engine(url)).get_table_names()) == {*tables, "alembic_version"}
    # ... and the demo bank, started on such a database (as `txc up` does), adds its own.
    demo = make_engine(url)
    bank.init_database(demo)
    assert {"bank_account", "bank_ledger"} <= set(inspect(demo).get_table_names())
