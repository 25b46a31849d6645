"""Shared fixtures: one real embedded PostgreSQL server for the whole test session.

Set TXC_TEST_DATABASE_URL (a SQLAlchemy URL of a superuser on an existing server, e.g.
postgresql+psycopg://postgres@127.0.0.1:5432/postgres) to use that server instead; it must
have max_prepared_transactions > 0.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.embedded_pg import EmbeddedPostgres, create_database

_db_counter = itertools.count()


class PgServer:
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url

    def url(self, database: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(_db_counter)}"
        create_database(self.server_url, name)
        return self.url(name)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    external = os.environ.get("TXC_TEST_DATABASE_URL")
    if external:
        yield PgServer(external)
        return
    root = Path(tempfile.mkdtemp(prefix="txc-test-pg-"))
    server = EmbeddedPostgres(root).start()
    try:
        yield PgServer(server.url())
    finally:
        server.stop()
        # Its data folder holds every test database and their WAL (gigabytes by the end).
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db_url(pg: PgServer) -> str:
    """A fresh database on the session's server."""
    return pg.new_database()
