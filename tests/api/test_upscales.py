"""Upscaling a gallery image into a new gallery image (services/upscales.py), on a real SQLite
file and real files, with the fake engine drawing random pixels to resample."""

from __future__ import annotations

import html
import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sd_core.pngmeta import png_text_chunks
from stable_diffusion_api.config import Settings
from stable_diffusion_api.errors import InvalidField, NotFound
from stable_diffusion_api.services import Studio
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

POSTPROCESSING = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


@pytest.fixture
def studio(client: TestClient, fake: FakeGenerator) -> Studio:
    fake.textured = True
    found: Studio = client.app.state.studio  # type: ignore[attr-defined]
    return found


@pytest.fixture
def upscalers(settings: Settings) -> Path:
    """The model upscalers' folder, made."""
    folder = settings.resolved_data_dir / "upscalers"
    folder.mkdir(parents=True)
    return folder


def generated(client: TestClient, **fields: Any) -> dict[str, Any]:
    """The first image of a new generation in a new project."""
    project = make_project(client, f"Upscales {fields}")
    done = wait_for(client, submit(client, project["id"], **fields)["id"])
    image: dict[str, Any] = done["images"][0]
    return image


def opened(settings: Settings, relative: str) -> Image.Image:
    """A stored file, read whole (its `format` kept)."""
    with Image.open(settings.resolved_data_dir / relative) as image:
        image.load()
    return image


def stored_files(settings: Settings) -> list[str]:
    root = settings.resolved_data_dir / "images"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_lanczos_doubles_the_image_into_a_new_gallery_image(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client, width=96, height=64, seed=7)
    source_row = studio.gallery.get(source["id"])
    up = studio.upscales.upscale(source["id"], "Lanczos", 2)

    assert (up.width, up.height) == (192, 128)
    assert (up.generation_id, up.project_id, up.index, up.seed) == (
        source["generation_id"], source["project_id"], 0, 7
    )  # fmt: skip
    assert up.source_image_id == source["id"] and up.postprocessing == POSTPROCESSING
    assert up.parameters == source["parameters"] and "Seed: 7" in up.parameters

    row = studio.gallery.get(up.id)
    assert row.path == f"images/{up.project_id}/{up.generation_id}-1.png"
    with Image.open(settings.resolved_data_dir / row.path) as png:
        chunks = png_text_chunks(png)
        pixels = png.convert("RGB")
    original = opened(settings, source_row.path)
    assert pixels.tobytes() == original.resize((192, 128), Image.Resampling.LANCZOS).tobytes()
    assert pixels.tobytes() != original.resize((192, 128), Image.Resampling.NEAREST).tobytes()
    # A1111's extras tab saves an upscale so: the source's infotext, and its own chunks.
    assert chunks["parameters"] == source["parameters"]
    assert chunks["postprocessing"] == chunks["extras"] == POSTPROCESSING
    dali = json.loads(chunks["dali"])
    assert dali["seed"] == 7 and dali["generation_id"] == up.generation_id
    assert dali["postprocessing"] == {
        "source_image_id": source["id"], "upscaler": "Lanczos", "upscale_by": 2,
        "width": 192, "height": 128,
    }  # fmt: skip
    thumbnail = opened(settings, row.thumb_path)
    assert thumbnail.format == "JPEG" and thumbnail.size == (192, 128)

    # In the gallery, newest first, and among its generation's images.
    page, total = studio.gallery.page(up.project_id, 0, 10)
    assert total == 2 and [i.id for i in page] == [up.id, source["id"]]
    generation = client.get(f"/api/v1/generations/{up.generation_id}").json()
    assert [i["id"] for i in generation["images"]] == [source["id"], up.id]
    assert [i["source_image_id"] for i in generation["images"]] == [None, source["id"]]


def test_nearest_by_a_fraction_and_names_in_any_case(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client, width=64, height=64)
    up = studio.upscales.upscale(source["id"], "nEAREST", 1.5)
    assert (up.width, up.height) == (96, 96)
    assert up.postprocessing == "Postprocess upscale by: 1.5, Postprocess upscaler: Nearest"
    original = opened(settings, studio.gallery.get(source["id"]).path)
    result = opened(settings, studio.gallery.get(up.id).path)
    assert result.tobytes() == original.resize((96, 96), Image.Resampling.NEAREST).tobytes()


def test_every_upscale_gets_its_own_file_also_at_the_same_time(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client, width=64, height=64, batch=2)
    made: list[int] = []

    def upscale(scale: float) -> None:
        made.append(studio.upscales.upscale(source["id"], "Lanczos", scale).id)

    threads = [threading.Thread(target=upscale, args=(s,)) for s in (2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = [studio.gallery.get(i) for i in sorted(made)]
    assert len({row.path for row in rows}) == 3
    generation = source["generation_id"]
    # Numbered after the batch's own two images.
    assert sorted(row.path.rsplit("/", 1)[1] for row in rows) == [
        f"{generation}-2.png", f"{generation}-3.png", f"{generation}-4.png"
    ]  # fmt: skip
    assert sorted(opened(settings, row.path).width for row in rows) == [128, 192, 256]
    # An upscale of an upscale links to the image it was made from.
    again = studio.upscales.upscale(rows[0].id, "Nearest", 2)
    assert again.source_image_id == rows[0].id and again.seed == source["seed"]


def test_deleting_the_source_keeps_the_upscale_deleting_the_generation_removes_it(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client)
    up = studio.upscales.upscale(source["id"], "Lanczos", 2)
    assert client.delete(f"/api/v1/images/{source['id']}").status_code == 204
    kept = client.get(f"/api/v1/images/{up.id}").json()
    assert kept["source_image_id"] is None and kept["postprocessing"] == POSTPROCESSING
    assert client.get(kept["url"]).status_code == 200

    assert client.delete(f"/api/v1/generations/{up.generation_id}").status_code == 204
    assert client.get(f"/api/v1/images/{up.id}").status_code == 404
    assert stored_files(settings) == []


def test_deleting_a_project_removes_its_upscales_of_upscales(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client)
    up = studio.upscales.upscale(source["id"], "Lanczos", 2)
    studio.upscales.upscale(up.id, "Nearest", 2)
    deleted = client.delete(f"/api/v1/projects/{up.project_id}", params={"confirm": "true"})
    assert deleted.status_code == 204 and stored_files(settings) == []


def test_recovery_keeps_the_upscales_files(
    client: TestClient, studio: Studio, settings: Settings
) -> None:
    source = generated(client)
    up = studio.upscales.upscale(source["id"], "Lanczos", 2)
    before = stored_files(settings)
    report = studio.workers.recover()
    assert report.quarantined_files == 0 and report.removed_rows == 0
    assert stored_files(settings) == before
    assert client.get(f"/api/v1/images/{up.id}/file").status_code == 200


@pytest.mark.parametrize(
    ("upscaler", "scale", "field", "says"),
    [
        ("None", 2, "upscaler", "upscalers installed: Lanczos, Nearest"),
        ("Latent", 2, "upscaler", "upscalers installed: Lanczos, Nearest"),
        ("../../etc/passwd", 2, "upscaler", "upscalers installed"),
        ("Lanczos", 1, "scale", "more than 1, at most 8"),
        ("Lanczos", 0.5, "scale", "more than 1"),
        ("Lanczos", float("nan"), "scale", "more than 1"),
        ("Lanczos", 9, "scale", "at most 8"),
        ("Lanczos", 1.0001, "scale", "as large as it is"),  # 2048.2 → 2048
        ("Lanczos", 5, "scale", "at most 8192 pixels a side"),  # 2048 × 5 = 10240
    ],
)
def test_bad_upscalers_and_scales_are_refused_naming_the_field(
    client: TestClient,
    studio: Studio,
    settings: Settings,
    upscaler: str,
    scale: float,
    field: str,
    says: str,
) -> None:
    source = generated(client, width=2048, height=64)
    before = stored_files(settings)
    with pytest.raises(InvalidField) as refused:
        studio.upscales.upscale(source["id"], upscaler, scale)
    assert refused.value.field == field and says in refused.value.message
    assert stored_files(settings) == before


def test_a_model_file_that_cannot_be_used_is_refused_naming_the_upscaler(
    client: TestClient, studio: Studio, settings: Settings, upscalers: Path
) -> None:
    (upscalers / "broken.pth").write_bytes(b"not a torch file")
    assert studio.upscales.upscalers() == ["Lanczos", "Nearest", "broken"]
    source = generated(client)
    before = stored_files(settings)
    with pytest.raises(InvalidField) as refused:
        studio.upscales.upscale(source["id"], "broken", 2)
    assert refused.value.field == "upscaler" and "broken" in refused.value.message
    assert stored_files(settings) == before


def test_an_unknown_image_is_not_found(studio: Studio) -> None:
    with pytest.raises(NotFound):
        studio.upscales.upscale(12345, "Lanczos", 2)


def test_a_failed_write_leaves_no_file_and_no_row(
    client: TestClient, studio: Studio, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = generated(client)
    before = stored_files(settings)

    def full_disk(image: Image.Image, relative: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(studio.storage, "write_thumbnail", full_disk)
    with pytest.raises(OSError, match="No space"):
        studio.upscales.upscale(source["id"], "Lanczos", 2)
    assert stored_files(settings) == before
    assert studio.gallery.page(source["project_id"], 0, 10)[1] == 1


def test_a_source_deleted_meanwhile_is_not_found_and_leaves_no_file(
    client: TestClient, studio: Studio, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = generated(client)
    write_thumbnail = studio.storage.write_thumbnail

    def delete_first(image: Image.Image, relative: str) -> None:
        studio.gallery.delete(source["id"])  # another request, while this one writes
        write_thumbnail(image, relative)

    monkeypatch.setattr(studio.storage, "write_thumbnail", delete_first)
    with pytest.raises(NotFound):
        studio.upscales.upscale(source["id"], "Lanczos", 2)
    # What is left is the generation's filmstrip: no upscale, no claimed name, no thumbnail.
    assert stored_files(settings) == [
        f"{source['project_id']}/filmstrips/{source['generation_id']}.png"
    ]


def test_claimed_names_skip_files_that_exist(studio: Studio) -> None:
    storage = studio.storage
    first = storage.claim_image_paths(3, 9, 1)
    second = storage.claim_image_paths(3, 9, 1)
    assert first == ("images/3/9-1.png", "images/3/thumbs/9-1.jpg")
    assert second == ("images/3/9-2.png", "images/3/thumbs/9-2.jpg")
    assert storage.read(first[0]) == b""  # claimed, empty until written


# -- REST ---------------------------------------------------------------------------------------


def test_rest_upscale_answers_201_with_the_new_image(client: TestClient, studio: Studio) -> None:
    source = generated(client, width=64, height=64)
    answer = client.post(
        f"/api/v1/images/{source['id']}/upscale", json={"upscaler": "Lanczos", "scale": 2}
    )
    assert answer.status_code == 201, answer.text
    up = answer.json()
    assert answer.headers["location"] == f"/api/v1/images/{up['id']}"
    assert (up["width"], up["height"], up["source_image_id"]) == (128, 128, source["id"])
    assert up["postprocessing"] == POSTPROCESSING and up["parameters"] == source["parameters"]
    assert client.get(answer.headers["location"]).json() == up
    png = client.get(up["url"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (128, 128)
    listed = client.get(f"/api/v1/projects/{source['project_id']}/images").json()["items"]
    assert [i["id"] for i in listed] == [up["id"], source["id"]]
    # The scale's default is 2, as A1111's extras'.
    again = client.post(f"/api/v1/images/{source['id']}/upscale", json={"upscaler": "nearest"})
    assert again.status_code == 201 and again.json()["width"] == 128
    assert again.json()["postprocessing"].endswith("Postprocess upscaler: Nearest")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"upscaler": "R-ESRGAN 4x+"}, "upscaler", "upscalers installed: Lanczos, Nearest"),
        ({"upscaler": "None"}, "upscaler", "upscalers installed: Lanczos, Nearest"),
        ({"upscaler": ""}, "upscaler", "must not be empty"),
        ({"scale": 2}, "upscaler", "is required"),
        ({"upscaler": "Lanczos", "scale": 1}, "scale", "must be more than 1"),
        ({"upscaler": "Lanczos", "scale": 8.5}, "scale", "must be at most 8"),
        ({"upscaler": "Lanczos", "scale": True}, "scale", "not true/false"),
        ({"upscaler": "Lanczos", "scale": "big"}, "scale", "must be a number"),
        ({"upscaler": "Lanczos", "scale": 5}, "scale", "at most 8192 pixels a side"),
        ({"upscaler": "Lanczos", "scale": 1.0001}, "scale", "as large as it is"),
        ({"upscaler": "Lanczos", "denoise": 0.3}, "denoise", "is not a setting this accepts"),
    ],
)
def test_rest_refuses_bad_bodies_with_a_422_naming_the_field(
    client: TestClient, settings: Settings, body: dict[str, Any], field: str, says: str
) -> None:
    source = generated(client, width=2048, height=64)
    before = stored_files(settings)
    answer = client.post(f"/api/v1/images/{source['id']}/upscale", json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", field] and says in error["msg"]
    assert stored_files(settings) == before


def test_rest_upscale_of_an_unknown_image_is_404(client: TestClient) -> None:
    answer = client.post("/api/v1/images/999/upscale", json={"upscaler": "Lanczos"})
    assert answer.status_code == 404 and answer.json() == {"detail": "image 999 not found"}
    assert client.post("/api/v1/images/0/upscale", json={"upscaler": "Lanczos"}).status_code == 422


def test_rest_upscale_is_in_the_openapi_with_its_responses(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/api/v1/images/{image_id}/upscale"]["post"]
    # Besides what every guarded write may answer (400, 401, 403, 413, 421; 503 when the
    # database refuses writes): the new image, no such image, a bad field.
    assert {"201", "404", "422"} <= set(operation["responses"])
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/ImageOut"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/UpscaleRequest"}
    fields = schema["components"]["schemas"]["UpscaleRequest"]["properties"]
    assert fields["scale"]["exclusiveMinimum"] == 1 and fields["scale"]["maximum"] == 8
    image = schema["components"]["schemas"]["ImageOut"]["properties"]
    assert "source_image_id" in image and "postprocessing" in image


# -- the image page -----------------------------------------------------------------------------


def test_the_image_page_upscales_without_javascript(
    client: TestClient, studio: Studio, upscalers: Path
) -> None:
    (upscalers / "4x-Tiny.safetensors").write_bytes(b"listed, never loaded here")
    source = generated(client, width=64, height=64)
    page = client.get(f"/images/{source['id']}")
    form = page.text[page.text.index('<form method="post" action="/images/') :]
    assert f'action="/images/{source["id"]}/upscale"' in form
    assert re.findall(r'<option value="([^"]+)"', form) == ["Lanczos", "Nearest", "4x-Tiny"]
    assert '<option value="Lanczos" selected>' in form and 'value="2"' in form
    assert str(upscalers) in form  # where model files go

    posted = client.post(
        f"/images/{source['id']}/upscale",
        data={"upscaler": "Nearest", "scale": "3"},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    up = client.get("/api/v1/projects/{}/images".format(source["project_id"])).json()["items"][0]
    assert posted.headers["location"] == f"/images/{up['id']}"
    assert (up["width"], up["source_image_id"]) == (192, source["id"])
    shown = client.get(posted.headers["location"]).text
    assert (
        "192×192" in shown
        and f'<a href="/images/{source["id"]}">image #{source["id"]}</a>' in shown
    )
    assert "Postprocess upscale by: 3, Postprocess upscaler: Nearest" in shown

    # An empty scale takes the default, 2.
    default = client.post(
        f"/images/{source['id']}/upscale", data={"upscaler": "Lanczos", "scale": ""}
    )
    assert default.status_code == 200 and "128×128" in default.text  # followed to the new page

    # "Use these settings" on the upscale makes its source again: the source's size and seed.
    reuse = client.get(f"/projects/{source['project_id']}?from_image={up['id']}").text
    assert '<option value="64" selected>' in reuse and f'value="{source["seed"]}"' in reuse

    client.delete(f"/api/v1/images/{source['id']}")
    assert "from an image since deleted" in client.get(posted.headers["location"]).text


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"upscaler": "Lanczos", "scale": "9"}, "scale", "must be at most 8"),
        ({"upscaler": "Lanczos", "scale": "lots"}, "scale", "must be a number"),
        ({"upscaler": "Lanczos", "scale": "1.0001"}, "scale", "as large as it is"),
        ({"upscaler": "Bogus", "scale": "2"}, "upscaler", "upscalers installed: Lanczos, Nearest"),
        ({"scale": "2"}, "upscaler", "is required"),
    ],
)
def test_a_bad_upscale_form_shows_the_error_beside_its_field(
    client: TestClient, settings: Settings, data: dict[str, str], field: str, says: str
) -> None:
    source = generated(client, width=64, height=64)
    before = stored_files(settings)
    answer = client.post(f"/images/{source['id']}/upscale", data=data)
    assert answer.status_code == 422
    message = re.search(
        rf'<p class="field-error" id="{field}-error" role="alert">([^<]*)</p>', answer.text
    )
    assert message is not None and says in html.unescape(message.group(1))
    assert f'aria-invalid="true" aria-describedby="{field}-error"' in answer.text
    # What was sent is shown again, so it can be corrected.
    if "scale" in data:
        assert f'value="{data["scale"]}"' in answer.text
    if data.get("upscaler") == "Bogus":
        assert '<option value="Bogus" selected>Bogus — not installed</option>' in answer.text
    assert stored_files(settings) == before


def test_the_upscale_form_of_an_unknown_image_is_a_404_page(client: TestClient) -> None:
    answer = client.post(
        "/images/999/upscale",
        data={"upscaler": "Lanczos", "scale": "2"},
        headers={"accept": "text/html"},
    )
    assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html")
