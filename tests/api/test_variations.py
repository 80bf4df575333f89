"""The image page's "Variations": four jobs of one image each, with the image's settings and
seed and consecutive variation seeds at the strength asked (0.3 unless said), the init image
and mask of an img2img or inpainting carried over; bad values beside their field. Driven as a
browser without JavaScript would."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

PARAMS = ("prompt", "negative_prompt", "sampler", "steps", "guidance", "width", "height", "model",
          "clip_skip", "tiling", "strength")  # fmt: skip


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Room for two rounds of variations, not three (the last test fills the queue)."""
    return settings.model_copy(update={"queue_limit": 6})


def vary(client: TestClient, image_id: int, **fields: str) -> Any:
    return client.post(f"/images/{image_id}/variations", data=fields, follow_redirects=False)


def new_jobs(client: TestClient, project_id: int, after: int) -> list[dict[str, Any]]:
    """The project's generations with an id above `after`, oldest first."""
    listed = client.get(f"/api/v1/projects/{project_id}/generations").json()["items"]
    return sorted((g for g in listed if g["id"] > after), key=lambda g: g["id"])


def test_four_variations_of_an_image_with_its_settings_and_seed(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, "Vary")
    source = wait_for(client, submit(client, project["id"], prompt="a red circle", seed=40,
                                     batch=2, steps=6, guidance=5.5, width=72, height=80,
                                     sampler="ddim", negative_prompt="blur", tiling=True)["id"])  # fmt: skip
    image = source["images"][1]  # the second of the batch: seed 41
    page = client.get(f"/images/{image['id']}")
    assert 'action="/images/{}/variations"'.format(image["id"]) in page.text
    assert re.search(r'id="variation_strength"[^>]*value="0.3"', page.text)

    answer = vary(client, image["id"], variation_strength="0.25", variation_seed="1000")
    assert answer.status_code == 303 and answer.headers["location"] == f"/projects/{project['id']}"
    jobs = [wait_for(client, job["id"]) for job in new_jobs(client, project["id"], source["id"])]
    assert len(jobs) == 4
    for offset, job in enumerate(jobs):
        assert (job["seed"], job["batch"]) == (41, 1)
        assert (job["variation_seed"], job["variation_strength"]) == (1000 + offset, 0.25)
        assert {name: job[name] for name in PARAMS} == {name: source[name] for name in PARAMS}
    engine_got = [call.params for call in fake.calls[-4:]]
    assert [(p.seed, p.variation_seed, p.variation_strength) for p in engine_got] == [
        (41, 1000 + offset, 0.25) for offset in range(4)
    ]
    assert all(call.init_image is None and call.mask is None for call in fake.calls[-4:])


def test_the_defaults_are_strength_0_3_and_a_random_first_seed(client: TestClient) -> None:
    project = make_project(client, "Defaults")
    source = wait_for(client, submit(client, project["id"], seed=7)["id"])
    assert vary(client, source["images"][0]["id"]).status_code == 303
    jobs = new_jobs(client, project["id"], source["id"])
    seeds = [job["variation_seed"] for job in jobs]
    assert [job["variation_strength"] for job in jobs] == [0.3] * 4
    assert seeds[0] is not None and seeds == [seeds[0] + offset for offset in range(4)]
    assert [job["seed"] for job in jobs] == [7] * 4


def test_an_inpainted_image_varies_with_its_init_image_and_mask(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, "Inpainted")
    init = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 20:50] = 255

    def b64(pixels: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    source = wait_for(client, submit(client, project["id"], init_image=b64(init), mask=b64(mask),
                                     strength=0.6, mask_blur=4, inpainting_fill=2)["id"])  # fmt: skip
    assert vary(client, source["images"][0]["id"], variation_seed="5").status_code == 303
    jobs = [wait_for(client, job["id"]) for job in new_jobs(client, project["id"], source["id"])]
    assert [job["variation_seed"] for job in jobs] == [5, 6, 7, 8]
    assert all(job["has_init_image"] and job["has_mask"] for job in jobs)
    for call in fake.calls[-4:]:
        assert call.init_image is not None and call.mask is not None
        assert (np.asarray(call.init_image.convert("RGB")) == init).all()
        assert (np.asarray(call.mask.convert("L")) == mask).all()
        assert (call.params.strength, call.params.mask_blur) == (0.6, 4)
        assert call.params.inpainting_fill == 2


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"variation_strength": "0"}, "variation_strength", "must be more than 0"),
        ({"variation_strength": "1.5"}, "variation_strength", "must be at most 1"),
        ({"variation_strength": "much"}, "variation_strength", "number"),
        ({"variation_seed": str(2**32 - 2)}, "variation_seed", "4294967295"),
        ({"variation_seed": "-7"}, "variation_seed", "-1"),
    ],
)
def test_bad_values_are_said_beside_their_field(
    client: TestClient, fields: dict[str, str], field: str, words: str
) -> None:
    project = make_project(client, "Bad")
    source = wait_for(client, submit(client, project["id"])["id"])
    refused = vary(client, source["images"][0]["id"], **fields)
    assert refused.status_code == 422
    message = re.search(rf'id="{field}-error"[^>]*>([^<]*)<', refused.text)
    assert message is not None and words in message.group(1), refused.text
    assert new_jobs(client, project["id"], source["id"]) == []  # nothing queued


def test_an_unknown_image_is_a_404_naming_it(client: TestClient) -> None:
    missing = vary(client, 999, variation_strength="0.3")
    assert missing.status_code == 404 and "image 999 not found" in missing.text


def test_a_full_queue_takes_what_fits_then_says_so(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client, "Full")
    source = wait_for(client, submit(client, project["id"])["id"])
    image = source["images"][0]["id"]
    fake.block_at = 1  # the worker holds the next job, so the others wait in the queue
    first = submit(client, project["id"])
    fake.reached.wait(10)
    assert vary(client, image).status_code == 303  # 4 of 6 places
    assert vary(client, image).status_code == 303  # 2 fit, the rest would not
    assert len(new_jobs(client, project["id"], first["id"])) == 6
    full = vary(client, image)
    assert full.status_code == 429 and "queue is full" in full.text
    fake.release.set()
