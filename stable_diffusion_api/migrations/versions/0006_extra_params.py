"""Generation parameters without a column of their own, as one JSON object.

A `GenerationParams` field that has no column of the same name on `generations` is kept here
(`services/job_params.py` does the mapping), so adding a parameter needs no migration.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows from before this, and rows whose every parameter has a column, have none.
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("extra_params", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("extra_params")
