"""Database engines. Every coordinator connection runs with `synchronous_commit=on`: a commit
returns only once its WAL is flushed (DESIGN §3 rule 4), whatever the server's default."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

POOL_SIZE = 10
POOL_MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 10.0

# Session settings of every coordinator connection.
# - synchronous_commit=on: a commit returns only once its WAL is flushed (rule 4).
# - plan_cache_mode=force_custom_plan: psycopg prepares a statement after a few executions,
#   and PostgreSQL then keeps a generic plan if it looks no worse. Made while a table was
#   empty (a new node), that plan is a sequential scan, and it stayed one as the table grew:
#   the Raft log's `index > $n` cut scanned up to `snapshot_entries` rows on every persisted
#   Ready (half of PostgreSQL's CPU under `txc bench transfers`). Planning each execution
#   costs a little and always uses the table's current size.
SESSION_OPTIONS = "-c synchronous_commit=on -c plan_cache_mode=force_custom_plan"


def normalise_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// alike."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> AsyncEngine:
    return create_async_engine(
        normalise_url(url),
        pool_size=POOL_SIZE,
        max_overflow=POOL_MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={"options": SESSION_OPTIONS},
    )
