"""participant SDK: the record remembers which prepared transaction it is about (xid)

Every request of a txid prepares under the same gid. The new nullable `xid` column holds the
(32-bit) PostgreSQL transaction id of the prepared transaction the record was written for,
so that a prepared transaction left under the same gid by a duplicate request that died
before its record check refused it is rolled back instead of being taken for the recorded
one (see `PgResourceManager._prepared_here`). Records written before this migration have
no xid and are treated as before. Adding a nullable column rewrites nothing.

Revision ID: p0004
Revises: p0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0004"
down_revision = "p0003"
branch_labels = None
depends_on = None

TABLE = "txc_participant_record"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("xid", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column(TABLE, "xid")
