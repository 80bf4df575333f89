"""Which file store belongs to which database: one id, written in both.

Recovery quarantines image files no row points at. That is right only when the rows and the
files belong together: started once against another database (a typo in `DALI_DATABASE_URL`, a
move to PostgreSQL without the data) it would take every image for an orphan; so would a studio
pointed at another studio's bucket. So the studio's first start writes a random id into the
database (`studio_identity`) and into the store (`.dali-studio-id`: in the data folder by
default, at the root of a `file://` folder or of an S3 prefix); every later start compares them
and refuses, with a message that says what to do, when they differ or when one side has an id
and the other has images to lose.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Generation, StudioIdentity
from stable_diffusion_api.services.object_store import ObjectStore

log = logging.getLogger(__name__)

ID_FILE = ".dali-studio-id"


class StudioMismatch(RuntimeError):
    """The store and the database are not the same studio's; nothing was touched."""


@dataclass(frozen=True)
class Place:
    """The store, as the messages name it: what it is ("the data folder '/srv/dali'") and the
    setting that chooses it (DALI_DATA_DIR, or DALI_STORAGE_URL)."""

    name: str
    setting: str


def _has_images(store: ObjectStore) -> bool:
    return next(iter(store.list("images")), None) is not None


def _read_id(store: ObjectStore) -> str | None:
    try:
        return store.get(ID_FILE).decode("utf-8").strip()
    except FileNotFoundError:
        return None


def _write_id(store: ObjectStore, studio_id: str) -> None:
    store.put(ID_FILE, (studio_id + "\n").encode("utf-8"))  # atomic, durable


def bind_store(db: Database, store: ObjectStore, place: Place) -> str:
    """The studio id both sides agree on, writing it where it is missing and safe to; raises
    StudioMismatch (before anything is changed or deleted) when they belong to different
    studios."""
    folder_id = _read_id(store)
    where, setting = place.name, place.setting
    with db.session() as session:
        row = session.scalars(select(StudioIdentity)).first()
        db_id = row.id if row is not None else None
        if db_id is None and folder_id is None:
            # A studio from before the ids: its rows and files came together, unless the
            # database has no generation at all for the images the store holds.
            if _has_images(store) and session.scalar(select(Generation.id).limit(1)) is None:
                raise StudioMismatch(
                    f"{where} holds images, but the database has no "
                    "generations (a new or different database?): point DALI_DATABASE_URL at "
                    "the database these images belong to; to start afresh, use another "
                    f"{setting} (nothing was changed)"
                )
            studio_id = str(uuid.uuid4())
            session.add(StudioIdentity(id=studio_id))
            session.flush()
            _write_id(store, studio_id)
            return studio_id
        if db_id is not None and folder_id is not None and db_id != folder_id:
            raise StudioMismatch(
                f"{where} belongs to studio {folder_id}, but the "
                f"database belongs to studio {db_id}: check DALI_DATABASE_URL and {setting} "
                "(nothing was changed)"
            )
        if db_id is None:  # a database new to this store
            if _has_images(store):
                raise StudioMismatch(
                    f"{where} holds the images of studio {folder_id}, "
                    "but the database has never seen it (a new or different database?): "
                    "point DALI_DATABASE_URL at that studio's database; to start afresh, "
                    f"use another {setting} (nothing was changed)"
                )
            assert folder_id is not None
            session.add(StudioIdentity(id=folder_id))
            return folder_id
        if folder_id is None:  # a store new to this database
            if _has_images(store):
                raise StudioMismatch(
                    f"{where} holds images but no studio id, and the "
                    f"database belongs to studio {db_id}: point {setting} at that studio's "
                    "files (nothing was changed)"
                )
            _write_id(store, db_id)
        return db_id
