"""A data folder and a database belong together, or the studio does not start (issue 15,
item 1): recovery would otherwise take every image of the folder for an orphan and delete it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.identity import ID_FILE, StudioMismatch
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def image_files(settings: Settings) -> list[str]:
    images = settings.resolved_data_dir / "images"
    return sorted(p.name for p in images.rglob("*.png"))


def make_images(settings: Settings, fake: FakeGenerator) -> list[str]:
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        wait_for(client, submit(client, project["id"], batch=3)["id"])
    files = image_files(settings)
    assert len([f for f in files if f.startswith("1-")]) == 3  # and the filmstrip, 1.png
    return files


def test_another_database_refuses_to_start_and_deletes_nothing(
    settings: Settings, fake: FakeGenerator, tmp_path
) -> None:
    files = make_images(settings, fake)
    other = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'typo.db'}"})
    with pytest.raises(StudioMismatch, match="never seen it"), TestClient(create_app(other, fake)):
        pass
    assert image_files(settings) == files
    # The right database still starts, with every image.
    with TestClient(create_app(settings, fake)) as client:
        assert client.get("/api/v1/projects").json()[0]["image_count"] == 3


def test_a_deleted_database_file_does_not_cost_the_images(
    settings: Settings, fake: FakeGenerator
) -> None:
    files = make_images(settings, fake)
    (settings.resolved_data_dir / "dali.db").unlink()
    for suffix in ("-wal", "-shm"):
        (settings.resolved_data_dir / f"dali.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StudioMismatch), TestClient(create_app(settings, fake)):
        pass
    assert image_files(settings) == files


def test_two_studios_ids_differ(settings: Settings, fake: FakeGenerator, tmp_path) -> None:
    make_images(settings, fake)
    elsewhere = Settings(data_dir=tmp_path / "other")
    with TestClient(create_app(elsewhere, fake)):
        pass  # a second, empty studio
    mixed = settings.model_copy(update={"database_url": elsewhere.resolved_database_url})
    with (
        pytest.raises(StudioMismatch, match="belongs to studio"),
        TestClient(create_app(mixed, fake)),
    ):
        pass


def test_an_existing_studio_from_before_the_ids_gets_one(
    settings: Settings, fake: FakeGenerator
) -> None:
    files = make_images(settings, fake)
    (settings.resolved_data_dir / ID_FILE).unlink()  # as before this version
    from stable_diffusion_api.db import Database

    db = Database(settings.resolved_database_url)
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM studio_identity")
    db.dispose()
    with TestClient(create_app(settings, fake)):
        pass
    assert (settings.resolved_data_dir / ID_FILE).is_file()
    assert image_files(settings) == files


def test_a_database_deleted_while_running_makes_writes_fail_loudly(
    settings: Settings, fake: FakeGenerator
) -> None:
    import os
    import stat

    fake.block_at = 1
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        assert client.get("/api/v1/health").json()["status"] == "ok"
        running = submit(client, project["id"])
        assert fake.reached.wait(10)
        db_file = settings.resolved_data_dir / "dali.db"
        db_file.chmod(stat.S_IRUSR)  # read-only (root may still write; the studio will not)
        response = client.post(f"/api/v1/projects/{project['id']}/generations",
                               json={"prompt": "x"})  # fmt: skip
        assert response.status_code == 503 and "read-only" in response.json()["detail"]
        # The job queue's own writes are checked too (a cancel is a status change).
        cancel = client.post(f"/api/v1/generations/{running['id']}/cancel")
        assert cancel.status_code == 503
        fake.release.set()
        db_file.chmod(0o644)
        os.rename(db_file, db_file.with_name("moved.db"))  # gone while running
        health = client.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        response = client.post("/api/v1/projects", json={"name": "Lost"})
        assert response.status_code == 503 and "gone" in response.json()["detail"]
        os.rename(db_file.with_name("moved.db"), db_file)  # back: writes work again
        assert client.get("/api/v1/health").status_code == 200
        assert client.post("/api/v1/projects", json={"name": "Kept"}).status_code == 201
