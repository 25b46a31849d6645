"""Retention: tombstones, the history (archive) table, the tombstone horizon, and an index
to find finished records by age.

Revision ID: c0002
Revises: c0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "txc_applied",
        sa.Column("tombstone_horizon", sa.Double, nullable=False, server_default="0"),
    )
    op.create_index("txc_transactions_state_updated", "txc_transactions", ["state", "updated_at"])
    op.create_table(
        "txc_tombstones",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("decided_at", sa.Double, nullable=False),
        sa.Column("completed_at", sa.Double, nullable=False),
        sa.Column("forgotten_at", sa.Double, nullable=False),
    )
    op.create_index("txc_tombstones_forgotten", "txc_tombstones", ["forgotten_at"])
    op.create_table(
        "txc_archive",
        sa.Column("txid", sa.String(64), primary_key=True),
        sa.Column("forgotten_at", sa.Double, primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(8)),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("labels", JSONB, nullable=False),
        sa.Column("doc", JSONB, nullable=False),
    )
    op.create_index("txc_archive_created", "txc_archive", ["created_at"])
    op.create_index("txc_archive_forgotten", "txc_archive", ["forgotten_at"])
    op.create_index("txc_archive_labels", "txc_archive", ["labels"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_table("txc_archive")
    op.drop_table("txc_tombstones")
    op.drop_index("txc_transactions_state_updated", "txc_transactions")
    op.drop_column("txc_applied", "tombstone_horizon")
