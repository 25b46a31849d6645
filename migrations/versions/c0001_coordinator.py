"""The coordinator node's tables: log, hard state, applied index, snapshot, transactions, history.

Revision ID: c0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "c0001"
down_revision = None
branch_labels = ("coordinator",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "txc_log",
        sa.Column("index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "txc_hard_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("vote", sa.Text),
        sa.Column("commit_index", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "txc_applied",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_applied", sa.BigInteger, nullable=False),
        sa.Column("last_applied_term", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "txc_snapshot",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("index", sa.BigInteger, nullable=False),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("config", JSONB, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "txc_transactions",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(8)),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.Column("heuristic", sa.String(8)),
        sa.Column("labels", JSONB, nullable=False),
        sa.Column("doc", JSONB, nullable=False),
    )
    op.create_index("txc_transactions_state_created", "txc_transactions", ["state", "created_at"])
    op.create_index("txc_transactions_created", "txc_transactions", ["created_at"])
    op.create_index(
        "txc_transactions_labels", "txc_transactions", ["labels"], postgresql_using="gin"
    )
    op.create_table(
        "txc_history",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", JSONB, nullable=False),
    )
    op.create_table(
        "txc_audit",
        sa.Column("index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("txid", sa.String(64), nullable=False),
        sa.Column("detail", JSONB, nullable=False),
    )
    op.create_table(
        "txc_members",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("url", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "txc_audit",
        "txc_members",
        "txc_history",
        "txc_transactions",
        "txc_snapshot",
        "txc_applied",
        "txc_hard_state",
        "txc_log",
    ):
        op.drop_table(table)
