"""Why a job failed, as a kind rather than a message prefix: `generations.failure_kind`.

Existing rows get their kind once, from what their status and error text say: canceled →
cancelled; failed with an error beginning "interrupted" → interrupted; one naming "out of
memory" → out_of_memory; "internal error…" → internal; any other failure → invalid_input (the
engine or a check refused its inputs). Queued, running and succeeded rows have none.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The table as this revision knows it (the ORM knows only the newest schema).
_GENERATIONS = sa.table(
    "generations",
    sa.column("status", sa.String(16)),
    sa.column("error", sa.Text()),
    sa.column("failure_kind", sa.String(16)),
)


def _backfill() -> None:
    g = _GENERATIONS
    error = sa.func.lower(sa.func.coalesce(g.c.error, ""))
    op.execute(
        g.update()
        .where(g.c.status.in_(("failed", "canceled")))
        .values(
            failure_kind=sa.case(
                (g.c.status == "canceled", "cancelled"),
                (error.like("interrupted%"), "interrupted"),
                (error.like("%out of memory%"), "out_of_memory"),
                (error.like("internal error%"), "internal"),
                else_="invalid_input",
            )
        )
    )


def upgrade() -> None:
    # Nullable: a job that has not ended, or succeeded, has no failure kind.
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("failure_kind", sa.String(16), nullable=True))
    _backfill()


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("failure_kind")
