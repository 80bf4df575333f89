"""Worker nodes: a process that runs workers registers its name, devices and models, a job
records the node that ran it, and a benchmark can be asked of another node.

`worker_processes` gains `node`, `devices` and `models` (None for a web host without
workers); `generations` gains `node`. A "node/device" id fits the device columns' 32
characters: node names are at most 24 (config.NODE_NAME).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from stable_diffusion_api.models import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns without a default: SQLite adds them in place (no copied table, which
    # with foreign keys on would delete every image row).
    with op.batch_alter_table("worker_processes") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))
        batch.add_column(sa.Column("devices", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("models", sa.JSON(), nullable=True))
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("node", sa.String(64), nullable=True))
    op.create_table(
        "benchmark_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("benchmark_requests")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("node")
    with op.batch_alter_table("worker_processes") as batch:
        batch.drop_column("models")
        batch.drop_column("devices")
        batch.drop_column("node")
