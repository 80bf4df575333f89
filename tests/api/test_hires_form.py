"""The generate page's hires fix controls reach the engine's hires params."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, wait_for


def _post(client: TestClient, project_id: int, **data: str):  # type: ignore[no-untyped-def]
    return client.post(f"/projects/{project_id}/generate",
                       data={"prompt": "x", "steps": "2", **data}, follow_redirects=False)  # fmt: skip


def test_the_generate_form_runs_the_hires_fix(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    page = client.get(f"/projects/{project['id']}")
    assert 'id="hires"' in page.text and 'value="Latent (antialiased)"' in page.text
    post = _post(client, project["id"], hires="on", hires_scale="1.5", hires_steps="3",
                 hires_strength="0.4", hires_upscaler="Lanczos")  # fmt: skip
    assert post.status_code == 303, post.text
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    p = fake.calls[-1].params
    assert (p.hires, p.hires_scale, p.hires_steps, p.hires_strength) == (True, 1.5, 3, 0.4)
    assert p.hires_upscaler == "Lanczos"
    # Settings without the box ticked change nothing.
    post = _post(client, project["id"], hires_scale="3")
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    assert fake.calls[-1].params.hires is False
    bad = _post(client, project["id"], hires="on", hires_scale="9")
    assert bad.status_code == 422 and 'id="hires_scale-error"' in bad.text
    assert 'id="hires-fix" open' in bad.text


def test_the_form_takes_the_hires_schedule_type_and_cfg(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    page = client.get(f"/projects/{project['id']}")
    assert 'id="hires_scheduler"' in page.text and 'value="sgm_uniform"' in page.text
    post = _post(client, project["id"], hires="on", sampler="euler", hires_scheduler="karras",
                 hires_guidance="4.5")  # fmt: skip
    assert post.status_code == 303, post.text
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    p = fake.calls[-1].params
    assert (p.hires_scheduler, p.hires_guidance) == ("karras", 4.5)
    post = _post(client, project["id"], hires="on", hires_scheduler="", hires_guidance="")
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    assert (fake.calls[-1].params.hires_scheduler, fake.calls[-1].params.hires_guidance) == (
        None, None,
    )  # fmt: skip
    bad = _post(client, project["id"], hires="on", hires_guidance="40")
    assert bad.status_code == 422 and 'id="hires_guidance-error"' in bad.text
    assert 'id="hires-fix" open' in bad.text
