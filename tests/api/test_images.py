"""Image files: PNG with metadata naming the project, thumbnails, headers, gallery order."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from tests.api.helpers import make_project, submit, wait_for


def test_png_and_thumbnail_are_served_with_types_and_caching(
    client: TestClient, settings: Settings
) -> None:
    project = make_project(client, "Gallery test")
    done = wait_for(client, submit(client, project["id"], width=256, height=128, seed=7)["id"])
    image = done["images"][0]
    assert (image["width"], image["height"], image["seed"]) == (256, 128, 7)

    png = client.get(image["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert (
        "immutable" in png.headers["cache-control"] and "max-age=" in png.headers["cache-control"]
    )
    assert png.headers["etag"] and png.headers["last-modified"]
    decoded = Image.open(io.BytesIO(png.content))
    assert decoded.format == "PNG" and decoded.size == (256, 128)
    assert decoded.info["parameters"] == image["parameters"]
    assert "Seed: 7" in decoded.info["parameters"]
    dali = json.loads(decoded.info["dali"])
    assert dali["project"] == "Gallery test" and dali["generation_id"] == done["id"]

    thumb = client.get(image["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    small = Image.open(io.BytesIO(thumb.content))
    assert small.format == "JPEG" and max(small.size) <= 256 and small.size[0] == 2 * small.size[1]

    # A conditional request for an unchanged file costs no body.
    again = client.get(image["url"], headers={"if-none-match": png.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    # Files live under data/images/<project id>/ (the PNG, its thumbnail, the run's filmstrip).
    stored = settings.resolved_data_dir / "images" / str(project["id"])
    assert sorted(p.relative_to(stored).as_posix() for p in stored.rglob("*.*")) == [
        f"{done['id']}-0.png",
        f"filmstrips/{done['id']}.png",
        f"thumbs/{done['id']}-0.jpg",
    ]


def test_gallery_lists_newest_first_and_deletes(client: TestClient) -> None:
    project = make_project(client)
    first = wait_for(client, submit(client, project["id"], batch=2)["id"])
    second = wait_for(client, submit(client, project["id"])["id"])
    url = f"/api/v1/projects/{project['id']}/images"
    page = client.get(url).json()
    expected = [second["images"][0]["id"], *[i["id"] for i in first["images"]][::-1]]
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == expected
    assert [i["id"] for i in client.get(url, params={"offset": 1, "limit": 1}).json()["items"]] == [
        expected[1]
    ]
    assert client.get(f"/api/v1/projects/{project['id']}").json()["image_count"] == 3

    victim = expected[0]
    assert client.delete(f"/api/v1/images/{victim}").status_code == 204
    assert client.get(f"/api/v1/images/{victim}").status_code == 404
    assert client.get(f"/api/v1/images/{victim}/file").status_code == 404
    assert client.get(f"/api/v1/images/{victim}/thumbnail").status_code == 404
    assert client.delete(f"/api/v1/images/{victim}").status_code == 404
    assert client.get(url).json()["total"] == 2
    assert client.get("/api/v1/projects/999/images").status_code == 404


def test_image_ids_are_never_reused(client: TestClient) -> None:
    """Images are cached as immutable by id, so a deleted id must not come back."""
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"])
    old = done["images"][0]["id"]
    client.delete(f"/api/v1/generations/{done['id']}")
    fresh = wait_for(client, submit(client, project["id"])["id"])
    assert fresh["id"] > done["id"] and fresh["images"][0]["id"] > old
