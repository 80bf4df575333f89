"""A full disk for the studio's SQLite database, raised by SQLite itself.

Each connection the pool hands out sets `PRAGMA max_page_count` to the cap of the moment: at
the file's size, a write that needs one more page fails with SQLITE_FULL ("database or disk is
full"), as on a full disk, while a write that fits in the pages there still works. The pool
itself is kept, so a connection that a refused write had broken would show.

`disk_full(db)` does it within a block, in the test's process; `build` is a uvicorn factory
(`uvicorn --factory tests.api.disk_full:build`) whose database is full while the file named by
the environment variable `DISK_FULL_FLAG` exists (it holds the cap, in pages).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine, event

from stable_diffusion_api.db import Database

NO_CAP = 2**30  # pages: as good as none


def cap_pages(engine: Engine, cap: Callable[[], int]) -> None:
    """From now on, each connection `engine`'s pool hands out may hold at most `cap()` pages."""

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {int(cap())}")
        cursor.close()

    event.listen(engine, "checkout", on_checkout)


def page_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("PRAGMA page_count").scalar() or 0)


@contextmanager
def disk_full(db: Database) -> Iterator[None]:
    """Within the block, the database file cannot grow; afterwards it can."""
    cap = {"pages": page_count(db.engine)}
    cap_pages(db.engine, lambda: cap["pages"])
    try:
        yield
    finally:
        cap["pages"] = NO_CAP


def build() -> FastAPI:
    """The studio with the A1111 routes (tests/a1111/server_app.py), its disk full while the
    file `$DISK_FULL_FLAG` exists."""
    from stable_diffusion_api.sd_api import create_app
    from tests.a1111.server_app import with_a1111

    flag = Path(os.environ["DISK_FULL_FLAG"])

    def cap() -> int:
        try:
            return int(flag.read_text())
        except FileNotFoundError:
            return NO_CAP

    app = create_app()
    cap_pages(app.state.studio.db.engine, cap)
    return with_a1111(app)
