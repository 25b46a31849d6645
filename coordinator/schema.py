"""The coordinator node's tables (SQLAlchemy Core). Alembic's `coordinator` branch creates
them; `migrations/versions/c0*.py` must stay in step with this file."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# The log: one row per entry. For a single node every entry is committed when written; under
# Raft an entry can be overwritten until it is committed.
log_entries = Table(
    "txc_log",
    metadata,
    Column("index", BigInteger, primary_key=True, autoincrement=False),
    Column("term", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# Term and vote in one row, written in one synchronous transaction (DESIGN §3 rule 4).
hard_state = Table(
    "txc_hard_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("term", BigInteger, nullable=False),
    Column("vote", Text),
    Column("commit_index", BigInteger, nullable=False),
)

# How far the applied state goes; advanced in the same transaction as the apply.
applied_state = Table(
    "txc_applied",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_applied", BigInteger, nullable=False),
    Column("last_applied_term", BigInteger, nullable=False),
    # Tombstones forgotten before this time are purged (replicated state: coordinator/retention.py).
    Column("tombstone_horizon", Double, nullable=False, server_default="0"),
)

# The last snapshot's metadata (log compaction); the snapshot's content is the applied state.
snapshot_meta = Table(
    "txc_snapshot",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("index", BigInteger, nullable=False),
    Column("term", BigInteger, nullable=False),
    Column("config", JSONB, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# The applied state: one row per transaction; `doc` is the whole record, the other columns
# are copies kept for filtering and sorting.
transactions = Table(
    "txc_transactions",
    metadata,
    Column("txid", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("outcome", String(8)),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("heuristic", String(8)),
    Column("labels", JSONB, nullable=False),
    Column("doc", JSONB, nullable=False),
    Index("txc_transactions_state_created", "state", "created_at"),
    Index("txc_transactions_created", "created_at"),
    Index("txc_transactions_labels", "labels", postgresql_using="gin"),
    # Retention looks for finished records by age (coordinator/retention.py).
    Index("txc_transactions_state_updated", "state", "updated_at"),
)

# What stays of a forgotten transaction in the replicated state: its decision, for
# `tombstone_retention_s` (coordinator/retention.py). Columns only (no document): there is
# one row per transaction of the last day at full load, so each row is kept small.
tombstones = Table(
    "txc_tombstones",
    metadata,
    Column("txid", String(64), primary_key=True),
    Column("outcome", String(8), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("decided_at", Double, nullable=False),
    Column("completed_at", Double, nullable=False),
    Column("forgotten_at", Double, nullable=False),
    Index("txc_tombstones_forgotten", "forgotten_at"),
)

# Finished transactions' full records once forgotten: this node's own history, append-only,
# not replicated, not in snapshots, not in memory; deleted after `history_retention_days`
# in bounded batches (coordinator/history.py).
archive = Table(
    "txc_archive",
    metadata,
    Column("txid", String(64), primary_key=True),
    Column("forgotten_at", Double, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("outcome", String(8)),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("doc", JSONB, nullable=False),
    Index("txc_archive_created", "created_at"),
    Index("txc_archive_forgotten", "forgotten_at"),
    Index("txc_archive_labels", "labels", postgresql_using="gin"),
)

# Each applied command that changed a transaction: the timeline the dashboard and `txc show`
# display. Kept apart from the log because compaction drops log entries.
history = Table(
    "txc_history",
    metadata,
    Column("txid", String(64), primary_key=True),
    Column("index", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", Integer, primary_key=True, autoincrement=False),  # position in the entry
    Column("at", Double, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", JSONB, nullable=False),
)

# The address of every member the group has known: founding members from configuration,
# later ones from the log (a node added by `txc cluster add-node`).
members = Table(
    "txc_members",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("url", Text, nullable=False),
)

# The audit trail: operators' actions, applied from the log on every node.
audit = Table(
    "txc_audit",
    metadata,
    Column("index", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Double, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("txid", String(64), nullable=False),
    Column("detail", JSONB, nullable=False),
)
