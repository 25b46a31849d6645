"""Every coordinator connection (the SQLAlchemy engine's and the hot path's) runs with the
session settings that correctness and speed rely on (coordinator/db.py SESSION_OPTIONS):
durable commits (DESIGN §3 rule 4) and custom plans (a generic plan made while a table was
empty stays a sequential scan as the table grows)."""

from __future__ import annotations

from sqlalchemy import text

from coordinator.db import make_engine
from coordinator.pgconn import HotConnection

SETTINGS = ("synchronous_commit", "plan_cache_mode")
EXPECTED = [("on",), ("force_custom_plan",)]


async def test_engine_and_hot_connections_run_with_the_session_settings(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.connect() as conn:
            got = [tuple((await conn.execute(text(f"SHOW {s}"))).one()) for s in SETTINGS]
        assert got == EXPECTED
    finally:
        await engine.dispose()
    hot = HotConnection(db_url)
    try:
        got = [tuple(r) for s in SETTINGS for r in await hot.fetchall(f"SHOW {s}", {})]
        assert got == EXPECTED
    finally:
        await hot.close()
