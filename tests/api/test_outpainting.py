"""REST outpainting: `outpaint` margins make an inpaint of the grown picture's new area."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_outpaint_margins_queue_an_inpaint_of_the_new_area(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    init = Image.new("RGB", (64, 64), "red")
    margins = {"left": 16, "top": 5, "overlap": 4}
    job = submit(client, project["id"], init_image=png_b64(init), outpaint=margins)
    wait_for(client, job["id"])
    call = fake.calls[-1]
    assert call.init_image is not None and call.mask is not None
    assert call.init_image.size == call.mask.size == (80, 72)  # top grew to 8 (the grid)
    assert (call.params.width, call.params.height, call.params.inpainting_fill) == (80, 72, 0)
    kept = np.asarray(call.mask) == 0
    assert kept[12:, 20:].all() and not kept[:12].any() and not kept[:, :20].any()
    assert np.array_equal(np.asarray(call.init_image)[8:, 16:], np.asarray(init))


def test_outpaint_needs_an_image_and_no_mask(client: TestClient) -> None:
    project = make_project(client)
    url = f"/api/v1/projects/{project['id']}/generations"
    image = png_b64(Image.new("RGB", (64, 64)))
    bodies = [
        {"prompt": "x", "outpaint": {"right": 8}},
        {"prompt": "x", "outpaint": {"right": 8}, "init_image": image, "mask": image},
        {"prompt": "x", "outpaint": {"right": 2040}, "init_image": image},
    ]
    for body in bodies:
        response = client.post(url, json=body)
        assert response.status_code == 422, response.text
