"""A database migrated once per test session, copied into each test's data folder.

Starting a studio on an empty data folder runs every migration (~0.2 s), and about a thousand
tests start one. The app fixtures (tests/api, tests/a1111, tests/gradio) copy a file migrated
once instead; the studio's own `migrate()` then finds it at the newest revision. The
migrations' own tests, and any test that builds its settings itself, still start from nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from stable_diffusion_api.db import Database

DATABASE_NAME = "dali.db"  # where Settings puts the SQLite file in its data folder


def migrated_database_file(folder: Path) -> Path:
    """A SQLite file in `folder` migrated to the newest revision."""
    path = folder / DATABASE_NAME
    database = Database(f"sqlite:///{path}")
    database.migrate()
    database.dispose()  # the last connection closing folds the WAL into the file
    return path


def copy_migrated(template: Path, data_dir: Path) -> None:
    """Put the migrated `template` where a studio on `data_dir` keeps its database."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, data_dir / DATABASE_NAME)
