"""demo bank (txc_demo.bank): accounts and ledger

Only for the demo participant services' databases (same `participant` branch as the SDK's
record, which they also need). The tables match `txc_demo.bank.metadata`. Seeding the demo
accounts is done by the service on start-up, not here.

Revision ID: p0002
Revises: p0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0002"
down_revision = "p0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bank_account",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("balance >= 0", name="ck_bank_account_balance"),
    )
    op.create_table(
        "bank_ledger",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("txid", sa.String(128), nullable=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("bank_ledger")
    op.drop_table("bank_account")
