"""Server-Sent Events: queue position, steps with ETA and previews, then the end."""

from __future__ import annotations

import base64
import json

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def read_events(client: TestClient, generation_id: int) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/api/v1/generations/{generation_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[6:])))
    return events


def test_events_follow_a_job_from_queue_to_done(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    fake.step_delay = 0.15  # slower than the stream's tick, so every step is seen
    job = submit(client, project["id"], steps=8)
    events = read_events(client, job["id"])
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "done"
    progress = [data for name, data in events if name == "progress"]
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps) and steps[-1] == 8 and len(set(steps)) >= 5
    assert all(p["total"] == 8 for p in progress)
    assert progress[-1]["eta_s"] == 0
    assert any(p["eta_s"] and p["eta_s"] > 0 for p in progress[:-1])
    previews = [p["preview"] for p in progress if "preview" in p]
    assert previews and previews[0].startswith("data:image/png;base64,")
    assert base64.b64decode(previews[0].split(",", 1)[1]).startswith(b"\x89PNG")
    done = events[-1][1]
    assert done["status"] == "succeeded" and len(done["images"]) == 1


def test_events_report_queue_position_then_failure(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    fake.block_at = 1
    first = submit(client, project["id"])
    assert fake.reached.wait(5)
    second = submit(client, project["id"])
    fake.fail_with = ValueError("steps: 4 is too few for this sampler")

    with client.stream("GET", f"/api/v1/generations/{second['id']}/events") as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                status = json.loads(line[6:])
                break
        assert status["status"] == "queued" and status["position"] == 1
        fake.release.set()
        rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert rest[-1]["status"] == "failed"
    assert rest[-1]["error"] == "steps: 4 is too few for this sampler"
    wait_for(client, first["id"], ("failed",))


def test_events_of_a_finished_job_end_at_once(client: TestClient) -> None:
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"])
    events = read_events(client, done["id"])
    assert [name for name, _ in events] == ["done"]
    assert client.get("/api/v1/generations/12345/events").status_code == 404


def test_a_job_ending_here_is_announced_with_its_workers_view(
    client: TestClient, fake: FakeGenerator
) -> None:
    studio = client.app.state.studio  # type: ignore[attr-defined]
    view = studio.generations.view

    def view_until_finished(generation_id: int) -> object:
        state = studio.hub.get(generation_id)
        if state is not None and state.status != "running":
            raise AssertionError("the stream read the database for a job that ended here")
        return view(generation_id)

    studio.generations.view = view_until_finished
    project = make_project(client)
    fake.step_delay = 0.1  # the stream (and its GenerationDep read) opens long before the end
    job = submit(client, project["id"], steps=4)
    events = read_events(client, job["id"])
    studio.generations.view = view
    assert events[-1][0] == "done"
    done = events[-1][1]
    assert done == client.get(f"/api/v1/generations/{job['id']}").json()
    assert done["status"] == "succeeded" and done["images"][0]["url"].endswith("/file")


def test_streams_of_one_job_share_one_status_read() -> None:
    """500 idle streams each read the job every half second; now they share one read."""
    import asyncio

    from stable_diffusion_api.services.event_watch import Watchers

    reads: list[int] = []

    class Generations:
        def view(self, generation_id: int) -> object:
            reads.append(generation_id)
            return {"id": generation_id}

    class Studio:
        generations = Generations()

    watch = Watchers()

    async def many() -> list[object]:
        return list(await asyncio.gather(*(watch.view(Studio(), 7) for _ in range(200))))  # type: ignore[arg-type]

    views = asyncio.run(many())
    assert len(views) == 200 and reads == [7]


def test_one_client_may_hold_only_so_many_streams(client: TestClient) -> None:
    import pytest

    from stable_diffusion_api.services.event_watch import TooManyStreams, Watchers

    watch = Watchers(per_client=2)
    with watch.stream("10.0.0.1", 5), watch.stream("10.0.0.1", 6):
        with pytest.raises(TooManyStreams), watch.stream("10.0.0.1", 7):
            pass
        with watch.stream("10.0.0.2", 5):  # another client is not held back
            assert watch.clients == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert watch.clients == {}  # closed streams are forgotten, their jobs' views too

    # Through the route: a client at its limit gets a 429 before any stream starts.
    project = make_project(client)
    job = wait_for(client, submit(client, project["id"])["id"])
    url = f"/api/v1/generations/{job['id']}/events"
    full = Watchers(per_client=1)
    full.clients["testclient"] = 1  # TestClient's address, holding one stream already
    client.app.state.event_watchers = full  # type: ignore[attr-defined]
    refused = client.get(url)
    assert refused.status_code == 429 and "1 event streams" in refused.json()["detail"]
    full.clients.clear()
    assert client.get(url).status_code == 200
