"""participant SDK: the record's state index becomes a partial index of prepared records

`ix_txc_participant_record_state` (participant, state) is replaced by
`ix_txc_participant_record_prepared` (participant, txid) WHERE state = 'prepared'. Why:
PostgreSQL's generic plan for the phase-2 claim (`... WHERE participant = $1 AND txid = $2
AND state = 'prepared'`) chose the old index and then filtered on txid, reading every record
ever prepared by the participant (dead index entries included) on each commit. The new index
holds only undecided records and, keyed by the whole primary key, finds one row whichever
index a plan picks. Recovery's listing of prepared records reads it too.

Built with CREATE INDEX (not CONCURRENTLY: Alembic runs a migration in a transaction); on a
large record table, run this at a quiet time.

Revision ID: p0003
Revises: p0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "p0003"
down_revision = "p0002"
branch_labels = None
depends_on = None

TABLE = "txc_participant_record"


# DROP INDEX waits for an ACCESS EXCLUSIVE lock, i.e. behind every prepared transaction that
# read the record table (each work transaction does): fail with advice instead of hanging.
LOCK_TIMEOUT_MS = 10_000
IN_DOUBT_ADVICE = (
    "migration p0003 could not lock txc_participant_record within 10 s: the participant has "
    "work in doubt (see pg_prepared_xacts). Resolve it first (`txc recover --participant NAME "
    "--database-url URL --apply`, or run the previous release until its recovery has), then "
    "migrate again."
)


def upgrade() -> None:
    op.create_index(
        "ix_txc_participant_record_prepared",
        TABLE,
        ["participant", "txid"],
        postgresql_where=sa.text("state = 'prepared'"),
        sqlite_where=sa.text("state = 'prepared'"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
    try:
        op.drop_index("ix_txc_participant_record_state", table_name=TABLE)
    except sa.exc.OperationalError as e:
        raise RuntimeError(IN_DOUBT_ADVICE) from e
    if bind.dialect.name == "postgresql":
        op.execute(sa.text("SET LOCAL lock_timeout = 0"))


def downgrade() -> None:
    op.create_index("ix_txc_participant_record_state", TABLE, ["participant", "state"])
    op.drop_index("ix_txc_participant_record_prepared", table_name=TABLE)
