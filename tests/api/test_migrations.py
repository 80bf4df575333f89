"""Alembic migrations on a real SQLite file: the schema they build is the ORM's, both ways."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Base

TABLES = {"projects", "generations", "images", "model_files", "speed_measurements",
          "worker_processes"}  # fmt: skip


def test_upgrade_matches_the_orm_and_downgrade_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dali.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    db.migrate()  # idempotent: every start-up runs it
    assert path.is_file()
    with db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES | {"alembic_version"}
        # No difference between what the migrations built and what the models declare.
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        version = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        assert version == "0002"
    db.downgrade("base")
    with db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    db.migrate()
    db.dispose()


def test_sqlite_runs_with_wal_foreign_keys_and_cascades(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'dali.db'}")
    db.migrate()
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO projects (id, name, description, device, low_memory, defaults,"
            " created_at, updated_at) VALUES (1, 'p', '', 'cpu', 0, '{}', '2025-01-01', '2025-01-01')"
        )
        connection.exec_driver_sql(
            "INSERT INTO generations (id, project_id, status, source, device, low_memory, model,"
            " prompt, negative_prompt, steps, guidance, seed, batch, strength, cancel_requested,"
            " created_at) VALUES (1, 1, 'queued', 'api', 'cpu', 0, 'm', 'p', '', 1, 7, 1, 1, 0.5,"
            " 0, '2025-01-01')"
        )
        connection.exec_driver_sql("DELETE FROM projects WHERE id = 1")
        assert connection.exec_driver_sql("SELECT count(*) FROM generations").scalar() == 0
    db.dispose()
    # Another connection (another process) sees the same file.
    with sqlite3.connect(tmp_path / "dali.db") as raw:
        assert raw.execute("SELECT count(*) FROM projects").fetchone() == (0,)


def test_upgrading_an_older_database_keeps_its_rows(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'dali.db'}")
    db.migrate("0001")
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO projects (id, name, description, device, low_memory, defaults,"
            " created_at, updated_at) VALUES (1, 'p', '', 'cpu', 0, '{}', '2025-01-01', '2025-01-01')"
        )
        connection.exec_driver_sql(
            "INSERT INTO generations (id, project_id, status, source, device, low_memory, model,"
            " prompt, negative_prompt, steps, guidance, seed, batch, strength, cancel_requested,"
            " created_at) VALUES (7, 1, 'succeeded', 'api', 'cpu', 0, 'm', 'old', '', 1, 7, 1, 1,"
            " 0.5, 0, '2025-01-01')"
        )
    db.migrate()
    with db.engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT prompt, variation_seed, variation_strength FROM generations WHERE id = 7"
        ).one()
    assert tuple(row) == ("old", None, 0.0)
    db.dispose()
