"""No request reaches a file outside the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import Generation, Image
from stable_diffusion_api.services.object_store import LocalStore
from stable_diffusion_api.services.storage import ImageStorage
from tests.api.helpers import make_project, submit, wait_for


def test_storage_refuses_paths_outside_the_data_dir(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data")
    assert store.path("images/1/2-0.png") == (tmp_path / "data/images/1/2-0.png").resolve()
    for bad in ("../secret", "images/../../secret", "/etc/passwd", "images/1/../../../x"):
        with pytest.raises(ValueError, match="outside the data directory"):
            store.path(bad)
    link = tmp_path / "data" / "images" / "link"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path)  # a symlink out of the data dir is followed, then refused
    (tmp_path / "secret").write_bytes(b"top secret")
    with pytest.raises(ValueError):
        store.path("images/link/secret")
    storage = ImageStorage(store)
    assert not storage.exists("images/link/secret")
    storage.delete("images/link/secret", "../secret")  # skipped, never followed
    assert (tmp_path / "secret").read_bytes() == b"top secret"


def test_traversal_in_urls_never_serves_outside_files(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    database = settings.resolved_data_dir / "dali.db"
    probes = [
        "/static/../secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static/%2e%2e/%2e%2e/data/dali.db",
        "/api/v1/images/..%2f..%2fsecret.txt/file",
        "/api/v1/images/1%2f..%2f..%2fsecret.txt/file",
        "/api/v1/projects/1/images/../../../secret.txt",
        f"/static/{database}",
        "/static//etc/passwd",
    ]
    for url in probes:
        response = client.get(url)
        assert response.status_code in (404, 422), (url, response.status_code)
        assert b"top secret" not in response.content and b"SQLite" not in response.content


def test_a_tampered_row_cannot_point_the_server_outside(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"])
    image_id = done["images"][0]["id"]
    studio = client.app.state.studio  # type: ignore[attr-defined]
    with studio.db.session() as session:
        session.get(Image, image_id).path = "../secret.txt"
        session.get(Generation, done["id"]).filmstrip_path = "../secret.txt"
    for url in (f"/api/v1/images/{image_id}/file", f"/api/v1/generations/{done['id']}/filmstrip"):
        response = client.get(url)
        assert response.status_code == 404
        assert b"top secret" not in response.content
    # Deleting the generation never follows its paths out of the data directory either.
    assert client.delete(f"/api/v1/generations/{done['id']}").status_code == 204
    assert secret.read_text() == "top secret"


def test_model_names_are_looked_up_never_joined_to_paths(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"FAKE-CHECKPOINT sd-v1 outside")
    project = make_project(client)
    for name in (str(outside), "../outside.safetensors", "../../outside", "outside"):
        response = client.post(
            f"/api/v1/projects/{project['id']}/generations", json={"prompt": "a", "model": name}
        )
        assert response.status_code == 422, name


def test_recovery_drops_a_row_pointing_outside_without_touching_the_file(
    settings: Settings, tmp_path: Path
) -> None:
    from stable_diffusion_api.sd_api import create_app
    from tests.api.fakes import FakeGenerator, write_fake_checkpoint

    fake = FakeGenerator(
        write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        image_id = wait_for(client, submit(client, project["id"])["id"])["images"][0]["id"]
        studio = client.app.state.studio  # type: ignore[attr-defined]
        with studio.db.session() as session:
            row = session.get(Image, image_id)
            row.path = row.thumb_path = "../secret.txt"
    with TestClient(create_app(settings, fake)) as client:  # start-up recovery runs
        assert client.get(f"/api/v1/images/{image_id}").status_code == 404
    assert secret.read_text() == "top secret"
