"""Alembic migrations on a real SQLite file: the schema they build is the ORM's, both ways."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Base

TABLES = {"projects", "generations", "images", "model_files", "speed_measurements",
          "worker_processes", "studio_identity", "benchmark_requests"}  # fmt: skip
PROJECT_ROW = (
    "INSERT INTO projects (id, name, description, device, low_memory, defaults,"
    " created_at, updated_at) VALUES (1, 'p', '', 'cpu', 0, '{}', '2025-01-01', '2025-01-01')"
)


def insert_generation(
    connection: Connection, generation_id: int, prompt: str, status: str = "succeeded", **more: Any
) -> None:
    """A row of project 1 in the generations table, with the columns every revision has (plus
    `more`), written in plain SQL: the ORM knows only the newest schema."""
    values = {
        "id": generation_id, "project_id": 1, "status": status, "source": "api", "device": "cpu",
        "low_memory": 0, "model": "m", "prompt": prompt, "negative_prompt": "", "steps": 1,
        "guidance": 7, "seed": 1, "batch": 1, "strength": 0.5, "cancel_requested": 0,
        "created_at": "2025-01-01", **more,
    }  # fmt: skip
    columns = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    connection.execute(text(f"INSERT INTO generations ({columns}) VALUES ({marks})"), values)


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
        assert version == "0013"
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
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    with db.engine.begin() as connection:
        connection.exec_driver_sql(PROJECT_ROW)
        insert_generation(connection, 1, "p", status="queued")
        connection.exec_driver_sql("DELETE FROM projects WHERE id = 1")
        assert connection.exec_driver_sql("SELECT count(*) FROM generations").scalar() == 0
    db.dispose()
    # Another connection (another process) sees the same file.
    with sqlite3.connect(tmp_path / "dali.db") as raw:
        assert raw.execute("SELECT count(*) FROM projects").fetchone() == (0,)


def database_at(tmp_path: Path, revision: str, generation_id: int, prompt: str,
                **more: Any) -> Database:  # fmt: skip
    """A database migrated to `revision` holding project 1 and one generation."""
    db = Database(f"sqlite:///{tmp_path / 'dali.db'}")
    db.migrate(revision)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(PROJECT_ROW)
        insert_generation(connection, generation_id, prompt, **more)
    return db


def downgraded(db: Database, revision: str) -> tuple[set[str], str]:
    """After downgrading to `revision`: the generations table's columns and its one prompt."""
    db.downgrade(revision)
    with db.engine.connect() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("generations")}
        prompt = connection.exec_driver_sql("SELECT prompt FROM generations").scalar()
    return columns, prompt


def test_upgrading_an_older_database_keeps_its_rows(tmp_path: Path) -> None:
    db = database_at(tmp_path, "0001", 7, "old")
    db.migrate()
    with db.engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT prompt, variation_seed, variation_strength FROM generations WHERE id = 7"
        ).one()
    assert tuple(row) == ("old", None, 0.0)
    db.dispose()


def test_upgrading_keeps_generations_and_gives_them_no_filmstrip(tmp_path: Path) -> None:
    db = database_at(tmp_path, "0002", 9, "before strips", variation_strength=0.25)
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            'INSERT INTO images (id, generation_id, project_id, "index", seed, path, thumb_path,'
            " width, height, parameters, created_at) VALUES (3, 9, 1, 0, 5, 'images/1/9-0.png',"
            " 'images/1/thumbs/9-0.jpg', 64, 64, 'p', '2025-01-01')"
        )
    db.migrate()
    with db.engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT prompt, variation_strength, filmstrip_path, filmstrip FROM generations"
            " WHERE id = 9"
        ).one()
        images = connection.exec_driver_sql("SELECT id, path FROM images").all()
    assert tuple(row) == ("before strips", 0.25, None, None)
    assert [tuple(i) for i in images] == [(3, "images/1/9-0.png")]
    columns, kept = downgraded(db, "0002")  # and back, keeping the row
    assert "filmstrip" not in columns and "filmstrip_path" not in columns
    assert kept == "before strips"
    db.dispose()


def test_upgrading_gives_earlier_runs_no_timings(tmp_path: Path) -> None:
    db = database_at(tmp_path, "0003", 4, "before timings")
    db.migrate()
    with db.engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT prompt, timings FROM generations WHERE id = 4"
        ).one()
    assert tuple(row) == ("before timings", None)
    columns, kept = downgraded(db, "0003")
    assert "timings" not in columns and kept == "before timings"
    db.dispose()


def test_upgrading_gives_ended_jobs_the_failure_kind_their_error_text_says(
    tmp_path: Path,
) -> None:
    rows = {
        1: ("succeeded", None, None),
        2: ("queued", None, None),
        3: ("running", None, None),
        4: ("canceled", "canceled before it started", "cancelled"),
        5: ("failed", "interrupted: the server stopped while this job was running",
            "interrupted"),
        6: ("failed", "internal error: RuntimeError: boom", "internal"),
        7: ("failed", "internal error: OutOfMemoryError: CUDA out of memory. Tried to allocate",
            "out_of_memory"),
        8: ("failed", "width must be a multiple of 8, got 65", "invalid_input"),
        9: ("failed", None, "invalid_input"),
    }  # fmt: skip
    db = database_at(tmp_path, "0004", 1, "p1", status="succeeded")
    with db.engine.begin() as connection:
        for generation_id, (status, error, _) in list(rows.items())[1:]:
            insert_generation(connection, generation_id, f"p{generation_id}", status, error=error)
    db.migrate()
    with db.engine.connect() as connection:
        kinds = dict(connection.exec_driver_sql("SELECT id, failure_kind FROM generations").all())
    assert kinds == {generation_id: kind for generation_id, (_, _, kind) in rows.items()}
    columns, kept = downgraded(db, "0004")
    assert "failure_kind" not in columns and kept == "p1"
    db.dispose()


@pytest.mark.parametrize(
    ("before", "column"),
    [
        # Older rows: every parameter they have lives in its own column.
        ("0005", "extra_params"),
        # Earlier runs carry no engine warnings.
        ("0006", "warnings"),
    ],
)
def test_a_nullable_json_column_comes_and_goes_keeping_rows(
    tmp_path: Path, before: str, column: str
) -> None:
    db = database_at(tmp_path, before, 1, f"before {column}")
    db.migrate()
    with db.engine.connect() as connection:
        value = connection.exec_driver_sql(f"SELECT {column} FROM generations").scalar_one()
    assert value is None
    columns, kept = downgraded(db, before)
    assert column not in columns and kept == f"before {column}"
    db.dispose()


def insert_image(connection: Connection, generation_id: int, image_id: int | None = None) -> int:
    """An image of the generation, with the columns every revision has; its id (given, or the
    one the database chose)."""
    chosen = "" if image_id is None else f"{image_id}, "
    connection.exec_driver_sql(
        f'INSERT INTO images ({"id, " if chosen else ""}generation_id, project_id, "index", seed,'
        f" path, thumb_path, width, height, parameters, created_at) VALUES ({chosen}"
        f"{generation_id}, 1, 0, 5, 'a.png', 'a.jpg', 64, 64, 'p', '2025-01-01')"
    )
    return int(connection.exec_driver_sql("SELECT max(id) FROM images").scalar_one())


def test_upscale_links_come_and_go_without_reusing_a_deleted_image_id(tmp_path: Path) -> None:
    """0010 copies the images table on SQLite (to add the source link's foreign key): the rows,
    AUTOINCREMENT and its counter survive both ways, so the id of an image deleted before is
    never handed out again; a deleted source leaves its upscale unlinked (ON DELETE SET NULL)."""
    db = database_at(tmp_path, "0009", 1, "before upscales")
    with db.engine.begin() as connection:
        for image_id in (1, 2, 3):
            insert_image(connection, 1, image_id)
        connection.exec_driver_sql("DELETE FROM images WHERE id = 3")
    db.migrate()
    with db.engine.begin() as connection:
        rows = connection.exec_driver_sql(
            "SELECT id, source_image_id, postprocessing FROM images"
        ).all()
        assert [tuple(row) for row in rows] == [(1, None, None), (2, None, None)]
        assert insert_image(connection, 1) == 4  # not 3, whose image was deleted
        connection.exec_driver_sql("UPDATE images SET source_image_id = 1 WHERE id = 2")
        connection.exec_driver_sql("DELETE FROM images WHERE id IN (1, 4)")
        assert connection.exec_driver_sql("SELECT id, source_image_id FROM images").all() == [
            (2, None)
        ]
    db.downgrade("0009")
    with db.engine.begin() as connection:
        columns = {c["name"] for c in inspect(connection).get_columns("images")}
        assert "source_image_id" not in columns and "postprocessing" not in columns
        assert insert_image(connection, 1) == 5
    db.migrate()
    db.dispose()
