"""A running job can be asked to stop keeping what it made (A1111's interrupt).

`cancel_requested` asks a running job to stop and drop its work; `interrupt_requested` asks it
to stop at its next step and keep its images as they are (status `interrupted`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every existing row was never asked: false, also for rows written by older code. A
    # constant default, so SQLite adds the column in place: a copied table would be dropped,
    # and with foreign keys on that would delete every image row.
    with op.batch_alter_table("generations") as batch:
        batch.add_column(
            sa.Column("interrupt_requested", sa.Boolean(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("interrupt_requested")
