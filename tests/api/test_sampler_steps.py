"""More steps than a sampler takes (LCM: 50), or an eta it has not, is refused when the request
is checked — REST, the generate page — never once the job runs (the A1111 routes:
tests/a1111/test_routes.py and test_fields.py; the engine: tests/sd_core/test_params.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"sampler": "lcm", "steps": 51}, "steps", 51),
        ({"sampler": "LCM", "steps": 150}, "steps", 150),
        ({"hires": True, "hires_sampler": "lcm", "hires_steps": 60}, "hires_steps", 60),
        ({"hires": True, "hires_sampler": "lcm", "steps": 70}, "hires_steps", 70),
    ],
)
def test_rest_refuses_more_steps_than_the_sampler_takes(
    client: TestClient, fake: FakeGenerator, fields: dict[str, Any], field: str, value: int
) -> None:
    project = make_project(client)
    body = {"prompt": "x", "steps": 4, **fields}
    response = client.post(f"/api/v1/projects/{project['id']}/generations", json=body)
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", field] and detail["input"] == value
    assert "LCM takes 1 to 50 steps" in detail["msg"]
    listed = client.get(f"/api/v1/projects/{project['id']}/generations").json()["items"]
    assert listed == [] and fake.calls == []  # nothing was queued


def test_rest_takes_lcm_at_its_limit(client: TestClient) -> None:
    project = make_project(client)
    body = {"prompt": "x", "sampler": "lcm", "steps": 50}
    response = client.post(f"/api/v1/projects/{project['id']}/generations", json=body)
    assert response.status_code == 202, response.text


def test_the_generate_page_names_the_steps_field(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    page = client.post(
        f"/projects/{project['id']}/generate",
        data={"prompt": "x", "steps": "60", "sampler": "lcm"},
        follow_redirects=False,
    )
    assert page.status_code == 422 and 'id="steps-error"' in page.text
    assert "LCM takes 1 to 50 steps" in page.text and fake.calls == []


def test_rest_takes_an_eta_where_the_sampler_has_one(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    url = f"/api/v1/projects/{project['id']}/generations"
    done = client.post(url, json={"prompt": "x", "steps": 2, "sampler": "ddim", "eta": 0.5})
    assert done.status_code == 202, done.text
    for fields in (
        {"sampler": "euler", "eta": 0.5},
        {"sampler": "ddim", "eta": 1.5},
        {"sampler": "ddim", "eta": 0.5, "hires": True, "hires_sampler": "euler"},
    ):
        bad = client.post(url, json={"prompt": "x", "steps": 2, **fields})
        assert bad.status_code == 422, (fields, bad.text)
        assert bad.json()["detail"][0]["loc"] == ["body", "eta"]
