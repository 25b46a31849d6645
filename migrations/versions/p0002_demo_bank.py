"""demo bank (txc_demo.bank): nothing any more (kept so that the participant branch's chain of
revisions stays the one existing databases have recorded)

Until this release this revision created the demo bank's `bank_account` and `bank_ledger`
tables, and since it sits on the `participant` branch, `txc migrate --branch participant`
created them in every participant's database, demo or not. The demo bank creates its own
tables on start-up (`txc_demo.bank.init_database`), so this revision now does nothing in
either direction. A database migrated by an earlier release keeps the two tables: nothing of
txc reads them, and outside a demo they can be dropped (`DROP TABLE bank_ledger,
bank_account`).

Revision ID: p0002
Revises: p0001
Create Date: 2026-11-26
"""

from __future__ import annotations

revision = "p0002"
down_revision = "p0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing: see the module's docstring."""


def downgrade() -> None:
    """Nothing: the tables an earlier release created may hold a demo's data; they are not
    the participant branch's to drop."""
