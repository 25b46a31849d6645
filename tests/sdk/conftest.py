"""Fixtures of the participant SDK's tests: a fake coordinator served over real HTTP, a
participant database with the SDK's record table, and cleanup of prepared transactions (they
are server-wide, survive the test, and would block dropping the database)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sdk_real
from fake_coordinator import FakeCoordinator
from sdk_helpers import rollback_all_prepared
from sdk_real import coordinator_url, two_banks  # noqa: F401  (fixtures)
from sdk_servers import free_port, serve
from sqlalchemy import Engine, create_engine, text

from participant_sdk import create_tables


@dataclass
class Coord:
    fake: FakeCoordinator
    url: str


@pytest.fixture
def coord() -> Iterator[Coord]:
    fake = FakeCoordinator()
    with serve(fake.app) as server:
        yield Coord(fake, server.url)


@pytest.fixture
def make_engine() -> Iterator[Callable[[str], Engine]]:
    """Engines that are disposed, and whose databases' prepared transactions are rolled
    back, at the end of the test."""
    engines: list[Engine] = []

    def make(url: str) -> Engine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        try:
            rollback_all_prepared(engine)
        finally:
            engine.dispose()


@pytest.fixture
def engine(db_url: str, make_engine: Callable[[str], Engine]) -> Engine:
    """The participant's database, with the SDK record table and a small `items` table."""
    eng = make_engine(db_url)
    create_tables(eng)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE items (k text PRIMARY KEY, v int NOT NULL)"))
    return eng


@pytest.fixture
def svc(coordinator_url: str, engine: Engine) -> Iterator[Any]:  # noqa: F811
    """A participant outside FastAPI (`rm.work(..., deferred=True)`), with no server: the
    coordinator cannot reach it, so only its recovery settles its work. It follows whichever
    `coordinator_url` the test module defines."""
    from participant_sdk import PgResourceManager

    rm = PgResourceManager(
        "svc",
        engine,
        public_url=f"http://127.0.0.1:{free_port()}",
        coordinator_url=coordinator_url,
        token=sdk_real.API_TOKEN,
        participant_token=sdk_real.PARTICIPANT_TOKEN,
        deferred_enlistment=True,
    )
    yield rm
    rm.close()
