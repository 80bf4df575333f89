"""The reverse-process filmstrip a generation keeps: its file and its frames' metadata.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: generations made before this have no filmstrip, and say so.
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("filmstrip_path", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("filmstrip", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("filmstrip")
        batch.drop_column("filmstrip_path")
