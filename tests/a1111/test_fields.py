"""Every request field of A1111 1.10's txt2img and img2img, one row each: honoured (the row
checks what it changed), meaningless here (the job is the one made without it), or refused at
any value Dali does not honour (a 422 naming it, nothing queued; the value it honours: 200)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.a1111.fields import HONOURED, MEANINGLESS, REFUSED
from stable_diffusion_api.a1111.schemas import Img2ImgRequest, Txt2ImgRequest
from stable_diffusion_api.services.generator import JobSpec
from tests.a1111.test_routes import SMALL, TXT2IMG, png_b64
from tests.api.fakes import FakeGenerator

IMG2IMG = "/sdapi/v1/img2img"
BASE = {**SMALL, "seed": 21, "sampler_name": "Euler a"}
INIT = png_b64(Image.new("RGB", (96, 64), "red"))
MASK = png_b64(Image.new("L", (96, 64), 255))
_thirds = Image.new("RGB", (96, 64), "blue")
_thirds.paste((255, 0, 0), (0, 0, 32, 64))
THIRDS = png_b64(_thirds)
PAINT = {**BASE, "init_images": [INIT], "mask": MASK}

# What A1111 1.10's request models hold (modules/api/models.py builds them from the arguments
# of StableDiffusionProcessingTxt2Img / …Img2Img, less API_NOT_ALLOWED, plus its own fields),
# written out here as the reference the declared models are held to.
A1111_COMMON = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength",
    "seed_resize_from_h", "seed_resize_from_w", "sampler_name", "scheduler", "batch_size",
    "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling",
    "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at",
    "disable_extra_networks", "comments", "sampler_index", "script_name", "script_args",
    "send_images", "save_images", "alwayson_scripts", "force_task_id", "infotext",
}  # fmt: skip
A1111_TXT2IMG = A1111_COMMON | {
    "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
    "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
    "hr_sampler_name", "hr_scheduler", "hr_cfg", "hr_prompt", "hr_negative_prompt",
    "firstpass_image",
}  # fmt: skip
A1111_IMG2IMG = A1111_COMMON | {
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y",
    "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier",
    "latent_mask", "include_init_images",
}  # fmt: skip

Check = Callable[[JobSpec, dict[str, Any], TestClient], bool]


@dataclass(frozen=True)
class Row:
    """Send `base` + `fields` to `path`; `check` (the last job, the answer, the client) says
    the field did what A1111 does with it."""

    name: str
    fields: dict[str, Any]
    check: Check
    base: dict[str, Any] = field(default_factory=lambda: BASE)
    path: str = TXT2IMG


def _p(name: str, value: Any) -> Check:
    """The job's params have `name` at `value`."""
    return lambda job, _answer, _client: getattr(job.params, name) == value


HIRES = {**BASE, "enable_hr": True}
HONOURED_ROWS = [
    Row("prompt", {"prompt": "a blue square"}, _p("prompt", "a blue square")),
    Row("negative_prompt", {"negative_prompt": "fog"}, _p("negative_prompt", "fog")),
    Row("styles", {"styles": ["Sharp"]}, _p("prompt", "a red circle, sharp focus")),
    Row("seed", {"seed": 42}, _p("seed", 42)),
    Row("subseed", {"subseed": 7, "subseed_strength": 0.5}, _p("variation_seed", 7)),
    Row("subseed_strength", {"subseed_strength": 0.5}, _p("variation_strength", 0.5)),
    Row("sampler_name", {"sampler_name": "Euler"}, _p("sampler", "euler")),
    Row("sampler_index", {"sampler_index": "DDIM"}, _p("sampler", "ddim"),
        {**SMALL, "seed": 21}),
    Row("scheduler", {"scheduler": "karras"}, _p("scheduler", "karras")),
    Row("batch_size", {"batch_size": 2}, _p("batch", 2)),
    Row("n_iter", {"n_iter": 2}, lambda _job, answer, _c: len(answer["images"]) == 2),
    Row("steps", {"steps": 5}, _p("steps", 5)),
    Row("cfg_scale", {"cfg_scale": 3}, _p("guidance", 3.0)),
    Row("width", {"width": 128}, _p("width", 128)),
    Row("height", {"height": 128}, _p("height", 128)),
    Row("tiling", {"tiling": True}, _p("tiling", True)),
    Row("denoising_strength", {"denoising_strength": 0.4}, _p("hires_strength", 0.4), HIRES),
    Row("eta", {"sampler_name": "DDIM", "eta": 0.5}, _p("eta", 0.5)),
    Row("override_settings", {"override_settings": {"CLIP_stop_at_last_layers": 2}},
        _p("clip_skip", 2)),
    Row("override_settings_restore_afterwards",
        {"override_settings": {"sd_model_checkpoint": "other"},
         "override_settings_restore_afterwards": False},
        lambda _job, _a, client: client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        .startswith("other")),
    Row("send_images", {"send_images": False}, lambda _job, answer, _c: answer["images"] == []),
    Row("force_task_id", {"force_task_id": "t-1"},
        lambda _job, _a, client: client.post("/internal/progress", json={"id_task": "t-1"})
        .json()["completed"]),
    Row("infotext", {"infotext": "a cat\nSteps: 5, Sampler: Euler, Seed: 3, Size: 64x64"},
        lambda job, _a, _c: (job.params.prompt, job.params.steps, job.params.sampler,
                             job.params.seed) == ("a cat", 5, "euler", 3),
        {}),
    Row("enable_hr", {"enable_hr": True}, _p("hires", True)),
    Row("hr_scale", {"hr_scale": 1.5}, _p("hires_scale", 1.5), HIRES),
    Row("hr_upscaler", {"hr_upscaler": "Nearest"}, _p("hires_upscaler", "Nearest"), HIRES),
    Row("hr_second_pass_steps", {"hr_second_pass_steps": 2}, _p("hires_steps", 2), HIRES),
    Row("hr_resize_x", {"hr_resize_x": 96}, _p("hires_width", 96), HIRES),
    Row("hr_resize_y", {"hr_resize_y": 96}, _p("hires_height", 96), HIRES),
    Row("hr_sampler_name", {"hr_sampler_name": "Euler"}, _p("hires_sampler", "euler"), HIRES),
    Row("hr_scheduler", {"hr_scheduler": "karras"}, _p("hires_scheduler", "karras"), HIRES),
    Row("hr_cfg", {"hr_cfg": 3}, _p("hires_guidance", 3.0), HIRES),
    Row("hr_checkpoint_name", {"hr_checkpoint_name": "dali-tiny"}, _p("hires", True), HIRES),
    Row("hr_prompt", {"hr_prompt": "sharp"}, _p("hires_prompt", "sharp"), HIRES),
    Row("hr_negative_prompt", {"hr_negative_prompt": "fog"}, _p("hires_negative_prompt", "fog"),
        HIRES),
    Row("init_images", {"init_images": [INIT]},
        lambda job, _a, _c: job.init_image is not None and job.mask is None, BASE, IMG2IMG),
    # Left third red, the rest blue: stretched (0), column 18 stays red; cropped (1), blue.
    Row("resize_mode", {"resize_mode": 1},
        lambda job, _a, _c: job.init_image.getpixel((18, 32)) == (0, 0, 255),
        {**BASE, "init_images": [THIRDS]}, IMG2IMG),
    Row("mask", {"mask": MASK},
        lambda job, _a, _c: job.mask is not None and job.params.mask_blur == 4,
        {**BASE, "init_images": [INIT]}, IMG2IMG),
    Row("mask_blur", {"mask_blur": 8}, _p("mask_blur", 8), PAINT, IMG2IMG),
    Row("mask_blur_x", {"mask_blur_x": 6}, _p("mask_blur", 6), PAINT, IMG2IMG),
    Row("mask_blur_y", {"mask_blur_y": 6, "mask_blur_x": 6}, _p("mask_blur", 6), PAINT,
        IMG2IMG),
    Row("inpainting_fill", {"inpainting_fill": 2}, _p("inpainting_fill", 2), PAINT, IMG2IMG),
    Row("inpaint_full_res", {"inpaint_full_res": False}, _p("inpaint_full_res", False), PAINT,
        IMG2IMG),
    Row("inpaint_full_res_padding", {"inpaint_full_res_padding": 16},
        _p("inpaint_full_res_padding", 16), PAINT, IMG2IMG),
    Row("inpainting_mask_invert", {"inpainting_mask_invert": 1},
        _p("inpainting_mask_invert", True), PAINT, IMG2IMG),
    Row("include_init_images", {"include_init_images": True},
        lambda _job, answer, _c: answer["parameters"]["init_images"] == [INIT],
        {**BASE, "init_images": [INIT]}, IMG2IMG),
]  # fmt: skip
# img2img's denoising_strength is its own row (the strength), txt2img's is the hires fix's.
HONOURED_ROWS.append(
    Row(
        "denoising_strength",
        {"denoising_strength": 0.3},
        _p("strength", 0.3),
        {**BASE, "init_images": [INIT]},
        IMG2IMG,
    )  # fmt: skip
)

MEANINGLESS_ROWS = [
    ("save_images", {"save_images": True}, TXT2IMG),
    ("do_not_save_samples", {"do_not_save_samples": True}, TXT2IMG),
    ("do_not_save_grid", {"do_not_save_grid": True}, TXT2IMG),
    ("s_tmin", {"s_tmin": 0.5}, TXT2IMG),
    ("s_tmax", {"s_tmax": 10.0}, TXT2IMG),
    ("refiner_switch_at", {"refiner_switch_at": 0.8}, TXT2IMG),
    ("comments", {"comments": {"a note": 1}}, TXT2IMG),
    ("image_cfg_scale", {"image_cfg_scale": 1.5}, IMG2IMG),
    ("script_args", {"script_args": [1, "x"]}, TXT2IMG),
]

# (field, a value Dali does not honour, the value it does, the request it goes in)
REFUSED_ROWS = [
    ("restore_faces", True, False, TXT2IMG),
    ("seed_resize_from_w", 512, -1, TXT2IMG),
    ("seed_resize_from_h", 512, 0, TXT2IMG),
    ("s_churn", 0.5, 0, TXT2IMG),
    ("s_noise", 0.9, 1, TXT2IMG),
    ("s_min_uncond", 0.2, 0, TXT2IMG),
    ("refiner_checkpoint", "dali-tiny", "", TXT2IMG),
    ("disable_extra_networks", True, False, TXT2IMG),
    ("script_name", "x/y/z plot", "", TXT2IMG),
    ("alwayson_scripts", {"ADetailer": {"args": []}}, {}, TXT2IMG),
    ("firstphase_width", 256, 0, TXT2IMG),
    ("firstphase_height", 256, 0, TXT2IMG),
    ("firstpass_image", INIT, None, TXT2IMG),
    ("initial_noise_multiplier", 0.9, 1, IMG2IMG),
    ("latent_mask", MASK, None, IMG2IMG),
    ("mask_round", False, True, IMG2IMG),
]


def test_every_a1111_field_is_declared_and_has_one_fate() -> None:
    assert set(Txt2ImgRequest.model_fields) == A1111_TXT2IMG
    assert set(Img2ImgRequest.model_fields) == A1111_IMG2IMG
    fates = [HONOURED, set(MEANINGLESS), set(REFUSED)]
    for name in A1111_TXT2IMG | A1111_IMG2IMG:
        assert sum(name in fate for fate in fates) == 1, name
    assert set().union(*fates) == A1111_TXT2IMG | A1111_IMG2IMG
    # And this file has a row for each.
    rows = {row.name for row in HONOURED_ROWS}
    assert rows == HONOURED
    assert {row[0] for row in MEANINGLESS_ROWS} == set(MEANINGLESS)
    assert {row[0] for row in REFUSED_ROWS} == set(REFUSED)


def _body(path: str, base: dict[str, Any]) -> dict[str, Any]:
    if path == IMG2IMG and "init_images" not in base:
        return {**base, "init_images": [INIT]}
    return dict(base)


@pytest.mark.parametrize("row", HONOURED_ROWS, ids=lambda row: row.name)
def test_an_honoured_field_changes_the_job(
    client: TestClient, fake: FakeGenerator, settings: Any, row: Row
) -> None:
    (settings.resolved_data_dir / "styles.csv").write_text(
        "name,prompt,negative_prompt\nSharp,sharp focus,\n"
    )
    other = fake.builtin.parent / "other.safetensors"
    other.write_bytes(fake.builtin.read_bytes() + b" other")
    response = client.post(row.path, json={**row.base, **row.fields})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert row.check(fake.calls[-1], answer, client), (row.name, fake.calls[-1].params)


@pytest.mark.parametrize(("name", "fields", "path"), MEANINGLESS_ROWS)
def test_a_meaningless_field_leaves_the_job_as_it_was(
    client: TestClient, fake: FakeGenerator, name: str, fields: dict[str, Any], path: str
) -> None:
    body = _body(path, BASE)
    assert client.post(path, json=body).status_code == 200
    without = fake.calls[-1]
    response = client.post(path, json={**body, **fields})
    assert response.status_code == 200, response.text
    assert fake.calls[-1].params == without.params, name
    assert fake.calls[-1].model == without.model


@pytest.mark.parametrize(("name", "bad", "good", "path"), REFUSED_ROWS)
def test_a_refused_field_names_itself_unless_it_keeps_dalis_value(
    client: TestClient, fake: FakeGenerator, name: str, bad: Any, good: Any, path: str
) -> None:
    body = _body(path, BASE)
    response = client.post(path, json={**body, name: bad})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", name] and fake.calls == []
    assert client.post(path, json={**body, name: good}).status_code == 200


def test_eta_where_the_sampler_has_one(client: TestClient, fake: FakeGenerator) -> None:
    # Euler has no eta: meaningless there, as in A1111 (webuiapi sends 1.0 with every request).
    assert client.post(TXT2IMG, json={**BASE, "sampler_name": "Euler", "eta": 0.3}).status_code
    assert fake.calls[-1].params.eta is None
    # Euler a's own is 1: nothing to pass on; DDIM's is 0, so webuiapi's 1.0 is honoured.
    client.post(TXT2IMG, json={**BASE, "eta": 1.0})
    assert fake.calls[-1].params.eta is None
    client.post(TXT2IMG, json={**BASE, "sampler_name": "DDIM", "eta": 1.0})
    assert fake.calls[-1].params.eta == 1.0
    bad = client.post(TXT2IMG, json={**BASE, "eta": 1.5})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "eta"]


def test_unequal_mask_blurs_and_fixed_override_settings_are_refused(client: TestClient) -> None:
    response = client.post(IMG2IMG, json={**PAINT, "mask_blur_x": 4, "mask_blur_y": 8})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "mask_blur_y"]
    response = client.post(TXT2IMG, json={**BASE, "override_settings": {"samples_format": "jpg"}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "override_settings", "samples_format"]
    same = {**BASE, "override_settings": {"samples_format": "png"}}
    assert client.post(TXT2IMG, json=same).status_code == 200


def test_the_answer_echoes_the_declared_fields_as_a1111_does(client: TestClient) -> None:
    answer = client.post(TXT2IMG, json={**BASE, "comments": {"a": 1}, "s_tmax": 5.0}).json()
    assert answer["parameters"]["comments"] == {"a": 1}
    assert answer["parameters"]["s_tmax"] == 5.0 and answer["parameters"]["s_noise"] == 1.0
