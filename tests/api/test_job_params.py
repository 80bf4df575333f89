"""The one mapping between the service and `GenerationParams` (services/job_params.py)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from fastapi.testclient import TestClient

from sd_core.params import MAX_SEED, GenerationParams, field_names
from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import Generation
from stable_diffusion_api.schemas import GenerationCreate, GenerationDefaults
from stable_diffusion_api.services import job_params
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_every_params_field_round_trips_through_a_row() -> None:
    params = GenerationParams("a red circle", negative_prompt="blue", seed=9, steps=4,
                              sampler="euler", guidance=3.0, width=64, height=96, batch=2,
                              strength=0.5, variation_seed=11, variation_strength=0.25,
                              clip_skip=2, vae="ft.vae.pt")  # fmt: skip
    values = job_params.row_values(params)
    # clip_skip, vae and later fields came after the table: the JSON column carries them.
    extra = values["extra_params"]
    assert (extra["clip_skip"], extra["vae"]) == (2, "ft.vae.pt")
    assert set(extra) == set(field_names()) - job_params._column_names()
    assert "clip_skip" not in values
    row = Generation(**values)
    assert job_params.params_from_row(row) == params


def test_rows_from_before_a_parameter_read_its_default() -> None:
    values = job_params.row_values(GenerationParams("x", seed=1))
    values["extra_params"] = None  # a row written before clip_skip existed
    assert job_params.params_from_row(Generation(**values)).clip_skip == 1


def test_a_column_wins_over_the_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any field without a column goes to extra_params, whichever it is."""
    columns = job_params._column_names() - {"variation_strength"}
    monkeypatch.setattr(job_params, "_column_names", lambda: columns)
    params = GenerationParams("x", seed=1, variation_seed=2, variation_strength=0.5)
    values = job_params.row_values(params)
    assert "variation_strength" not in values
    assert values["extra_params"]["variation_strength"] == 0.5
    assert set(values["extra_params"]) == set(field_names()) - columns
    assert job_params.params_from_row(Generation(**values)) == params


def test_request_fields_named_like_params_reach_them_and_defaults_fill_the_rest() -> None:
    defaults = GenerationDefaults(negative_prompt="blurry", steps=7, guidance=3.5, width=128)
    request = GenerationCreate(prompt="x", seed=5, batch=2, strength=0.4, height=64)
    params = job_params.params_from_request(request, defaults, "ddim", "ft.vae.pt")
    assert (params.prompt, params.seed, params.batch, params.strength) == ("x", 5, 2, 0.4)
    assert (params.negative_prompt, params.steps, params.guidance) == ("blurry", 7, 3.5)
    assert (params.width, params.height, params.sampler) == (128, 64, "ddim")
    assert params.vae == "ft.vae.pt"
    assert (params.mask_blur, params.inpainting_fill, params.inpaint_full_res) == (0, 1, False)
    inpaint = {"mask_blur": 8, "inpainting_fill": 3, "inpainting_mask_invert": True,
               "inpaint_full_res": True, "inpaint_full_res_padding": 32}  # fmt: skip
    request = GenerationCreate(prompt="x", **inpaint)  # type: ignore[arg-type]
    params = job_params.params_from_request(request, defaults, None, None)
    assert {name: getattr(params, name) for name in inpaint} == inpaint
    # Every GenerationCreate field that is a params field is taken over.
    shared = {f.name for f in fields(GenerationParams)} & set(GenerationCreate.model_fields)
    assert shared >= {"prompt", "seed", "batch", "strength", "variation_seed"}


def test_a_random_seed_leaves_room_for_the_batch() -> None:
    request = GenerationCreate(prompt="x", batch=8)
    for _ in range(50):
        params = job_params.params_from_request(request, GenerationDefaults(), None, None)
        assert params.seed is not None and 0 <= params.seed <= MAX_SEED - 7


def test_engine_limits_are_422_naming_the_field(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    response = client.post(f"/api/v1/projects/{project['id']}/generations",
                           json={"prompt": "x", "seed": MAX_SEED, "batch": 2})  # fmt: skip
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "seed" and "seed + batch - 1" in detail["msg"]
    assert fake.calls == []
    done = wait_for(client, submit(client, project["id"], seed=MAX_SEED - 1, batch=2)["id"])
    assert [image["seed"] for image in done["images"]] == [MAX_SEED - 1, MAX_SEED]


def test_clip_skip_through_the_rest_api_and_the_project_default(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, defaults={"clip_skip": 2})
    done = wait_for(client, submit(client, project["id"])["id"])
    assert done["clip_skip"] == 2 and fake.calls[-1].params.clip_skip == 2
    assert "Clip skip: 2" in done["images"][0]["parameters"]
    done = wait_for(client, submit(client, project["id"], clip_skip=1)["id"])
    assert done["clip_skip"] == 1 and "Clip skip" not in done["images"][0]["parameters"]
    bad = client.post(f"/api/v1/projects/{project['id']}/generations",
                      json={"prompt": "x", "clip_skip": 13})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "clip_skip"


def test_vae_through_the_rest_api_and_the_project_default(
    client: TestClient, fake: FakeGenerator, settings: Settings
) -> None:
    folder = settings.asset_folders.vaes
    folder.mkdir(parents=True)
    (folder / "ft-mse.vae.safetensors").write_bytes(b"listing reads names only")
    assert [v["name"] for v in client.get("/api/v1/vaes").json()] == ["ft-mse.vae.safetensors"]
    bad = client.post("/api/v1/projects", json={"name": "P", "defaults": {"vae": "nope.pt"}})
    assert bad.status_code == 422, bad.text
    detail = bad.json()["detail"][0]
    assert detail["loc"][-1] == "vae" and "ft-mse.vae.safetensors" in detail["msg"]
    project = make_project(client, defaults={"vae": "ft-mse.vae.safetensors"})
    done = wait_for(client, submit(client, project["id"])["id"])
    assert done["vae"] == "ft-mse.vae.safetensors"
    assert fake.calls[-1].params.vae == "ft-mse.vae.safetensors"
    done = wait_for(client, submit(client, project["id"], vae="None")["id"])  # the model's own
    assert done["vae"] is None and fake.calls[-1].params.vae is None
    count = len(fake.calls)
    bad = client.post(f"/api/v1/projects/{project['id']}/generations",
                      json={"prompt": "x", "vae": "FT-MSE.vae"})  # fmt: skip
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "vae"
    assert "'FT-MSE.vae'" in bad.json()["detail"][0]["msg"] and len(fake.calls) == count


def test_installed_loras_and_embeddings_are_listed(client: TestClient, settings: Settings) -> None:
    assert client.get("/api/v1/loras").json() == []
    loras, embeddings = settings.asset_folders.loras, settings.asset_folders.embeddings
    (loras / "styles").mkdir(parents=True)
    embeddings.mkdir(parents=True)
    (loras / "styles" / "ink.safetensors").write_bytes(b"12345")
    (loras / "readme.txt").write_text("not a LoRA")
    (embeddings / "bad-hands.pt").write_bytes(b"1")
    assert client.get("/api/v1/loras").json() == [
        {"name": "ink", "path": "styles/ink.safetensors", "size": 5}
    ]
    assert [e["name"] for e in client.get("/api/v1/embeddings").json()] == ["bad-hands"]
