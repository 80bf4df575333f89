"""Every path of AUTOMATIC1111 1.10's /sdapi/v1 answers something honest (never 404 or 500),
and /options keeps what clients write."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.a1111.options import MAX_KEYS
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.fakes import FakeGenerator

# A1111 1.10's API paths (modules/api/api.py), under /sdapi/v1.
A1111_GET = (
    "progress", "options", "cmd-flags", "samplers", "schedulers", "upscalers",
    "latent-upscale-modes", "sd-models", "sd-modules", "hypernetworks", "face-restorers",
    "realesrgan-models", "prompt-styles", "embeddings", "memory", "scripts", "script-info",
    "extensions", "loras", "sd-vae",
)  # fmt: skip
A1111_POST = (
    "txt2img", "img2img", "extra-single-image", "extra-batch-images", "png-info", "interrogate",
    "interrupt", "skip", "options", "refresh-embeddings", "refresh-checkpoints", "refresh-vae",
    "refresh-loras", "create/embedding", "create/hypernetwork", "train/embedding",
    "train/hypernetwork", "unload-checkpoint", "reload-checkpoint", "server-kill",
    "server-restart", "server-stop",
)  # fmt: skip


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# A small valid body for the paths that need one; the others get {}.
BODIES = {
    "txt2img": {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64},
    "img2img": {"prompt": "a red circle", "steps": 2, "init_images": [png_b64()]},
    "extra-single-image": {"image": png_b64(), "upscaling_resize": 1},
    "extra-batch-images": {"imageList": [{"data": png_b64(), "name": "a.png"}]},
    "png-info": {"image": png_b64()},
    "interrogate": {"image": png_b64(), "model": "clip"},
}


@pytest.mark.parametrize("path", A1111_GET)
def test_every_a1111_get_path_answers(shared: tuple[TestClient, FakeGenerator], path: str) -> None:
    response = shared[0].get(f"/sdapi/v1/{path}")
    assert response.status_code == 200, (path, response.status_code, response.text[:300])


@pytest.mark.parametrize("path", A1111_POST)
def test_every_a1111_post_path_answers(client: TestClient, path: str) -> None:
    response = client.post(f"/sdapi/v1/{path}", json=BODIES.get(path, {}))
    assert response.status_code not in (404, 405, 500), (path, response.text[:300])
    if response.status_code == 501:  # not done here: said so in words
        assert "does not do this" in response.json()["detail"]


def test_the_empty_lists(shared: tuple[TestClient, FakeGenerator]) -> None:
    client = shared[0]
    for path in ("hypernetworks", "sd-modules", "script-info", "extensions"):
        assert client.get(f"/sdapi/v1/{path}").json() == [], path
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}


def test_options_keep_what_clients_write(client: TestClient) -> None:
    options = client.get("/sdapi/v1/options").json()
    assert options["samples_format"] == "png" and options["send_seed"] is True
    sent = {"send_seed": False, "my_extension_setting": [1, "two"], "samples_format": "png"}
    assert client.post("/sdapi/v1/options", json=sent).status_code == 200
    options = client.get("/sdapi/v1/options").json()
    assert options["send_seed"] is False and options["my_extension_setting"] == [1, "two"]
    # Per project: another project does not see them.
    other = client.get("/sdapi/v1/options", headers={"X-Dali-Project": "Other"}).json()
    assert other["send_seed"] is True and "my_extension_setting" not in other
    # Posting the whole answer back changes nothing.
    assert client.post("/sdapi/v1/options", json=options).status_code == 200
    assert client.get("/sdapi/v1/options").json() == options
    # What Dali cannot change is refused by name, and nothing of that request is kept.
    refused = client.post("/sdapi/v1/options", json={"samples_format": "jpg", "send_size": 0})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "samples_format"
    assert client.get("/sdapi/v1/options").json()["send_size"] is True


def test_options_outlive_a_restart(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    sent = {"send_seed": False, "my_extension_setting": {"a": 1}}
    assert client.post("/sdapi/v1/options", json=sent).status_code == 200
    assert client.post("/sdapi/v1/options", json={"send_size": False}).status_code == 200
    # A second app on the same data directory: a restart, or another web process.
    with TestClient(with_a1111(create_app(settings, fake))) as restarted:
        options = restarted.get("/sdapi/v1/options").json()
        assert options["send_seed"] is False and options["send_size"] is False
        assert options["my_extension_setting"] == {"a": 1}
        # Too many keys: refused by name, and what was kept stays.
        many = {f"key_{i}": i for i in range(MAX_KEYS)}
        refused = restarted.post("/sdapi/v1/options", json=many)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "options"
        assert restarted.get("/sdapi/v1/options").json() == options


@pytest.mark.parametrize(
    ("field", "value"),
    [("restore_faces", True), ("seed_resize_from_w", 512), ("seed_resize_from_h", 320)],
)
def test_what_would_be_silently_ignored_is_refused(
    shared: tuple[TestClient, FakeGenerator], field: str, value: object
) -> None:
    client, fake = shared
    calls = len(fake.calls)
    body = {**BODIES["txt2img"], field: value}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field]
    assert len(fake.calls) == calls
