"""participant SDK: which prepared transaction each record is about (txc_participant_xid)

Every request of a txid prepares under the same gid. `txc_participant_xid` holds, per
(participant, txid), the (32-bit) PostgreSQL transaction id of the prepared transaction the
record was written for, so that one left under the same gid by a duplicate request that died
before its record check refused it is rolled back instead of being taken for the recorded
one (see `PgResourceManager._prepared_here`). Records written before this migration have no
row and are treated as before.

A new table rather than a column of `txc_participant_record`: ALTER TABLE ... ADD COLUMN
waits for an ACCESS EXCLUSIVE lock, i.e. for every prepared transaction that has read the
record table (each work transaction does), which only the upgraded participant resolves.
CREATE TABLE takes no lock on existing tables, so this runs with work in doubt.

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

TABLE = "txc_participant_xid"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("participant", sa.String(64), primary_key=True),
        sa.Column("txid", sa.String(128), primary_key=True),
        sa.Column("xid", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
