"""The /sdapi/v1 routes in process, over the fake engine: what lands in the queue and the
gallery, A1111's response shapes, progress/interrupt/skip, options, errors and auth."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.fakes import FakeGenerator, write_fake_checkpoint

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64}


def project_named(client: TestClient, name: str) -> dict[str, Any]:
    projects = {p["name"]: p for p in client.get("/api/v1/projects").json()}
    return projects[name]


def gallery(client: TestClient, project_id: int) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/projects/{project_id}/images?limit=100").json()["items"]


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# -- txt2img / img2img -------------------------------------------------------------------------


def test_txt2img_answers_like_a1111_and_lands_in_the_api_project(client: TestClient) -> None:
    body = {**SMALL, "seed": 10, "n_iter": 2, "batch_size": 2, "sampler_name": "Euler a"}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"images", "parameters", "info"}
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in result["images"]]
    assert [image.size for image in images] == [(64, 64)] * 4
    info = json.loads(result["info"])
    assert info["all_seeds"] == [10, 11, 12, 13] and info["seed"] == 10
    assert info["batch_size"] == 2 and len(info["all_prompts"]) == 4
    assert info["infotexts"] == [image.text["parameters"] for image in images]
    assert info["sd_model_name"] == "dali-tiny" and info["version"].startswith("dali-")
    assert result["parameters"]["prompt"] == "a red circle"

    api = project_named(client, "API")
    assert api["device"] == "cuda:0"  # made on the fastest device present, as A1111 runs
    stored = gallery(client, api["id"])
    assert sorted(image["seed"] for image in stored) == [10, 11, 12, 13]
    generations = client.get(f"/api/v1/projects/{api['id']}/generations").json()["items"]
    assert [g["source"] for g in generations] == ["a1111", "a1111"]  # n_iter jobs, one queue
    assert {g["sampler"] for g in generations} == {"euler_a"}


def test_batches_beyond_the_queue_limit_are_split_without_changing_seeds(
    client: TestClient, fake: FakeGenerator
) -> None:
    response = client.post(TXT2IMG, json={**SMALL, "seed": 500, "batch_size": 10})
    assert response.status_code == 200, response.text
    assert [(job.params.seed, job.params.batch) for job in fake.calls] == [(500, 8), (508, 2)]
    assert json.loads(response.json()["info"])["all_seeds"] == list(range(500, 510))
    assert len(response.json()["images"]) == 10


def test_send_images_false_and_random_seed(client: TestClient) -> None:
    response = client.post(TXT2IMG, json={**SMALL, "seed": -1, "send_images": False})
    assert response.status_code == 200, response.text
    assert response.json()["images"] == []
    seed = json.loads(response.json()["info"])["seed"]
    stored = gallery(client, project_named(client, "API")["id"])
    assert [image["seed"] for image in stored] == [seed]  # saved all the same


def test_header_picks_the_project(client: TestClient) -> None:
    response = client.post(TXT2IMG, json=SMALL, headers={"X-Dali-Project": "Chat bot"})
    assert response.status_code == 200, response.text
    assert project_named(client, "Chat bot")["image_count"] == 1
    assert "API" not in {p["name"] for p in client.get("/api/v1/projects").json()}


def test_img2img_fits_the_init_image_and_passes_mask_and_strength(
    client: TestClient, fake: FakeGenerator
) -> None:
    init = Image.new("RGB", (100, 60), "red")
    mask = Image.new("L", (100, 60), 0)
    body = {
        **SMALL, "init_images": [png_b64(init)], "mask": png_b64(mask),
        "denoising_strength": 0.4, "inpainting_mask_invert": 1, "mask_blur": 0,
    }  # fmt: skip
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    job = fake.calls[-1]
    assert job.init_image is not None and job.init_image.size == (64, 64)
    assert job.mask is not None and job.mask.getextrema() == (0, 0)  # the engine inverts it
    assert job.params.inpainting_mask_invert and job.params.mask_blur == 0
    assert job.params.strength == 0.4
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.4
    assert response.json()["parameters"]["init_images"] is None  # not echoed by default


def test_img2img_passes_the_inpainting_settings_with_a1111s_defaults(
    client: TestClient, fake: FakeGenerator
) -> None:
    image = png_b64(Image.new("RGB", (64, 64), "red"))
    body = {**SMALL, "init_images": [image], "mask": png_b64(Image.new("L", (64, 64), 255))}
    assert client.post("/sdapi/v1/img2img", json=body).status_code == 200
    p = fake.calls[-1].params
    assert (p.mask_blur, p.inpainting_fill, p.inpaint_full_res) == (4, 0, True)
    assert (p.inpainting_mask_invert, p.inpaint_full_res_padding) == (False, 0)
    sent = {"inpainting_fill": 2, "inpaint_full_res": False, "inpaint_full_res_padding": 32}
    assert client.post("/sdapi/v1/img2img", json={**body, **sent}).status_code == 200
    p = fake.calls[-1].params
    assert (p.inpainting_fill, p.inpaint_full_res, p.inpaint_full_res_padding) == (2, False, 32)
    body = {**SMALL, "init_images": [image]}  # no mask: no inpainting settings
    assert client.post("/sdapi/v1/img2img", json=body).status_code == 200
    assert fake.calls[-1].params.mask_blur == 0


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"sampler_name": "Euler b"}, ["body", "sampler_name"]),
        ({"width": 65}, ["body", "width"]),
        ({"height": 4096}, ["body", "height"]),
        ({"steps": 0}, ["body", "steps"]),
        ({"steps": 151}, ["body", "steps"]),
        ({"cfg_scale": 31}, ["body", "cfg_scale"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"seed": -2}, ["body", "seed"]),
        ({"prompt": "  "}, ["body", "prompt"]),
        ({"enable_hr": True, "hr_resize_x": 20}, ["body", "hr_resize_x"]),
        ({"script_name": "x/y/z plot"}, ["body", "script_name"]),
        ({"scheduler": "beta"}, ["body", "scheduler"]),
        ({"sampler_name": "LCM", "steps": 51}, ["body", "steps"]),
        ({"enable_hr": True, "hr_sampler_name": "LCM", "hr_second_pass_steps": 60},
         ["body", "hr_second_pass_steps"]),
        ({"override_settings": {"sd_model_checkpoint": "nope"}},
         ["body", "override_settings", "sd_model_checkpoint"]),
    ],
)  # fmt: skip
def test_bad_values_are_422_with_detail_naming_the_field(
    shared: tuple[TestClient, FakeGenerator], fields: dict[str, Any], location: list[str]
) -> None:
    client, fake = shared
    response = client.post(TXT2IMG, json={**SMALL, "sampler_name": "Euler", **fields})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"] == location
    assert fake.calls == []  # nothing was queued


def test_unknown_fields_and_nulls_are_accepted(client: TestClient) -> None:
    body = {
        **SMALL, "hr_upscaler": "Latent", "eta": 1.0, "alwayson_scripts": {},
        "seed": None, "sampler_index": "Euler a", "styles": [], "nonsense": {"a": [1]},
    }  # fmt: skip
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    assert "nonsense" not in response.json()["parameters"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sdapi/v1/img2img", {**SMALL}),
        ("/sdapi/v1/img2img", {**SMALL, "init_images": ["bm90IGFuIGltYWdl"]}),
        ("/sdapi/v1/img2img", {**SMALL, "init_images": ["%%%"]}),
        ("/sdapi/v1/png-info", {"image": "bm90IGFuIGltYWdl"}),
        ("/sdapi/v1/png-info", {}),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "no such model"}),
        ("/sdapi/v1/options", {"sd_model_checkpoint": 7}),
        ("/sdapi/v1/options", [1, 2]),
        (TXT2IMG, ["not", "an", "object"]),
        (TXT2IMG, {"infotext": "x\nSteps: 500, Sampler: Euler, Seed: 1, Size: 64x64"}),
    ],
)
def test_bad_requests_elsewhere_are_422_never_500(
    shared: tuple[TestClient, FakeGenerator], path: str, body: Any
) -> None:
    client, fake = shared
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert fake.calls == []


def test_no_value_of_any_type_in_any_field_gives_a_500(client: TestClient) -> None:
    # img2img's fields are txt2img's (but the hires fix's: tests/a1111/test_hires.py) plus
    # its own.
    from stable_diffusion_api.a1111.schemas import Img2ImgRequest

    base = {**SMALL, "steps": 1, "init_images": [png_b64(Image.new("RGB", (64, 64), "red"))]}
    statuses = set()
    for field in Img2ImgRequest.model_fields:
        for value in ("abc", [1], -5, 1e300, ""):
            response = client.post("/sdapi/v1/img2img", json={**base, field: value})
            assert response.status_code in (200, 422), (field, value, response.text)
            assert response.status_code == 200 or response.json()["detail"]
            statuses.add(response.status_code)
    assert statuses == {200, 422}


def test_infotext_fills_the_fields_left_out(client: TestClient, fake: FakeGenerator) -> None:
    infotext = "a blue square\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 321, Size: 64x64"
    response = client.post(TXT2IMG, json={"infotext": infotext, "steps": 2})
    assert response.status_code == 200, response.text
    job = fake.calls[-1].params
    assert (job.prompt, job.seed, job.guidance, job.sampler) == ("a blue square", 321, 5.0, "euler")
    assert (job.steps, job.width, job.height) == (2, 64, 64)  # the request's own value wins


def test_bad_project_header_is_422(shared: tuple[TestClient, FakeGenerator]) -> None:
    client, _ = shared
    response = client.post(TXT2IMG, json=SMALL, headers={"X-Dali-Project": "   "})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "header"


def test_engine_refusal_is_422_with_its_message(client: TestClient, fake: FakeGenerator) -> None:
    fake.fail_with = ValueError("width must be a multiple of 8 from 64 to 2048, got 72")
    response = client.post(TXT2IMG, json=SMALL)
    assert response.status_code == 422, response.text
    assert "multiple of 8" in response.json()["detail"]


# -- models and options ------------------------------------------------------------------------


def test_options_switch_the_model_of_the_project(
    client: TestClient, fake: FakeGenerator, settings: Settings
) -> None:
    write_fake_checkpoint(settings.resolved_models_dir / "other.safetensors", payload=b"2")
    models = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert set(models) == {"dali-tiny", "other"}
    other = models["other"]
    assert other["title"] == f"other.safetensors [{other['hash']}]"
    assert len(other["sha256"]) == 64 and other["filename"].endswith("other.safetensors")

    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("dali-tiny")
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": other["title"]}).is_success
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other["title"]
    assert project_named(client, "API")["default_model"] == "other"  # visible in the studio
    assert client.post(TXT2IMG, json=SMALL).status_code == 200
    assert fake.calls[-1].model.model_name == "other"
    info = json.loads(client.post(TXT2IMG, json=SMALL).json()["info"])
    assert (info["sd_model_name"], info["sd_model_hash"]) == ("other", other["hash"])

    # A per-request override leaves the option alone unless told not to restore it.
    override = {"override_settings": {"sd_model_checkpoint": "dali-tiny"}}
    assert client.post(TXT2IMG, json={**SMALL, **override}).status_code == 200
    assert fake.calls[-1].model.model_name == "dali-tiny"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == other["title"]
    keep = {**override, "override_settings_restore_afterwards": False}
    assert client.post(TXT2IMG, json={**SMALL, **keep}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("dali-tiny")


def test_samplers_schedulers_and_the_small_endpoints(client: TestClient) -> None:
    samplers = client.get("/sdapi/v1/samplers").json()
    assert samplers[0] == {"name": "Euler a", "aliases": ["euler_a", "k_euler_a"], "options": {}}
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == [
        "automatic",
        "karras",
        "exponential",
        "sgm_uniform",
    ]
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > 0 and memory["cuda"]["system"]["total"] == 24 * 1024**3
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["api_auth"] is None
    assert client.post("/sdapi/v1/refresh-checkpoints").json() is None
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert client.get("/internal/ping").json() == {}


def test_png_info_reads_an_image_the_endpoint_made(client: TestClient) -> None:
    result = client.post(TXT2IMG, json={**SMALL, "seed": 77}).json()
    response = client.post("/sdapi/v1/png-info", json={"image": result["images"][0]})
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["info"] == json.loads(result["info"])["infotexts"][0]
    assert info["parameters"]["Seed"] == "77" and info["parameters"]["Prompt"] == "a red circle"
    assert json.loads(info["items"]["dali"])["project"] == "API"


# -- progress, interrupt, skip -----------------------------------------------------------------


def run_in_thread(client: TestClient, body: dict[str, Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(client.post(TXT2IMG, json=body)))
    thread.start()
    return thread, out


def test_progress_then_interrupt_stops_the_task(client: TestClient, fake: FakeGenerator) -> None:
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    fake.block_at = 2
    body = {**SMALL, "n_iter": 3, "force_task_id": "task-1"}
    thread, out = run_in_thread(client, body)
    assert fake.reached.wait(10)
    progress = client.get("/sdapi/v1/progress").json()
    state = progress["state"]
    assert (state["job"], state["job_count"], state["job_no"]) == ("scripts_txt2img", 3, 0)
    assert (state["sampling_step"], state["sampling_steps"]) == (1, 3)
    assert 0 < progress["progress"] < 1 / 3
    task = client.post("/internal/progress", json={"id_task": "task-1"}).json()
    assert task["active"] and not task["completed"]

    assert client.post("/sdapi/v1/interrupt").json() == {}
    fake.release.set()
    thread.join(10)
    assert not thread.is_alive()
    response = out[0]
    assert response.status_code == 200, response.text
    # The running job stopped after the step it was in, keeping its image as it was then (the
    # fake draws that grey), with the request's infotext, as A1111 answers.
    (image,) = response.json()["images"]
    partial = Image.open(io.BytesIO(base64.b64decode(image)))
    assert partial.convert("RGB").getpixel((0, 0)) == (128, 128, 128)
    info = json.loads(response.json()["info"])
    assert "Steps: 3," in info["infotexts"][0] and "interrupted after step 2" in info["warnings"][0]
    assert len(fake.calls) == 1  # the other two iterations were never queued
    api = project_named(client, "API")
    generations = client.get(f"/api/v1/projects/{api['id']}/generations").json()["items"]
    assert [g["status"] for g in generations] == ["interrupted"]
    # The REST API and the gallery show it like any other image.
    (shown,) = generations[0]["images"]
    assert client.get(shown["url"]).content == base64.b64decode(image)
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert client.post("/internal/progress", json={"id_task": "task-1"}).json()["completed"]


def test_skip_drops_the_current_iteration_only(client: TestClient, fake: FakeGenerator) -> None:
    fake.block_at = 2
    thread, out = run_in_thread(client, {**SMALL, "n_iter": 2, "seed": 30})
    assert fake.reached.wait(10)
    client.post("/sdapi/v1/skip")
    fake.release.set()
    thread.join(10)
    result = out[0].json()
    info = json.loads(result["info"])
    # The skipped iteration keeps its image as it was (A1111 does too); the second one ran.
    assert len(result["images"]) == 2 and info["all_seeds"] == [30, 31]
    assert "Seed: 30," in info["infotexts"][0] and "Seed: 31," in info["infotexts"][1]
    statuses = [g["status"] for g in client.get("/api/v1/projects/1/generations").json()["items"]]
    assert statuses == ["succeeded", "interrupted"]


def test_interrupt_leaves_other_front_ends_jobs_alone(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = client.post("/api/v1/projects", json={"name": "Studio"}).json()
    fake.block_at = 2
    job = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x", "steps": 3}
    ).json()
    assert fake.reached.wait(10)
    client.post("/sdapi/v1/interrupt")
    fake.release.set()
    deadline = time.monotonic() + 10
    while client.get(job["url"]).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.get(job["url"]).json()["status"] == "succeeded"


# -- authentication ----------------------------------------------------------------------------


@pytest.fixture
def auth_client(settings: Settings, fake: FakeGenerator) -> Any:
    users = settings.model_copy(update={"api_auth": SecretStr("alice:secret,bob:hunter2")})
    with TestClient(with_a1111(create_app(users, fake))) as test_client:
        yield test_client


def test_basic_auth_when_configured(auth_client: TestClient) -> None:
    for path in ("/sdapi/v1/samplers", "/sdapi/v1/options", "/sdapi/v1/progress"):
        response = auth_client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic")
        assert response.json()["detail"]
    assert auth_client.get("/sdapi/v1/samplers", auth=("alice", "wrong")).status_code == 401
    assert auth_client.get("/sdapi/v1/samplers", auth=("eve", "secret")).status_code == 401
    assert auth_client.post(TXT2IMG, json=SMALL).status_code == 401
    assert auth_client.get("/sdapi/v1/samplers", auth=("bob", "hunter2")).status_code == 200
    response = auth_client.post(TXT2IMG, json=SMALL, auth=("alice", "secret"))
    assert response.status_code == 200, response.text
    assert auth_client.get("/internal/ping").status_code == 200  # open, as in A1111
    assert auth_client.post("/internal/progress", json={}).status_code == 401


def test_basic_auth_or_the_api_key_each_open_the_api(tmp_path: Any, fake: FakeGenerator) -> None:
    """One authentication model for the whole app (tests/api/test_auth.py): a user's Basic
    credentials or the key, each alone, as on every other route."""
    settings = Settings(
        data_dir=tmp_path / "keyed", models_dir=fake.builtin.parent, api_key="k3y",
        api_auth="alice:secret", poll_s=0.05,
    )  # fmt: skip
    with TestClient(with_a1111(create_app(settings, fake))) as client:
        path = "/sdapi/v1/samplers"
        assert client.get(path).status_code == 401
        assert client.get(path, auth=("alice", "secret")).status_code == 200
        assert client.get(path, headers={"X-API-Key": "k3y"}).status_code == 200
        assert client.get(path, auth=("alice", "k3y")).status_code == 200  # the key as password


def test_clip_skip_from_override_settings_options_and_infotext(
    shared: tuple[TestClient, FakeGenerator],
) -> None:
    client, fake = shared
    body = {**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    assert fake.calls[-1].params.clip_skip == 2
    info = json.loads(response.json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    # The option is the project's default until changed back.
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3
    assert client.post(TXT2IMG, json=SMALL).status_code == 200
    assert fake.calls[-1].params.clip_skip == 3
    client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    # Read back from an infotext, as A1111 ≥ 1.8's `infotext` field does.
    infotext = (
        "a blue square\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 64x64, Clip skip: 2"
    )
    assert client.post(TXT2IMG, json={"infotext": infotext}).status_code == 200
    assert fake.calls[-1].params.clip_skip == 2
    bad = client.post(
        TXT2IMG, json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 13}}
    )
    assert bad.status_code == 422
    assert "CLIP_stop_at_last_layers" in bad.text and "1 to 12" in bad.text
