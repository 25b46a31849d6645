"""participant SDK: the durable per-transaction record (txc_participant_record)

Lives in each participant service's own database (not the coordinator's): apply this branch
with `alembic upgrade participant@head` against a participant database. The table matches
`participant_sdk.record.participant_record` (a test checks they agree); it is spelled out here
rather than imported so that this migration stays fixed when the SDK's code evolves.

Revision ID: p0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0001"
down_revision = None
branch_labels = ("participant",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "txc_participant_record",
        sa.Column("participant", sa.String(64), primary_key=True),
        sa.Column("txid", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("gid", sa.String(199), nullable=True),
        sa.Column("coordinator_url", sa.String(2048), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "state IN ('prepared', 'committed', 'aborted')",
            name="ck_txc_participant_record_state",
        ),
    )
    op.create_index(
        "ix_txc_participant_record_state", "txc_participant_record", ["participant", "state"]
    )


def downgrade() -> None:
    op.drop_index("ix_txc_participant_record_state", table_name="txc_participant_record")
    op.drop_table("txc_participant_record")
