"""Gallery search by prompt text and the view across projects: the REST lists
(`GET /api/v1/projects/{id}/images?q=`, `GET /api/v1/images`) and their pages
(`/projects/{id}/gallery?q=`, `/gallery`), on SQLite and on PostgreSQL.

`%` and `_` in a query are plain characters: LIKE would read them as "anything" and "any one
character" and match every prompt."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.api.helpers import make_project, submit, wait_for
from tests.postgres import PostgresServer

PROMPTS = {
    "Shapes": ["a red circle", "a blue square", "100% red_circle", "A RED triangle"],
    "Others": ["a Red star", "path a/b", "a green_ring"],
}


def fill(client: TestClient) -> tuple[dict[str, int], dict[str, int]]:
    """Two projects, one image per prompt, made in PROMPTS' order: (project ids by name,
    image ids by prompt)."""
    projects: dict[str, int] = {}
    images: dict[str, int] = {}
    for name, prompts in PROMPTS.items():
        projects[name] = make_project(client, name)["id"]
        for prompt in prompts:
            done = wait_for(client, submit(client, projects[name], prompt=prompt)["id"])
            images[prompt] = done["images"][0]["id"]
    return projects, images


def listed(client: TestClient, url: str, **params: Any) -> list[int]:
    """The ids of one page (every match: the tests hold fewer than a page), checking its total."""
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"]), body
    return [item["id"] for item in body["items"]]


def check_search(client: TestClient) -> None:
    """Every search rule, on whatever database the client's app uses."""
    projects, images = fill(client)
    shapes = f"/api/v1/projects/{projects['Shapes']}/images"
    everywhere = "/api/v1/images"
    ids = [images[p] for p in PROMPTS["Shapes"]]
    # Ignoring case, newest first, this project only.
    assert listed(client, shapes, q="red") == [ids[3], ids[2], ids[0]]
    assert listed(client, shapes, q="RED CIRCLE") == [ids[0]]
    # Wildcards are plain characters: "%" and "_" find the one prompt that holds them.
    assert listed(client, shapes, q="%") == [ids[2]]
    assert listed(client, shapes, q="red_") == [ids[2]]
    assert listed(client, shapes, q="_") == [ids[2]]
    assert listed(client, everywhere, q="_") == [images["a green_ring"], ids[2]]
    assert listed(client, everywhere, q="/") == [images["path a/b"]]
    assert listed(client, everywhere, q="a/b") == [images["path a/b"]]
    # Blank: no filter. Nothing matching: an empty page.
    assert listed(client, shapes, q="  ") == ids[::-1]
    assert listed(client, shapes, q="purple") == []
    # Every project's images, newest first, paged; the search there too.
    every = list(images.values())[::-1]
    assert listed(client, everywhere) == every
    page = client.get(everywhere, params={"offset": 2, "limit": 3}).json()
    assert page["total"] == 7 and [i["id"] for i in page["items"]] == every[2:5]
    assert listed(client, everywhere, q="red") == [
        images["a Red star"], ids[3], ids[2], ids[0]
    ]  # fmt: skip
    found = client.get(everywhere, params={"q": "red", "limit": 1}).json()
    assert found["total"] == 4 and len(found["items"]) == 1


def test_search_and_the_view_across_projects_on_sqlite(client: TestClient) -> None:
    check_search(client)


@pytest.mark.postgres
def test_search_and_the_view_across_projects_on_postgresql(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, models_dir=data / "models", poll_s=0.05,
                        database_url=postgres.new_database(), api_key=None, api_auth=None)  # fmt: skip
    fake = FakeGenerator(write_fake_checkpoint(data / "models" / "dali-tiny.safetensors"))
    with TestClient(create_app(settings, fake)) as client:
        check_search(client)
    fake.release.set()


def test_a_bad_query_is_refused_naming_it(client: TestClient) -> None:
    project = make_project(client)
    for url in (f"/api/v1/projects/{project['id']}/images", "/api/v1/images"):
        response = client.get(url, params={"q": "x" * 201})
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "q"] and error["input"] == "x" * 201
        assert error["msg"] == f"q: '{'x' * 201}' is not allowed; at most 200 characters"
    # The pages: the error beside the search box, which keeps what was typed.
    for url in (f"/projects/{project['id']}/gallery", "/gallery"):
        page = client.get(url, params={"q": "x" * 201})
        assert page.status_code == 422
        assert re.search(r'<p class="field-error" id="q-error" role="alert">q: &#39;x{201}&#39; is not '
                         r"allowed; at most 200 characters</p>", page.text)  # fmt: skip
        assert f'value="{"x" * 201}"' in page.text and 'aria-invalid="true"' in page.text
    # Spaces around the text do not count.
    assert client.get("/api/v1/images", params={"q": f"  {'x' * 200}  "}).status_code == 200
    assert client.get("/api/v1/projects/999/images", params={"q": "a"}).status_code == 404


def test_the_gallery_pages_search_and_show_every_project(client: TestClient) -> None:
    projects, images = fill(client)
    html = client.get(f"/projects/{projects['Shapes']}/gallery", params={"q": "100%"}).text
    assert re.findall(r'href="/images/(\d+)"', html) == [str(images["100% red_circle"])]
    assert "1 image whose prompt contains “100%”" in html
    assert 'value="100%"' in html  # the search box keeps the query
    assert 'data-full="/api/v1/images/{}/file"'.format(images["100% red_circle"]) in html
    assert '<a class="button secondary" href="/gallery?q=100%25" id="all-projects">' in html
    none = client.get(f"/projects/{projects['Shapes']}/gallery", params={"q": "purple"}).text
    assert "No image's prompt contains “purple”" in none

    every = client.get("/gallery").text
    assert re.findall(r'href="/images/(\d+)"', every) == [str(i) for i in images.values()][::-1]
    assert every.count('href="/projects/{}/gallery">Others<'.format(projects["Others"])) == 3
    assert every.count('href="/projects/{}/gallery">Shapes<'.format(projects["Shapes"])) == 4
    assert 'aria-current="page">All images<' in every
    star = client.get("/gallery", params={"q": "STAR"}).text
    assert re.findall(r'href="/images/(\d+)"', star) == [str(images["a Red star"])]


def test_the_pager_keeps_the_query(client: TestClient) -> None:
    project = make_project(client)["id"]
    for n in range(26):  # two pages of 24, then one more match elsewhere
        wait_for(client, submit(client, project, prompt=f"dot {n} & more")["id"])
    wait_for(client, submit(client, project, prompt="no match")["id"])
    first = client.get(f"/projects/{project}/gallery", params={"q": "dot"}).text
    assert "26 images whose prompt contains “dot”" in first
    assert 'href="?page=2&amp;q=dot" rel="next"' in first
    second = client.get(f"/projects/{project}/gallery", params={"q": "& more", "page": 2}).text
    assert len(re.findall(r'href="/images/(\d+)"', second)) == 2
    assert 'href="?page=1&amp;q=%26%20more" rel="prev"' in second
