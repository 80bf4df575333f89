"""'Send to img2img / inpaint': a gallery image opens the generate page as the init image, named
by its id (`init_from` on the page, `init_image_id` in the form and the REST request), and the
job starts from that image's very pixels; an unknown, deleted or oversized image is refused
naming the field. Driven as a browser without JavaScript would."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def made_image(client: TestClient, project_id: int, **fields: Any) -> dict[str, Any]:
    """A finished generation's first image (the REST view)."""
    done = wait_for(client, submit(client, project_id, **fields)["id"])
    image: dict[str, Any] = done["images"][0]
    return image


def pixels_of(client: TestClient, image: dict[str, Any]) -> np.ndarray:
    with Image.open(io.BytesIO(client.get(image["url"]).content)) as opened:
        return np.asarray(opened.convert("RGB"))


def test_send_to_img2img_starts_the_job_from_the_images_pixels(
    client: TestClient, fake: FakeGenerator, settings: Settings
) -> None:
    fake.textured = True  # random pixels: a resampled or re-encoded copy would show
    project = make_project(client, "Send")
    source = made_image(client, project["id"], prompt="a blue square", seed=9, steps=7)

    page = client.get(f"/projects/{project['id']}?init_from={source['id']}")
    assert page.status_code == 200
    text = page.text
    assert f'name="init_image_id" value="{source["id"]}"' in text
    assert f'id="init-preview" alt="The init image" src="{source["url"]}"' in text
    assert re.search(r'<details id="init-tools"\s+open', text)  # shown without any script
    assert ">a blue square</textarea>" in text and 'value="7"' in text  # its settings
    assert 'id="random_seed" name="random_seed" checked' in text  # but a new seed

    queued = client.post(
        f"/projects/{project['id']}/generate",
        data={"prompt": "a red square", "init_image_id": str(source["id"]), "strength": "0.4",
              "random_seed": "on"},
        follow_redirects=False,
    )  # fmt: skip
    assert queued.status_code == 303, queued.text
    done = wait_for(client, int(queued.headers["location"].rsplit("/", 1)[1]))
    assert done["has_init_image"] and done["strength"] == 0.4
    sent = pixels_of(client, source)
    engine_got = fake.calls[-1].init_image
    assert engine_got is not None and (np.asarray(engine_got.convert("RGB")) == sent).all()
    stored = settings.resolved_data_dir / "inputs" / str(done["id"]) / "init.png"
    with Image.open(stored) as kept:
        assert (np.asarray(kept.convert("RGB")) == sent).all()


def test_the_rest_api_takes_an_image_id_from_any_project(
    client: TestClient, fake: FakeGenerator
) -> None:
    fake.textured = True
    first = make_project(client, "First")
    source = made_image(client, first["id"], seed=3)
    other = make_project(client, "Second")  # every project is open to whoever is let in
    done = wait_for(client, submit(client, other["id"], init_image_id=source["id"])["id"])
    assert done["has_init_image"] and done["project_id"] == other["id"]
    engine_got = fake.calls[-1].init_image
    assert engine_got is not None
    assert (np.asarray(engine_got) == pixels_of(client, source)).all()


def test_an_unknown_image_is_refused_naming_the_field(client: TestClient) -> None:
    project = make_project(client, "Unknown")
    page = client.get(f"/projects/{project['id']}?init_from=999")
    assert page.status_code == 404
    assert re.search(r'id="init_image_id-error"[^>]*>Image #999 is not in the gallery', page.text)
    assert 'name="init_image_id" value=""' in page.text and 'id="generate-form"' in page.text

    form = client.post(
        f"/projects/{project['id']}/generate", data={"prompt": "x", "init_image_id": "999"}
    )
    assert form.status_code == 422
    assert re.search(r'id="init_image_id-error"[^>]*>init_image_id: 999 is not allowed; no image',
                     form.text)  # fmt: skip
    api = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x", "init_image_id": 999}
    )
    assert api.status_code == 422
    assert api.json()["detail"][0]["loc"] == ["body", "init_image_id"]
    for bad in ("abc", "0", "-4", str(2**63)):
        refused = client.post(
            f"/projects/{project['id']}/generate", data={"prompt": "x", "init_image_id": bad}
        )
        assert refused.status_code == 422, bad
        assert 'id="init_image_id-error"' in refused.text, bad
    assert client.get(f"/projects/{project['id']}?init_from=abc").status_code == 422


def test_a_file_and_an_image_id_together_are_refused(client: TestClient) -> None:
    project = make_project(client, "Both")
    source = made_image(client, project["id"])
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    both = client.post(
        f"/projects/{project['id']}/generate",
        data={"prompt": "x", "init_image_id": str(source["id"])},
        files={"init_image": ("init.png", buffer.getvalue(), "image/png")},
    )
    assert both.status_code == 422
    assert re.search(r'id="init_image_id-error"[^>]*>[^<]*not both', both.text)
    # The page offers the sent image again, so the user can choose one of the two.
    assert f'name="init_image_id" value="{source["id"]}"' in both.text


def test_an_image_larger_than_an_init_image_may_be_is_refused(client: TestClient) -> None:
    project = make_project(client, "Large")
    source = made_image(client, project["id"], width=2048, height=2048, steps=1)
    upscaled = client.post(
        f"/api/v1/images/{source['id']}/upscale", json={"upscaler": "Nearest", "scale": 1.05}
    )
    assert upscaled.status_code == 201, upscaled.text
    big = upscaled.json()["id"]
    refused = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "x", "init_image_id": big}
    )
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "init_image_id"] and "2150×2150" in error["msg"]
    assert "at most 2048" in error["msg"]


def test_a_deleted_images_file_is_not_read_from_a_path_the_request_names(
    client: TestClient, settings: Settings
) -> None:
    """Only the id travels: a row whose file is gone is an unknown image, and no request path
    reaches the file system."""
    project = make_project(client, "Gone")
    source = made_image(client, project["id"])
    png = Path(settings.resolved_data_dir / "images" / str(project["id"]))
    for path in png.glob("*.png"):
        path.unlink()
    refused = client.post(
        f"/api/v1/projects/{project['id']}/generations",
        json={"prompt": "x", "init_image_id": source["id"]},
    )
    assert refused.status_code == 422 and "no image with this id" in refused.text


def test_send_links_on_the_image_generation_and_gallery_pages(client: TestClient) -> None:
    project = make_project(client, "Links")
    source = made_image(client, project["id"])
    img2img = f'href="/projects/{project["id"]}?init_from={source["id"]}#init-tools"'
    inpaint = f'href="/projects/{project["id"]}?init_from={source["id"]}&amp;inpaint=1#init-tools"'
    for url in (f"/images/{source['id']}", f"/generations/{source['generation_id']}",
                f"/projects/{project['id']}/gallery"):  # fmt: skip
        text = client.get(url).text
        assert img2img in text and inpaint in text, url


def test_send_to_inpaint_opens_the_init_image_section_with_the_masks_hint(
    client: TestClient,
) -> None:
    project = make_project(client, "Inpaint")
    source = made_image(client, project["id"])
    plain = client.get(f"/projects/{project['id']}?init_from={source['id']}").text
    inpaint = client.get(f"/projects/{project['id']}?init_from={source['id']}&inpaint=1").text
    assert 'data-inpaint="false"' in plain and "paint the mask" not in plain
    assert 'data-inpaint="true"' in inpaint and "Then paint the mask over it" in inpaint
    nothing_sent = client.get(f"/projects/{project['id']}?inpaint=1").text
    assert re.search(r'<details id="init-tools"\s+open', nothing_sent)
    assert not re.search(
        r'<details id="init-tools"\s+open', client.get(f"/projects/{project['id']}").text
    )
