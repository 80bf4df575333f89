"""Variation seeds (AUTOMATIC1111's subseed / subseed strength) on generations.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("variation_seed", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("variation_strength", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("variation_strength")
        batch.drop_column("variation_seed")
