"""A dedicated psycopg connection for the statements that run on every log batch.

Why not the SQLAlchemy engine the rest of the node uses: on the hot path (persisting a Raft
Ready, applying committed commands, the single-node log's group commit) each batch is one
statement (coordinator/batch_sql.py), and SQLAlchemy's async layer (greenlet hop, pool
checkout with pre-ping, BEGIN/COMMIT round trips, result wrapping) measured ~1 ms of CPU per
such transaction here against ~0.27 ms for the same statement on a plain psycopg connection
in autocommit mode (`txc bench`'s profile: SQLAlchemy + psycopg were ~30% of a node's CPU).

One connection per task that uses it (the Raft loop, the applier, the single-node writer):
a task runs one statement at a time, so no pool and no locking are needed. Autocommit: a
single statement is its own transaction, and the connection runs with
`synchronous_commit=on`, so a statement that returned is durable (DESIGN §3 rule 4), and
with custom plans only (coordinator/db.py SESSION_OPTIONS says why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from coordinator.db import SESSION_OPTIONS

CONNECT_TIMEOUT_S = 10  # establishing the connection (libpq's connect_timeout, whole seconds)


def libpq_url(url: str) -> str:
    """The SQLAlchemy-style URL the node is configured with, as libpq accepts it."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class HotConnection:
    """Connects on first use and after a failure: a statement that failed because the
    connection broke raises, and the next one starts on a fresh connection."""

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                options=SESSION_OPTIONS,
            )
        return self._conn

    async def execute(self, query: str, params: Mapping[str, Any] | Sequence[Any]) -> None:
        conn = await self._connection()
        try:
            await conn.execute(query.encode(), params)  # type: ignore[arg-type]
        except psycopg.OperationalError:
            await self.close()
            raise

    async def fetchall(
        self, query: str, params: Mapping[str, Any] | Sequence[Any]
    ) -> list[tuple[Any, ...]]:
        conn = await self._connection()
        try:
            cur = await conn.execute(query.encode(), params)  # type: ignore[arg-type]
            return await cur.fetchall()
        except psycopg.OperationalError:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()
