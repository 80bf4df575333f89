"""`mount_gradio(app)`: the UI inside Dali's FastAPI app, one process, the app's own studio."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from sd_gradio import mount_gradio
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app


def test_mounted_ui_serves_and_shares_the_app_studio(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    studio = app.state.studio
    engine = studio.workers.generator
    mount_gradio(app)
    # The UI only uses the studio: its workers keep the engine they had.
    assert studio.workers.generator is engine
    with TestClient(app) as client:
        page = client.get("/gradio/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = client.get("/gradio/config").json()
        names = {d.get("api_name") for d in config["dependencies"]}
        assert {"txt2img", "img2img", "inpaint", "cancel", "png_info", "filmstrip"} <= names
        # The app itself still answers as before.
        assert client.get("/api/v1/projects").status_code == 200


def test_dali_gradio_setting_mounts_the_ui_in_create_app(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data", gradio=True))
    with TestClient(app) as client:
        assert client.get("/gradio/").status_code == 200
    plain = create_app(Settings(data_dir=tmp_path / "data2"))
    with TestClient(plain) as client:
        assert client.get("/gradio/").status_code == 404
