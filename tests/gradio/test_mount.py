"""The Gradio UI inside Dali's FastAPI app: `dali_app.create_app` mounts it at /gradio behind
DALI_GRADIO=1; the service's own `stable_diffusion_api.sd_api.create_app` never does, and says
so at start-up when the setting asks for it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

import dali_app
from dali_gradio import mount_gradio
from stable_diffusion_api import sd_api
from stable_diffusion_api.config import Settings

SERVICE_LOGGER = "stable_diffusion_api.sd_api"


def warnings_from_service(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SERVICE_LOGGER and r.levelno == logging.WARNING
    ]


def test_service_app_ignores_nothing_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """DALI_GRADIO=1 on the service alone: no /gradio, and a warning naming the entry points."""
    caplog.set_level(logging.WARNING, logger=SERVICE_LOGGER)
    app = sd_api.create_app(Settings(data_dir=tmp_path / "data", gradio=True))
    assert warnings_from_service(caplog) == []  # start-up, not import, is when it speaks
    with TestClient(app) as client:
        assert client.get("/gradio/").status_code == 404
        assert client.get("/gradio/config").status_code == 404
        assert client.get("/api/v1/projects").status_code == 200
    [warning] = warnings_from_service(caplog)
    assert "DALI_GRADIO=1" in warning and "not served" in warning
    assert "uvicorn dali_app:app" in warning and "python dali_app.py" in warning
    assert "./run.sh" in warning

    caplog.clear()
    with TestClient(sd_api.create_app(Settings(data_dir=tmp_path / "plain"))) as client:
        assert client.get("/gradio/").status_code == 404
    assert warnings_from_service(caplog) == []  # the setting is off: nothing to say


def test_dali_app_mounts_the_ui_behind_the_same_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=SERVICE_LOGGER)
    app = dali_app.create_app(Settings(data_dir=tmp_path / "data", gradio=True))
    with TestClient(app) as client:
        page = client.get("/gradio/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = client.get("/gradio/config").json()
        names = {d.get("api_name") for d in config["dependencies"]}
        assert {"txt2img", "img2img", "inpaint", "cancel", "png_info", "filmstrip"} <= names
        # The service answers as before, beside the UI.
        assert client.get("/api/v1/projects").status_code == 200
    assert warnings_from_service(caplog) == []  # the UI is served: no warning

    plain = dali_app.create_app(Settings(data_dir=tmp_path / "plain"))
    with TestClient(plain) as client:
        assert client.get("/gradio/").status_code == 404
        assert client.get("/api/v1/projects").status_code == 200


def test_mounted_ui_uses_the_app_studio_and_leaves_its_engine(tmp_path: Path) -> None:
    app = sd_api.create_app(Settings(data_dir=tmp_path / "data"))
    studio = app.state.studio
    engine = studio.workers.generator
    mount_gradio(app)
    # The UI only uses the studio: the workers keep the engine they had (no UI-side hooks).
    assert studio.workers.generator is engine
    mounted = next(r for r in app.routes if isinstance(r, Mount) and r.path == "/gradio")
    blocks = mounted.app.blocks  # type: ignore[attr-defined]
    gallery = next(f for f in blocks.fns.values() if f.api_name == "gallery")
    with TestClient(app) as client:
        assert client.get("/gradio/").status_code == 200
        # A project made through the app's REST API is the one the UI's gallery reads.
        made = client.post("/api/v1/projects", json={"name": "Shared", "device": "cpu"})
        assert made.status_code == 201
        items, ids, count = gallery.fn("Shared")
        assert (items, ids, count) == ([], [], "Shared: 0 image(s).")
        assert "No project named" in gallery.fn("Elsewhere")[2]


def test_missing_gradio_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DALI_GRADIO=1 without `pip install -r requirements-gradio.txt`: says what to install."""
    for name in [m for m in sys.modules if m == "dali_gradio" or m.startswith("dali_gradio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails
    with pytest.raises(RuntimeError, match=r"Gradio is not installed.*requirements-gradio\.txt"):
        dali_app.create_app(Settings(data_dir=tmp_path / "data", gradio=True))
