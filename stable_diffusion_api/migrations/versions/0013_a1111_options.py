"""A1111 options that mean nothing to Dali but that clients write and read back (`send_seed`,
UI and extension settings) are kept in their project's row, so they outlive a restart and every
web process answers the same (they were kept in one process's memory).

`projects` gains `a1111_options` (None: none sent yet).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable without a default, and not in batch mode: SQLite adds the column in place. A
    # copied `projects` table would, on dropping the old one, cascade to every generation.
    op.add_column("projects", sa.Column("a1111_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not in batch mode either: SQLite (3.35 and later) drops a column in place.
    op.drop_column("projects", "a1111_options")
