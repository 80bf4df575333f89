"""One event stream for every job of a project: several jobs at once, each event naming its
job, jobs submitted while it is open, each end announced once, and the per-client cap."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.routes import project_events
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.event_watch import Watchers
from stable_diffusion_api.services.generations import ProjectJobs
from stable_diffusion_api.services.progress import ProgressHub
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for
from tests.postgres import PostgresServer

Event = tuple[str, Any]  # (name, data); ("id", n) for an `id:` line, ("keep-alive", None)


@pytest.fixture(autouse=True)
def quick_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A keep-alive every 0.2 s: a stream that says nothing still lets `Reader` see its
    deadline pass instead of hanging the test."""
    monkeypatch.setattr(project_events, "KEEPALIVE_S", 0.2)


class Reader:
    """The events of an open stream, read up to what a test waits for (20 s at most)."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        self._events = self._parse(response.iter_lines())
        self.seen: list[Event] = []

    @staticmethod
    def _parse(lines: Iterator[str]) -> Iterator[Event]:
        name: str | None = None
        for line in lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                yield name, json.loads(line[6:])
                name = None
            elif line.startswith("id: "):
                yield "id", int(line[4:])
            elif line.startswith(": keep-alive"):
                yield "keep-alive", None

    def until(self, done: Callable[[list[Event]], bool], timeout: float = 20) -> list[Event]:
        """Read until `done(every event so far)`; the events read by this call."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while not done(self.seen):
            assert time.monotonic() < deadline, f"still waiting after {timeout} s: {self.seen}"
            self.seen.append(next(self._events))
        return self.seen[start:]

    def ids(self, name: str) -> list[int]:
        """The job ids of the `name` events so far, in order."""
        return [data["id"] for event, data in self.seen if event == name]


def has(name: str, *job_ids: int) -> Callable[[list[Event]], bool]:
    """True once a `name` event was read for each of `job_ids`."""
    return lambda seen: {d["id"] for e, d in seen if e == name} >= set(job_ids)


def test_one_stream_follows_every_job_of_the_project(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)["id"]
    elsewhere = make_project(client, "Elsewhere")["id"]
    fake.block_at = 1  # the first job runs and waits: the others queue behind it
    fake.step_delay = 0.05
    first = submit(client, project, steps=6)["id"]
    assert fake.reached.wait(5)
    second = submit(client, project, steps=6)["id"]
    other = submit(client, elsewhere)["id"]  # another project's: never on this stream
    url = f"/api/v1/projects/{project}/events"
    with client.stream("GET", url) as response:
        stream = Reader(response)
        opening = stream.until(has("status", first, second))
        statuses = {d["id"]: d for e, d in opening if e == "status"}
        assert statuses[first]["status"] == "running"
        assert (statuses[second]["status"], statuses[second]["position"]) == ("queued", 1)

        third = submit(client, project, steps=6)["id"]  # after the stream opened
        stream.until(has("status", third))
        fake.release.set()
        stream.until(has("done", first, second, third))
        # A fourth job, once the three are done: it comes, and nothing came twice meanwhile.
        fourth = submit(client, project, steps=2)["id"]
        stream.until(has("done", fourth))

    jobs = [first, second, third, fourth]
    assert stream.ids("done") == jobs  # each once, in the order they ran
    for job in jobs:
        done = next(d for e, d in stream.seen if e == "done" and d["id"] == job)
        assert done == client.get(f"/api/v1/generations/{job}").json()
        assert done["status"] == "succeeded" and len(done["images"]) == 1
    # Every event names its job, all of them this project's.
    named = [d for e, d in stream.seen if e in ("status", "progress", "done")]
    assert {d["id"] for d in named} == set(jobs) and other not in stream.ids("status")
    progress = [d for e, d in stream.seen if e == "progress"]
    for job in jobs:  # each job's own steps, in order, to the last
        steps = [p["step"] for p in progress if p["id"] == job]
        assert steps == sorted(steps) and steps[-1] == (2 if job == fourth else 6), (job, steps)
    # The third was queued behind the two and the other project's job (the same device).
    third_status = next(d for e, d in stream.seen if e == "status" and d["id"] == third)
    assert (third_status["status"], third_status["position"]) == ("queued", 3)
    wait_for(client, other)


def test_jobs_that_ended_before_the_stream_are_announced_only_after_after(
    client: TestClient,
) -> None:
    project = make_project(client)["id"]
    old = wait_for(client, submit(client, project)["id"])["id"]
    ended = wait_for(client, submit(client, project)["id"])["id"]
    base = f"/api/v1/projects/{project}/events"

    # By default the stream starts at the project's newest job when it first reads them (its
    # first `id:` line): neither is announced.
    with client.stream("GET", base) as response:
        stream = Reader(response)
        stream.until(lambda seen: ("id", ended) in seen)
        later = submit(client, project)["id"]
        stream.until(has("done", later))
        # Each `id:` line is the oldest job id the stream still needs: below the job while
        # it runs, the job itself once it has ended.
        stream.until(lambda seen: ("id", later) in seen)
    assert stream.ids("done") == [later]
    assert [data for event, data in stream.seen if event == "id"] == [ended, later]

    # `after`: a job newer than it that ended before the stream opened still gets its end,
    # once; an older one does not. Last-Event-ID (a reconnecting browser) means the same.
    newer = [ended, later]
    for query, headers in ((f"?after={old}", {}), ("", {"Last-Event-ID": str(old)})):
        with client.stream("GET", base + query, headers=headers) as response:
            stream = Reader(response)
            newer.append(submit(client, project)["id"])
            stream.until(has("done", newer[-1]))
        assert stream.ids("done") == newer  # after a reconnection: again


def test_a_job_deleted_while_followed_ends_as_deleted(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)["id"]
    fake.block_at = 1
    running = submit(client, project)["id"]
    assert fake.reached.wait(5)
    queued = submit(client, project)["id"]
    with client.stream("GET", f"/api/v1/projects/{project}/events") as response:
        stream = Reader(response)
        stream.until(has("status", running, queued))
        assert client.delete(f"/api/v1/generations/{queued}").status_code == 204
        stream.until(has("done", queued))
        fake.release.set()
        stream.until(has("done", running))
    ends = {d["id"]: d["status"] for e, d in stream.seen if e == "done"}
    assert ends == {queued: "deleted", running: "succeeded"}


def test_bad_arguments_are_refused_naming_them(client: TestClient) -> None:
    project = make_project(client)["id"]
    url = f"/api/v1/projects/{project}/events"
    refused = client.get(url + "?after=-1")
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "after"]
    refused = client.get(url, headers={"Last-Event-ID": "yesterday"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    assert client.get("/api/v1/projects/999/events").status_code == 404


def test_a_project_stream_counts_toward_the_cap_and_ends_with_its_client(
    client: TestClient,
) -> None:
    project = make_project(client)["id"]
    job = wait_for(client, submit(client, project)["id"])["id"]
    watch = Watchers(per_client=1)
    client.app.state.event_watchers = watch  # type: ignore[attr-defined]
    with client.stream("GET", f"/api/v1/projects/{project}/events") as response:
        stream = Reader(response)
        stream.until(lambda seen: bool(seen))  # the stream is under way
        assert watch.clients == {"testclient": 1}
        refused = client.get(f"/api/v1/projects/{project}/events")
        assert refused.status_code == 429 and "1 event streams" in refused.json()["detail"]
        assert client.get(f"/api/v1/generations/{job}/events").status_code == 429
    deadline = time.monotonic() + 5
    while watch.clients:  # the client went: its slot and the project's shared read are freed
        assert time.monotonic() < deadline, watch.clients
        time.sleep(0.02)
    assert watch._projects == {}
    assert client.get(f"/api/v1/generations/{job}/events").status_code == 200


def test_the_streams_of_one_project_share_one_read() -> None:
    """200 streams asking together cost one read; one that needs older jobs than the last
    read covered gets a new read, from its own oldest id; a submission here makes the next
    ask read again (from the oldest id any of the project's streams needs)."""
    reads: list[tuple[int, int]] = []

    class Generations:
        def project_jobs(self, project_id: int, after: int) -> ProjectJobs:
            reads.append((project_id, after))
            return ProjectJobs(0, [])

    class Studio:
        generations = Generations()
        hub = ProgressHub()

    watch = Watchers()

    async def many() -> None:
        with watch.project_stream("a", 3) as first, watch.project_stream("b", 3) as second:
            await asyncio.gather(*(watch.project_jobs(Studio(), 3, first, 50) for _ in range(200)))  # type: ignore[arg-type]
            assert reads == [(3, 50)]
            await watch.project_jobs(Studio(), 3, second, 60)  # needs less: the same read
            assert reads == [(3, 50)]
            await watch.project_jobs(Studio(), 3, second, 20)  # needs more: read from 20
            assert reads == [(3, 50), (3, 20)]
            await watch.project_jobs(Studio(), 3, first, 50)  # covered by that read
            assert reads == [(3, 50), (3, 20)]
            Studio.hub.submitted(3)  # a job was queued here: the next ask reads at once
            await watch.project_jobs(Studio(), 3, first, 50)
            assert reads == [(3, 50), (3, 20), (3, 20)]

    asyncio.run(many())
    assert watch._projects == {} and watch.clients == {}


def test_the_read_takes_the_active_jobs_and_those_newer_than_asked(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)["id"]
    done = [wait_for(client, submit(client, project)["id"])["id"] for _ in range(3)]
    fake.block_at = 1
    running = submit(client, project)["id"]
    assert fake.reached.wait(5)
    studio = client.app.state.studio  # type: ignore[attr-defined]
    found = studio.generations.project_jobs(project, done[1])
    assert found.latest_id == running
    assert [(g.id, g.status) for g in found.jobs] == [(done[2], "succeeded"), (running, "running")]
    assert [g.id for g in studio.generations.project_jobs(project, 2**62).jobs] == [running]
    fake.release.set()


@pytest.mark.postgres
def test_the_read_runs_on_postgresql(
    postgres: PostgresServer, settings: Settings, fake: FakeGenerator
) -> None:
    """The same read on PostgreSQL, whose ids are 32-bit: an `after` beyond them (the page's
    "only the active jobs") is never compared with one."""
    on_postgres = settings.model_copy(update={"database_url": postgres.new_database()})
    with TestClient(create_app(on_postgres, fake)) as client:
        test_the_read_takes_the_active_jobs_and_those_newer_than_asked(client, fake)
        project = client.get("/api/v1/projects").json()[0]["id"]
        assert client.get(f"/projects/{project}").status_code == 200  # it reads the same way
