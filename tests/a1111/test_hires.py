"""A1111's hires fix fields (`enable_hr`, `hr_*`) reach Dali's hires params; an infotext's
`Hires …` keys come back as those fields; the REST API takes and shows the hires fields."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from sd_core.infotext import parse_infotext
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.api.helpers import make_project, submit, wait_for

TXT2IMG = "/sdapi/v1/txt2img"
SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 5}


def test_enable_hr_runs_the_hires_fix(client: TestClient, fake: FakeGenerator) -> None:
    body = {
        **SMALL, "sampler_name": "Euler a", "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (bicubic)",
        "hr_second_pass_steps": 2, "denoising_strength": 0.4, "hr_sampler_name": "Euler",
        "hr_prompt": "a blue circle", "hr_negative_prompt": "",
    }  # fmt: skip
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    p = fake.calls[-1].params
    assert (p.hires, p.hires_scale, p.hires_upscaler, p.hires_steps) == (
        True, 1.5, "Latent (bicubic)", 2,
    )  # fmt: skip
    assert (p.hires_strength, p.hires_sampler, p.hires_prompt) == (0.4, "euler", "a blue circle")
    assert p.hires_negative_prompt is None and (p.width, p.height) == (64, 64)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Denoising strength: 0.4" in infotext
    assert "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent (bicubic)" in infotext

    # The infotext makes the same request again (A1111's "infotext" field).
    again = client.post(TXT2IMG, json={"infotext": infotext})
    assert again.status_code == 200, again.text
    assert fake.calls[-1].params == p


def test_hires_defaults_resize_and_what_is_off(client: TestClient, fake: FakeGenerator) -> None:
    body = {**SMALL, "enable_hr": True, "hr_resize_x": 100, "hr_sampler_name": "Use same sampler"}
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    infotext = parse_infotext(json.loads(response.json()["info"])["infotexts"][0])
    assert infotext.extra["Hires resize"] == "96x0" and infotext.denoising_strength == 0.75
    p = fake.calls[-1].params
    assert (p.hires_width, p.hires_height, p.hires_upscaler) == (96, None, "Latent")
    assert (p.hires_strength, p.hires_sampler, p.hires_steps) == (0.75, None, 0)
    # hr_* without enable_hr change nothing, as in A1111.
    assert (
        client.post(TXT2IMG, json={**SMALL, "hr_scale": 3, "hr_upscaler": "x"}).status_code == 200
    )
    assert fake.calls[-1].params.hires is False


def test_bad_hires_fields_are_422_naming_the_a1111_field(
    client: TestClient, fake: FakeGenerator
) -> None:
    for fields, location in (
        ({"hr_resize_x": 20}, ["body", "hr_resize_x"]),
        ({"hr_sampler_name": "Euler b"}, ["body", "hr_sampler_name"]),
        ({"hr_scale": 5}, ["body", "hr_scale"]),
        ({"hr_second_pass_steps": 151}, ["body", "hr_second_pass_steps"]),
    ):
        response = client.post(TXT2IMG, json={**SMALL, "enable_hr": True, **fields})
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["detail"][0]["loc"] == location
    assert fake.calls == []


def test_rest_api_takes_and_shows_the_hires_fields(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    done = wait_for(
        client,
        submit(client, project["id"], hires=True, hires_scale=1.5, hires_steps=4,
               hires_sampler="Euler", hires_prompt="sharp")["id"],
    )  # fmt: skip
    assert (done["hires"], done["hires_scale"], done["hires_steps"]) == (True, 1.5, 4)
    assert done["hires_sampler"] == "euler" and done["hires_prompt"] == "sharp"
    assert fake.calls[-1].params.hires_sampler == "euler"
    assert "Hires upscale: 1.5, Hires steps: 4" in done["images"][0]["parameters"]
    bad = client.post(f"/api/v1/projects/{project['id']}/generations",
                      json={"prompt": "x", "hires": True, "hires_sampler": "nope"})  # fmt: skip
    assert bad.status_code == 422 and "hires_sampler" in bad.text


def test_hr_scheduler_and_hr_cfg_reach_the_second_pass(
    client: TestClient, fake: FakeGenerator
) -> None:
    body = {**SMALL, "sampler_name": "Euler", "enable_hr": True, "hr_scheduler": "Karras",
            "hr_cfg": 3.5, "hr_second_pass_steps": 2}  # fmt: skip
    response = client.post(TXT2IMG, json=body)
    assert response.status_code == 200, response.text
    p = fake.calls[-1].params
    assert (p.scheduler, p.hires_scheduler, p.hires_guidance) == (None, "karras", 3.5)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "Hires schedule type: Karras, Hires CFG Scale: 3.5" in infotext
    again = client.post(TXT2IMG, json={"infotext": infotext})
    assert again.status_code == 200, again.text
    assert fake.calls[-1].params == p
    # "Use same scheduler" and no hr_cfg: the first pass's.
    same = {**body, "scheduler": "exponential", "hr_scheduler": "Use same scheduler"}
    del same["hr_cfg"]
    assert client.post(TXT2IMG, json=same).status_code == 200
    p = fake.calls[-1].params
    assert (p.scheduler, p.hires_scheduler, p.hires_guidance) == ("exponential", None, None)
    automatic = client.post(TXT2IMG, json={**same, "hr_scheduler": "Automatic"})
    assert automatic.status_code == 200
    assert fake.calls[-1].params.hires_scheduler == "automatic"


def test_hr_checkpoint_name_may_only_name_the_first_pass_model(
    client: TestClient, fake: FakeGenerator
) -> None:
    for same in ("Use same checkpoint", "", None, "dali-tiny"):
        body = {**SMALL, "enable_hr": True, "hr_checkpoint_name": same}
        response = client.post(TXT2IMG, json=body)
        assert response.status_code == 200, (same, response.text)
    write_fake_checkpoint(fake.builtin.parent / "other.safetensors", payload=b"other")
    for other, words in (("other", "first pass's model (dali-tiny)"), ("nope", "installed")):
        response = client.post(TXT2IMG, json={**SMALL, "enable_hr": True,
                                              "hr_checkpoint_name": other})  # fmt: skip
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "hr_checkpoint_name"] and words in detail["msg"]
    assert len(fake.calls) == 4


def test_bad_hr_scheduler_and_hr_cfg_are_422_naming_them(
    client: TestClient, fake: FakeGenerator
) -> None:
    for fields, location in (
        ({"hr_scheduler": "beta"}, ["body", "hr_scheduler"]),
        ({"hr_sampler_name": "DDIM", "hr_scheduler": "karras"}, ["body", "hr_scheduler"]),
        ({"hr_cfg": 31}, ["body", "hr_cfg"]),
    ):
        response = client.post(TXT2IMG, json={**SMALL, "enable_hr": True, **fields})
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["detail"][0]["loc"] == location
    assert fake.calls == []


def test_rest_takes_the_hires_schedule_type_and_cfg(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    done = wait_for(
        client,
        submit(client, project["id"], hires=True, hires_scheduler="Karras", hires_guidance=4,
               sampler="euler")["id"],
    )  # fmt: skip
    assert (done["hires_scheduler"], done["hires_guidance"]) == ("karras", 4.0)
    assert (fake.calls[-1].params.hires_scheduler, fake.calls[-1].params.hires_guidance) == (
        "karras", 4.0,
    )  # fmt: skip
    url = f"/api/v1/projects/{project['id']}/generations"
    for fields, field in (
        ({"hires_scheduler": "beta"}, "hires_scheduler"),
        ({"hires_sampler": "ddim", "hires_scheduler": "karras"}, "hires_scheduler"),
        ({"sampler": "euler", "scheduler": "karras", "hires_sampler": "ddim"}, "hires_scheduler"),
        ({"hires_guidance": 31}, "hires_guidance"),
    ):
        bad = client.post(url, json={"prompt": "x", "hires": True, **fields})
        assert bad.status_code == 422, (fields, bad.text)
        assert bad.json()["detail"][0]["loc"] == ["body", field]
