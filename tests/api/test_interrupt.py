"""A1111's interrupt as the queue runs it: a running job asked to stop keeping what it made
ends `interrupted` with its images, which the REST API, the gallery and the pages show like any
other; a cancel still drops them. (The A1111 routes: tests/a1111/test_routes.py and, through the
real engine in a worker process, tests/a1111/test_real_interrupt.py.)"""

from __future__ import annotations

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.services.job_queue import JobQueue
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_an_interrupt_keeps_the_images_made_so_far(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    fake.block_at = 2
    job = submit(client, project["id"], steps=6)
    assert fake.reached.wait(10)
    studio = client.app.state.studio  # type: ignore[attr-defined]
    assert studio.generations.cancel(job["id"], keep_partial=True).status == "running"
    fake.release.set()
    done = wait_for(client, job["id"], ("interrupted",))
    assert fake.steps_run["a red circle on a blue background"] == 2  # stopped after its step
    assert done["failure_kind"] is None and done["error"] is None
    assert done["warnings"] == ["interrupted after step 2 of 6"]
    (image,) = done["images"]
    assert client.get(image["url"]).status_code == 200
    listed = client.get(f"/api/v1/projects/{project['id']}/images").json()["items"]
    assert [i["id"] for i in listed] == [image["id"]]
    assert (
        client.get(f"/api/v1/projects/{project['id']}/generations?status=interrupted").json()[
            "items"
        ][0]["id"]
        == job["id"]
    )
    page = client.get(f"/generations/{job['id']}").text
    assert "status-interrupted" in page and image["thumbnail_url"] in page
    assert "interrupted after step 2 of 6" in page


def test_a_cancel_still_drops_the_run(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    fake.block_at = 2
    job = submit(client, project["id"], steps=6)
    assert fake.reached.wait(10)
    client.post(f"/api/v1/generations/{job['id']}/cancel")
    fake.release.set()
    done = wait_for(client, job["id"], ("canceled",))
    assert done["images"] == [] and done["failure_kind"] == "cancelled"


def test_an_interrupt_written_by_another_process_is_read_from_the_row(
    client: TestClient, fake: FakeGenerator, settings: Settings
) -> None:
    project = make_project(client)
    fake.step_delay = 0.05  # 100 steps: 5 s; the worker reads the row once a second
    fake.block_at = 2
    job = submit(client, project["id"], steps=100)
    assert fake.reached.wait(10)
    db = Database(settings.resolved_database_url)  # as the Gradio UI or a second server would
    try:
        JobQueue(db).cancel(job["id"], keep_partial=True)
    finally:
        db.dispose()
    fake.release.set()
    done = wait_for(client, job["id"], ("interrupted",), timeout=20)
    assert len(done["images"]) == 1
    assert done["warnings"][0].startswith("interrupted after step ")
    assert fake.steps_run["a red circle on a blue background"] < 100
