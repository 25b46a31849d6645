"""A real MariaDB server for the tests (Debian's package, started in a temporary data
directory by `coordinator.embedded_mariadb`), skipped with a clear message where MariaDB is
not installed or does not start.

Import the fixtures from `tests.sdk.mariadb_fixture` (always that name: one module, so one
server per test session, however many test directories use it).

Set TXC_TEST_MARIADB_URL (a SQLAlchemy URL of a user that may create databases, e.g.
mysql+pymysql://root@127.0.0.1:3306/mysql) to use an existing server instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from coordinator import embedded_mariadb
from coordinator.embedded_mariadb import EmbeddedMariaDB, MariaDBNotInstalled
from participant_sdk import mysql_record
from participant_sdk.mysql_engine import create_engine
from participant_sdk.mysql_xid import format_id_for, parse_recover_row

_counter = itertools.count()


class MariaServer:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        u = make_url(server_url)
        self.host, self.port = u.host or "127.0.0.1", u.port or 3306

    def url(self, database: str) -> str:
        return make_url(self.server_url).set(database=database).render_as_string(False)

    def new_database(self, prefix: str = "m") -> str:
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        embedded_mariadb.create_database(self.host, self.port, name)
        return self.url(name)


def start_or_skip(root: Path, binlog: bool = False) -> EmbeddedMariaDB:
    """A started server in `root`, or the test is skipped saying why."""
    try:
        return EmbeddedMariaDB(root, binlog=binlog).start()
    except MariaDBNotInstalled as e:
        pytest.skip(str(e))
    except (RuntimeError, OSError) as e:
        pytest.skip(f"MariaDB is installed but did not start: {e}")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaServer]:
    external = os.environ.get("TXC_TEST_MARIADB_URL")
    if external:
        yield MariaServer(external)
        return
    root = Path(tempfile.mkdtemp(prefix="txc-test-mdb-"))
    server = start_or_skip(root)
    try:
        yield MariaServer(server.url())
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def rollback_branches(engine: Engine) -> None:
    """Roll back every prepared branch of `engine`'s database (they are server-wide and
    outlive the test)."""
    fmt = format_id_for(str(engine.url.database))
    with mysql_record.autocommit(engine) as conn:
        for row in conn.exec_driver_sql("XA RECOVER").all():
            xid = parse_recover_row(tuple(row))
            if xid is not None and xid.format_id == fmt:
                conn.exec_driver_sql(f"XA ROLLBACK {xid.sql}")


def branches(engine: Engine) -> list[str]:
    """The txids of the prepared branches in `engine`'s database."""
    fmt = format_id_for(str(engine.url.database))
    with mysql_record.autocommit(engine) as conn:
        rows = conn.exec_driver_sql("XA RECOVER").all()
    out = []
    for row in rows:
        xid = parse_recover_row(tuple(row))
        if xid is not None and xid.format_id == fmt and xid.txid is not None:
            out.append(xid.txid)
    return sorted(out)


def items(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {r.k: r.v for r in conn.execute(text("SELECT k, v FROM items"))}


def record_state(engine: Engine, participant: str, txid: str) -> str | None:
    with mysql_record.autocommit(engine) as conn:
        return mysql_record.state(conn, participant, txid)


@pytest.fixture
def make_my_engine() -> Iterator[Callable[[str], Engine]]:
    """Engines that are disposed, and whose databases' prepared branches are rolled back, at
    the end of the test."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        try:
            rollback_branches(engine)
        finally:
            engine.dispose()


@pytest.fixture
def my_url(mariadb: MariaServer) -> str:
    return mariadb.new_database()


@pytest.fixture
def my_engine(my_url: str, make_my_engine: Callable[[str], Engine]) -> Engine:
    """A participant database on MariaDB with the SDK's record table and an `items` table."""
    eng = make_my_engine(my_url)
    mysql_record.create_tables(eng)
    with eng.begin() as conn:
        conn.execute(
            text("CREATE TABLE items (k VARCHAR(64) PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB")
        )
    return eng
