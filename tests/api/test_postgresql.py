"""The same service on PostgreSQL: `DALI_DATABASE_URL` pointed at a real server (a throwaway one,
tests/postgres.py) and nothing else changed — migrations both ways, then the app end to end."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Base
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.api.helpers import make_project, submit, wait_for
from tests.api.test_migrations import TABLES
from tests.postgres import PostgresServer


def test_migrations_build_the_orm_schema_on_postgresql_and_remove_it(
    postgres: PostgresServer,
) -> None:
    db = Database(postgres.new_database())
    db.migrate()
    db.migrate()  # idempotent: every start-up runs it
    with db.engine.connect() as connection:
        assert connection.dialect.name == "postgresql"
        assert set(inspect(connection).get_table_names()) == TABLES | {"alembic_version"}
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.downgrade("base")
    with db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
    db.dispose()


def test_the_service_runs_on_postgresql_unchanged(postgres: PostgresServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, models_dir=data / "models", database_url=postgres.new_database(),
                        poll_s=0.05, heartbeat_s=0.2, stale_after_s=2.0, queue_limit=2)  # fmt: skip
    fake = FakeGenerator(write_fake_checkpoint(data / "models" / "dali-tiny.safetensors"))
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client, description="on PostgreSQL")
        assert client.post("/api/v1/projects", json={"name": "shapes"}).status_code == 409
        fake.block_at = 1
        first = submit(client, project["id"], prompt="first", batch=2)
        assert fake.reached.wait(5)
        second = submit(client, project["id"], prompt="second")
        third = submit(client, project["id"], prompt="third")
        assert (second["position"], third["position"]) == (1, 2)
        full = client.post(f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x"})
        assert full.status_code == 429  # two wait: the limit
        assert client.post(f"/api/v1/generations/{third['id']}/cancel").status_code == 200
        fake.block_at = None
        fake.release.set()
        done = wait_for(client, first["id"])
        assert [image["index"] for image in done["images"]] == [0, 1]
        assert done["timings"] is not None and done["step_seconds"] is not None
        assert wait_for(client, second["id"])["status"] == "succeeded"
        assert wait_for(client, third["id"], ("canceled",))["status"] == "canceled"
        assert [call.params.prompt for call in fake.calls] == ["first", "second"]
        gallery = client.get(f"/api/v1/projects/{project['id']}/images").json()
        assert gallery["total"] == 3
        thumbnail = client.get(gallery["items"][0]["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        listed = client.get(f"/api/v1/projects/{project['id']}/generations").json()
        assert [job["prompt"] for job in listed["items"]] == ["third", "second", "first"]
        # An upscale, and one of it: deleting its source unlinks it (ON DELETE SET NULL).
        source = done["images"][0]["id"]
        up = client.post(f"/api/v1/images/{source}/upscale", json={"upscaler": "Lanczos"}).json()
        upup = client.post(f"/api/v1/images/{up['id']}/upscale", json={"upscaler": "Nearest"})
        assert upup.status_code == 201 and upup.json()["source_image_id"] == up["id"]
        assert client.delete(f"/api/v1/images/{source}").status_code == 204
        assert client.get(f"/api/v1/images/{up['id']}").json()["source_image_id"] is None
        deleted = client.delete(f"/api/v1/projects/{project['id']}", params={"confirm": "true"})
        assert deleted.status_code == 204
        assert client.get(f"/api/v1/generations/{first['id']}").status_code == 404
        assert not any((data / "images").rglob("*.png"))
    fake.release.set()
