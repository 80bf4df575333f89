"""Which data folder belongs to which database: one id, written in both.

Recovery removes image files no row points at. That is right only when the rows and the files
belong together: started once against another database (a typo in `DALI_DATABASE_URL`, a move
to PostgreSQL without the data) it would take every image for an orphan. So the studio's first
start writes a random id into the database (`studio_identity`) and into the data folder
(`.dali-studio-id`); every later start compares them and refuses, with a message that says
what to do, when they differ or when one side has an id and the other has images to lose.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from sqlalchemy import select

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Generation, StudioIdentity

log = logging.getLogger(__name__)

ID_FILE = ".dali-studio-id"


class StudioMismatch(RuntimeError):
    """The data folder and the database are not the same studio's; nothing was touched."""


def _has_images(data_dir: Path) -> bool:
    images = data_dir / "images"
    return images.is_dir() and any(p.is_file() for p in images.rglob("*"))


def _write_id(path: Path, studio_id: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(studio_id + "\n", encoding="utf-8")
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def bind_data_folder(db: Database, data_dir: Path) -> str:
    """The studio id both sides agree on, writing it where it is missing and safe to; raises
    StudioMismatch (before anything is changed or deleted) when they belong to different
    studios."""
    id_file = data_dir / ID_FILE
    folder_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else None
    with db.session() as session:
        row = session.scalars(select(StudioIdentity)).first()
        db_id = row.id if row is not None else None
        if db_id is None and folder_id is None:
            # A studio from before the ids: its rows and files came together, unless the
            # database has no generation at all for the images the folder holds.
            if _has_images(data_dir) and session.scalar(select(Generation.id).limit(1)) is None:
                raise StudioMismatch(
                    f"the data folder {str(data_dir)!r} holds images, but the database has no "
                    "generations (a new or different database?): point DALI_DATABASE_URL at "
                    "the database these images belong to; to start afresh, use another "
                    "DALI_DATA_DIR (nothing was changed)"
                )
            studio_id = str(uuid.uuid4())
            session.add(StudioIdentity(id=studio_id))
            session.flush()
            _write_id(id_file, studio_id)
            return studio_id
        if db_id is not None and folder_id is not None and db_id != folder_id:
            raise StudioMismatch(
                f"the data folder {str(data_dir)!r} belongs to studio {folder_id}, but the "
                f"database belongs to studio {db_id}: check DALI_DATABASE_URL and DALI_DATA_DIR "
                "(nothing was changed)"
            )
        if db_id is None:  # a database new to this folder
            if _has_images(data_dir):
                raise StudioMismatch(
                    f"the data folder {str(data_dir)!r} holds the images of studio {folder_id}, "
                    "but the database has never seen it (a new or different database?): "
                    "point DALI_DATABASE_URL at that studio's database; to start afresh, "
                    f"use another DALI_DATA_DIR (nothing was changed)"
                )
            assert folder_id is not None
            session.add(StudioIdentity(id=folder_id))
            return folder_id
        if folder_id is None:  # a data folder new to this database
            if _has_images(data_dir):
                raise StudioMismatch(
                    f"the data folder {str(data_dir)!r} holds images but no studio id, and the "
                    f"database belongs to studio {db_id}: point DALI_DATA_DIR at that studio's "
                    "folder (nothing was changed)"
                )
            _write_id(id_file, db_id)
        return db_id
