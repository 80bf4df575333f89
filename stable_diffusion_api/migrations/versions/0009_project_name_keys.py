"""Project names unique by their case-folded form: the `name_key` column and its unique index.

`projects.name` was unique only byte for byte, and the service compared names with SQL lower(),
which SQLite applies to ASCII letters alone: `Ölbild` and `ölbild` could both exist. Each row's
key is filled here from its name (the same rule as `models.name_key`, copied so that this
revision keeps meaning what it meant).

Names that already collide by key are not refused (that would stop the studio from starting):
the oldest project (lowest id) keeps its name, and each later one is renamed with the first free
" (n)" suffix, n = 2, 3, … (cut to fit 100 characters), e.g. `ölbild` beside `Ölbild` becomes
`ölbild (2)`. The downgrade drops the column and keeps those new names.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MAX_NAME = 100
INDEX = "ix_projects_name_key"


def name_key(name: str) -> str:
    folded = unicodedata.normalize("NFC", " ".join(name.split())).casefold()
    return unicodedata.normalize("NFC", folded)


def suffixed(name: str, taken: set[str]) -> str:
    n = 2
    while True:
        suffix = f" ({n})"
        candidate = name[: MAX_NAME - len(suffix)] + suffix
        if name_key(candidate) not in taken:
            return candidate
        n += 1


def upgrade() -> None:
    # Nullable, and a unique index rather than a constraint: on SQLite either of the others means
    # copying the table, and dropping the old copy would cascade to every generation.
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("name_key", sa.String(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, name FROM projects ORDER BY id")).all()
    owner: dict[str, int] = {}  # key → the oldest project with it, which keeps its name
    for project_id, name in rows:
        owner.setdefault(name_key(name), project_id)
    taken = set(owner)
    for project_id, name in rows:
        key = name_key(name)
        if owner[key] != project_id:
            name = suffixed(name, taken)
            key = name_key(name)
            taken.add(key)
        connection.execute(
            sa.text("UPDATE projects SET name = :name, name_key = :key WHERE id = :id"),
            {"name": name, "key": key, "id": project_id},
        )
    op.create_index(INDEX, "projects", ["name_key"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="projects")
    # Not in batch mode, for the same reason: SQLite (3.35 and later) drops a column in place.
    op.drop_column("projects", "name_key")
