"""txt2img waits for its images without holding a thread, and stops for a client that left
(issue 15, item 7: 100 waiting calls stalled every thread-pool route for up to 28.9 s, and a
client that gave up kept its job generating)."""

from __future__ import annotations

import json
import threading
import time

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.fakes import FakeGenerator

BODY = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64}


def test_waiting_calls_leave_the_thread_pool_free(settings: Settings, fake: FakeGenerator) -> None:
    roomy = settings.model_copy(update={"queue_limit": 100})
    with TestClient(with_a1111(create_app(roomy, fake))) as client:
        wait_while_jobs_hold(client, fake)


def wait_while_jobs_hold(client: TestClient, fake: FakeGenerator) -> None:
    fake.block_at = 1  # every job holds at its first step until released
    answers: list[int] = []

    def call() -> None:
        answers.append(client.post("/sdapi/v1/txt2img", json=BODY).status_code)

    # More waiting calls than the thread pool has threads (anyio's default: 40).
    callers = [threading.Thread(target=call) for _ in range(60)]
    for caller in callers:
        caller.start()
    try:
        assert fake.reached.wait(10)
        time.sleep(0.5)  # let every call arrive and start waiting
        began = time.monotonic()
        assert client.get("/sdapi/v1/sd-models").status_code == 200  # a plain `def` route
        assert client.get("/api/v1/projects").status_code == 200
        took = time.monotonic() - began
    finally:  # a failed check above must not leave 60 calls (and the test client) waiting
        fake.release.set()
        for caller in callers:
            caller.join(120)
    assert took < 2.0
    assert answers == [200] * 60


def test_a_client_that_disconnects_has_its_job_canceled(
    client: TestClient, fake: FakeGenerator
) -> None:
    fake.block_at = 2
    body = json.dumps(BODY).encode()
    sent: list[dict[str, object]] = []
    stage = {"body": False}

    async def receive() -> dict[str, object]:
        if not stage["body"]:
            stage["body"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client is gone once its job runs (as a client that gives up after 3 s).
        while not fake.reached.is_set():
            import anyio

            await anyio.sleep(0.02)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/sdapi/v1/txt2img", "raw_path": b"/sdapi/v1/txt2img",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    assert client.portal is not None
    client.portal.call(client.app, scope, receive, send)
    assert sent[0]["status"] == 499  # answered to nobody, and not logged as an error
    jobs = client.get("/api/v1/projects").json()[0]
    generations = client.get(f"/api/v1/projects/{jobs['id']}/generations").json()["items"]
    assert len(generations) == 1
    deadline = time.monotonic() + 10
    url = f"/api/v1/generations/{generations[0]['id']}"
    while (status := client.get(url).json()["status"]) == "running":
        fake.release.set()  # the worker notices the cancel at its next step
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status == "canceled"


def test_a_waiting_call_reads_its_job_when_it_finishes_not_ten_times_a_second(
    client: TestClient, fake: FakeGenerator
) -> None:
    studio = client.app.state.studio  # type: ignore[attr-defined]
    reads: list[int] = []
    view = studio.generations.view
    studio.generations.view = lambda generation_id: (
        reads.append(generation_id) or view(generation_id)
    )
    fake.block_at = 1
    answers: list[int] = []
    caller = threading.Thread(
        target=lambda: answers.append(client.post("/sdapi/v1/txt2img", json=BODY).status_code)
    )
    caller.start()
    try:
        assert fake.reached.wait(10)
        time.sleep(2.0)  # the job holds at its first step: the call only waits
        while_held = len(reads)
    finally:
        released = time.monotonic()
        fake.release.set()
        caller.join(30)
    took = time.monotonic() - released
    assert answers == [200]
    # One read a second at most while nothing changes (polling read it ten times a second)
    assert while_held <= 4, reads
    assert took < 2.0  # the finish is noticed when the hub reports it, not at the next reread
