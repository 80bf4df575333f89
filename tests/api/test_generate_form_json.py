"""The generate form posted by the page's script (`Accept: application/json`): the same form
reader as without JavaScript, answered like the REST API (202 with the job, 422 by field)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, wait_for

JSON = {"accept": "application/json"}


def test_the_script_gets_the_job_and_every_form_field_reaches_it(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    sent = {"prompt": "x", "steps": "2", "random_seed": "on", "hires": "on", "hires_scale": "1.5",
            "mask_blur": "3", "inpaint_full_res": "on"}  # fmt: skip
    post = client.post(f"/projects/{project['id']}/generate", data=sent, headers=JSON)
    assert post.status_code == 202, post.text
    accepted = post.json()
    assert accepted["url"] == f"/api/v1/generations/{accepted['id']}"
    assert accepted["events_url"].endswith("/events") and accepted["status"] == "queued"
    done = wait_for(client, accepted["id"])
    assert (done["hires"], done["hires_scale"], done["source"]) == (True, 1.5, "page")
    p = fake.calls[-1].params
    assert (p.hires_scale, p.mask_blur, p.inpaint_full_res) == (1.5, 3, True)


def test_the_script_gets_each_error_by_field_in_the_apis_shape(client: TestClient) -> None:
    project = make_project(client)
    url = f"/projects/{project['id']}/generate"
    bad = client.post(url, data={"prompt": "x", "hires": "on", "hires_scale": "9"}, headers=JSON)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "hires_scale"] and "4" in error["msg"]
    # A service's check (an unknown sampler) comes back the same way.
    bad = client.post(url, data={"prompt": "x", "sampler": "nope"}, headers=JSON)
    assert bad.status_code == 422
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "sampler"] and "nope" in error["msg"]
    # Without asking for JSON: the page again, the message beside the field.
    page = client.post(url, data={"prompt": "x", "sampler": "nope"})
    assert page.status_code == 422 and 'id="sampler-error"' in page.text
