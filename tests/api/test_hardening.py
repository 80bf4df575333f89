"""Hostile or odd input answered clearly: body limit, security headers, lone surrogates,
booleans for numbers (issue 15, items 8, 11 and 13)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from stable_diffusion_api.a1111.extras import ExtrasBatchImagesRequest, ExtrasSingleImageRequest
from stable_diffusion_api.a1111.schemas import Img2ImgRequest, TaskProgressRequest, Txt2ImgRequest
from stable_diffusion_api.config import Settings
from stable_diffusion_api.schemas import (
    BenchmarkRequest,
    GenerationCreate,
    GenerationDefaults,
    OutpaintMargins,
    ProjectCreate,
    ProjectUpdate,
)
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project


def test_a_body_over_the_limit_is_413_before_it_is_read(settings: Settings, fake: FakeGenerator):
    small = settings.model_copy(update={"max_body_mb": 1})
    with TestClient(create_app(small, fake)) as client:
        project = make_project(client)
        big = json.dumps({"prompt": "x" * (2 * 1024 * 1024)})
        response = client.post(
            f"/api/v1/projects/{project['id']}/generations", content=big,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 413
        assert "over the limit of 1048576 bytes" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit holds while the chunks arrive
            for _ in range(3):
                yield b" " * (600 * 1024)

        response = client.post("/api/v1/projects", content=chunks(),
                               headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 413
        assert client.get("/api/v1/health").status_code == 200  # and the server is fine
        ok = client.post("/api/v1/projects", content=b'{"name": "Fits"}',
                         headers={"content-type": "application/json"})  # fmt: skip
        assert ok.status_code == 201
        streamed = client.post("/api/v1/projects", content=iter([b'{"name": ', b'"Chunked"}']),
                               headers={"content-type": "application/json"})  # fmt: skip
        assert streamed.status_code == 201, streamed.text


def test_security_headers_on_pages_and_api(client: TestClient):
    for path in ("/", "/api/v1/health", "/static/dali.js"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in headers["content-security-policy"]
    # The docs pages carry their own policy (room for their inline start-up script).
    assert (
        "script-src 'self' 'unsafe-inline'"
        in client.get("/docs").headers["content-security-policy"]
    )


def test_a_lone_surrogate_is_422_naming_the_field(client: TestClient):
    response = client.post("/api/v1/projects", content=b'{"name": "a\\ud800b"}',
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "name" and "surrogate" in detail["msg"]
    # A proper pair (an emoji escaped as JSON does) is fine.
    pair = client.post("/api/v1/projects", content=b'{"name": "ok \\ud83d\\ude00"}',
                       headers={"content-type": "application/json"})  # fmt: skip
    assert pair.status_code == 201 and pair.json()["name"] == "ok \U0001f600"
    project = pair.json()
    response = client.post(f"/api/v1/projects/{project['id']}/generations",
                           content=b'{"prompt": "x \\udfff"}',
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "prompt"


def test_booleans_are_not_numbers(client: TestClient, fake: FakeGenerator):
    project = make_project(client)
    for field in ("steps", "seed", "batch", "width", "guidance", "strength", "clip_skip"):
        response = client.post(f"/api/v1/projects/{project['id']}/generations",
                               json={"prompt": "x", field: True})  # fmt: skip
        assert response.status_code == 422, field
        assert response.json()["detail"][0]["loc"][-1] == field
    assert fake.calls == []


REQUEST_MODELS: list[tuple[type[BaseModel], dict[str, object]]] = [
    (GenerationCreate, {"prompt": "x"}), (GenerationDefaults, {}), (OutpaintMargins, {}),
    (ProjectCreate, {"name": "x"}), (ProjectUpdate, {}), (BenchmarkRequest, {}),
    (Txt2ImgRequest, {}), (Img2ImgRequest, {}), (TaskProgressRequest, {}),
    (ExtrasSingleImageRequest, {}), (ExtrasBatchImagesRequest, {"imageList": []}),
]  # fmt: skip


def _numeric(prop: dict[str, Any]) -> bool:
    types = {option.get("type") for option in prop.get("anyOf", [prop])}
    return bool(types & {"integer", "number"}) and "boolean" not in types


def test_no_request_model_reads_true_as_a_number():
    """Every number of every request body, REST and A1111 (schemathesis found
    `extras_upscaler_2_visibility: false` and `id_live_preview: false` taken as 0)."""
    checked = []
    for model, required in REQUEST_MODELS:
        for name, prop in model.model_json_schema()["properties"].items():
            if not _numeric(prop):
                continue
            with pytest.raises(ValidationError) as refused:
                model.model_validate({**required, name: True})
            assert refused.value.errors()[0]["loc"][0] == name, (model.__name__, name)
            checked.append(name)
    assert {"batch", "mask_blur", "subseed", "id_live_preview", "upscaling_resize"} <= set(checked)


def test_numbers_are_not_booleans(client: TestClient, fake: FakeGenerator):
    """The schema says boolean: 0 or 1 is refused, not read as false or true (pydantic's
    lax mode took them, and "yes"; schemathesis found `upscale_first: 0` accepted)."""
    project = make_project(client)
    for path, body, field in [
        (f"/api/v1/projects/{project['id']}/generations", {"prompt": "x", "tiling": 1}, "tiling"),
        ("/api/v1/projects", {"name": "Flags", "low_memory": 0}, "low_memory"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "enable_hr": 1}, "enable_hr"),
        ("/sdapi/v1/extra-single-image", {"image": "", "upscale_first": 0}, "upscale_first"),
        ("/internal/progress", {"id_task": "x", "live_preview": "yes"}, "live_preview"),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["detail"][0]["loc"][-1] == field, response.text
    assert fake.calls == []


def test_a_form_posted_from_another_site_changes_nothing(client: TestClient):
    project = make_project(client, "Kept")
    evil = {"origin": "http://evil.example"}
    deleted = client.post(f"/projects/{project['id']}/delete", data={"confirm": "on"},
                          headers=evil)  # fmt: skip
    assert deleted.status_code == 403 and "evil.example" in deleted.json()["detail"]
    queued = client.post(f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x"},
                         headers={"referer": "http://evil.example/page"})  # fmt: skip
    assert queued.status_code == 403
    assert client.get(f"/api/v1/projects/{project['id']}").status_code == 200
    assert client.get(f"/api/v1/projects/{project['id']}/generations").json()["total"] == 0
    # The studio's own origin, and API clients that send none, go through.
    own = client.post(f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x"},
                      headers={"origin": "http://testserver"})  # fmt: skip
    assert own.status_code == 202


def test_a_foreign_host_name_is_refused(client: TestClient, settings: Settings, fake):
    rebound = client.get("/api/v1/health", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 421 and "evil.example" in rebound.json()["detail"]
    assert client.get("/api/v1/health", headers={"host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/api/v1/health", headers={"host": "localhost"}).status_code == 200
    lan = settings.model_copy(update={"allowed_hosts": "studio.lan"})
    with TestClient(create_app(lan, fake)) as other:
        assert other.get("/api/v1/health", headers={"host": "studio.lan:8000"}).status_code == 200
    everywhere = settings.model_copy(update={"host": "0.0.0.0"})
    with TestClient(create_app(everywhere, fake)) as other:
        assert other.get("/api/v1/health", headers={"host": "10.0.0.5:8000"}).status_code == 200


def test_a_method_a_path_does_not_take_is_405_naming_every_method_it_takes(client: TestClient):
    """GET and POST of one path are two routes: Allow names both, not only the first's."""
    project = make_project(client)
    for path, allowed in [
        ("/api/v1/projects", "GET, POST"),
        (f"/api/v1/projects/{project['id']}", "DELETE, GET, PATCH"),
        ("/sdapi/v1/options", "GET, POST"),
    ]:
        answer = client.put(path, json={})
        assert answer.status_code == 405 and answer.headers["allow"] == allowed, path


def test_listening_beyond_this_machine_without_a_key_warns(settings: Settings, caplog):
    from stable_diffusion_api.sd_api import warn_if_exposed

    assert not warn_if_exposed(settings)  # 127.0.0.1
    exposed = settings.model_copy(update={"host": "0.0.0.0"})
    assert warn_if_exposed(exposed) and "DALI_API_KEY" in caplog.text
    keyed = exposed.model_copy(update={"api_key": "s3cret"})
    assert not warn_if_exposed(keyed)


def test_a_broken_model_file_is_listed_without_its_bytes_or_server_path(
    client: TestClient, settings: Settings
):
    models = settings.resolved_models_dir
    secret = models.parent / "secret.txt"
    secret.write_bytes(b"TOPSECRET-passwd-like-content")
    (models / "linked.safetensors").symlink_to(secret)
    (models / "notes.ckpt").write_text("just a text file")
    listed = {m["name"]: m for m in client.get("/api/v1/models").json()}
    for name in ("linked", "notes"):
        assert listed[name]["available"] is False and listed[name]["error"]
        assert str(models) not in listed[name]["error"]
    # The first 8 bytes as a number would tell what the file holds.
    number = str(int.from_bytes(b"TOPSECRE", "little"))
    assert number not in listed["linked"]["error"] and "TOPSECRET" not in listed["linked"]["error"]
    assert client.get("/api/v1/projects").status_code == 200
