"""Upscaled images in the gallery: the image each was made from, and what was done to it.

`images.source_image_id` points at the image an upscale was made from (NULL for a generated
image, and NULL again once that image is deleted: ON DELETE SET NULL); `images.postprocessing`
holds AUTOMATIC1111's text of that name ("Postprocess upscale by: 2, Postprocess upscaler:
Lanczos"). Both nullable: every image made before this is a generated one.

SQLite cannot add a foreign key to a table in place, so batch mode copies the table there. The
copy keeps AUTOINCREMENT and its counter (`sqlite_sequence`): without them an image id deleted
before would be handed out again, and browsers keep the old picture cached under it. No other
table points at `images`, so dropping the old copy deletes nothing else.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_images_source_image_id"
FOREIGN_KEY = "fk_images_source_image_id"
COUNTER = "SELECT seq FROM sqlite_sequence WHERE name = 'images'"


@contextmanager
def images_table() -> Iterator[Any]:
    """`batch_alter_table("images")`, whose copy on SQLite keeps the id counter."""
    connection = op.get_bind()
    sqlite = connection.dialect.name == "sqlite"
    seq = connection.execute(sa.text(COUNTER)).scalar() if sqlite else None
    with op.batch_alter_table("images", table_kwargs={"sqlite_autoincrement": True}) as batch:
        yield batch
    if seq is not None:
        connection.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'images'"))
        connection.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('images', :seq)"),
            {"seq": seq},
        )


def upgrade() -> None:
    with images_table() as batch:
        batch.add_column(sa.Column("source_image_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("postprocessing", sa.Text(), nullable=True))
        batch.create_foreign_key(
            FOREIGN_KEY, "images", ["source_image_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index(INDEX, ["source_image_id"])


def downgrade() -> None:
    with images_table() as batch:
        batch.drop_index(INDEX)
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
        batch.drop_column("postprocessing")
        batch.drop_column("source_image_id")
