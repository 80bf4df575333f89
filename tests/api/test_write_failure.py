"""A database that refuses writes while the studio runs (issue 15, item 5): its disk full, its
file made read-only. Requests get a 503 saying why and the next ones work; a job whose final
write is refused does not stay `running`, and its images are saved or quarantined, never lost.

The faults are real: the file's mode bits, and SQLite's own "database or disk is full"
(SQLITE_FULL) for a write that needs one more page of a file capped at its size
(tests/api/disk_full.py).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import DatabaseUnavailable
from stable_diffusion_api.models import Project
from stable_diffusion_api.schemas import MAX_PROMPT
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.worker_messages import JobProblem
from stable_diffusion_api.services.worker_process import ProcessWorker, _RelayHub
from tests.a1111.live_server import running_server
from tests.api.disk_full import disk_full
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

# A row longer than a 4 KiB page needs a new one: refused by a full disk.
LONG_TEXT = ("a red circle on a blue background " * 60)[: MAX_PROMPT - 1] + "x"
BIG_JOB = {"prompt": LONG_TEXT, "negative_prompt": LONG_TEXT, "steps": 2}


def test_a_refused_write_is_a_503_and_the_next_requests_work(client: TestClient) -> None:
    project = make_project(client)
    jobs = f"/api/v1/projects/{project['id']}/generations"
    done = wait_for(client, submit(client, project["id"])["id"])
    reads = [f"/api/v1/generations/{done['id']}", f"/api/v1/projects/{project['id']}", jobs]
    db = client.app.state.studio.db  # type: ignore[attr-defined]
    with disk_full(db):
        refused = client.post(jobs, json=BIG_JOB)
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "database or disk is full" in detail and "nothing can be saved" in detail
        # The pool is not left broken: the next 15 requests answer, the disk still full.
        assert [client.get(url).status_code for url in reads * 5] == [200] * 15
        assert client.post(jobs, json=BIG_JOB).status_code == 503
    # With room again, 15 more: writes (the one refused before among them) and reads.
    answers = []
    for body in [BIG_JOB] + [{"prompt": "a red circle", "steps": 2}] * 4:
        queued = client.post(jobs, json=body)
        answers.append(queued.status_code)
        answers.append(client.get(f"/api/v1/generations/{queued.json()['id']}").status_code)
        answers.append(client.get(f"/api/v1/projects/{project['id']}").status_code)
    assert answers == [202, 200, 200] * 5
    # /health names the refusal until the heartbeat's next write goes through.
    deadline = time.monotonic() + 5
    while (health := client.get("/api/v1/health")).status_code != 200:
        assert "database or disk is full" in health.json()["problems"][0]
        assert time.monotonic() < deadline, "/health still unhealthy with room again"
        time.sleep(0.05)


def test_health_names_a_refusal_until_a_write_goes_through(client: TestClient) -> None:
    studio = client.app.state.studio  # type: ignore[attr-defined]
    studio.workers.stop()  # no heartbeat: this test decides when a write goes through
    make_project(client)
    db = studio.db
    with (
        disk_full(db),
        pytest.raises(DatabaseUnavailable, match="database or disk is full"),
        db.begin() as connection,
    ):
        connection.exec_driver_sql("UPDATE projects SET description = ?", (LONG_TEXT * 3,))
    health = client.get("/api/v1/health")
    assert health.status_code == 503
    assert health.json()["problems"] == ["the database refused it (database or disk is full)"]
    with db.session() as session:  # a read: it says nothing of writes
        session.get(Project, 1)
    assert client.get("/api/v1/health").status_code == 503
    db.writes_work()  # what the heartbeat says after each of its writes
    assert client.get("/api/v1/health").json()["status"] == "ok"


def read_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, data) of each event of an open event stream, as they come."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            yield name, json.loads(line[6:])


@contextmanager
def read_only(settings: Settings) -> Iterator[None]:
    """The database file made read-only (root may still write it; the studio will not)."""
    db_file = settings.resolved_data_dir / "dali.db"
    db_file.chmod(stat.S_IRUSR)
    try:
        yield
    finally:
        db_file.chmod(0o644)


def job_files(folder: Path, job_id: int) -> list[str]:
    """The job's image, thumbnail and filmstrip files under `folder`, relative to it."""
    if not folder.is_dir():
        return []
    names = (f"{job_id}-*", f"{job_id}.*")
    found = {p for name in names for p in folder.rglob(name) if p.is_file()}
    return sorted(p.relative_to(folder).as_posix() for p in found)


def test_a_job_the_database_will_not_save_fails_with_its_files_in_quarantine(
    settings: Settings, fake: FakeGenerator
) -> None:
    settings = settings.model_copy(update={"save_retry_s": 0.5})
    fake.block_at = 1
    data = settings.resolved_data_dir
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        job = submit(client, project["id"], batch=2)
        assert fake.reached.wait(10)  # running: the row is claimed
        url = f"/api/v1/generations/{job['id']}"
        with client.stream("GET", f"{url}/events") as stream:
            events = read_events(stream.iter_lines())
            assert next(events)[0] == "status"
            with read_only(settings):
                fake.release.set()  # the run ends; its final write is refused
                rest = list(events)  # the stream ends, it does not hang
                # While the database takes no writes, nothing pretends it did.
                assert client.post(f"{url}/cancel").status_code == 503
                assert client.delete(url).status_code == 503
                health = client.get("/api/v1/health")
                assert health.status_code == 503 and "read-only" in health.json()["problems"][0]
        assert rest[-1][0] == "done"
        # Said as it happened: the database refusing the stream's reads, the worker its write.
        problems = [data["error"] for name, data in rest if name == "problem"]
        assert all("read-only" in problem for problem in problems)
        assert any(problem.startswith("its images are not saved yet") for problem in problems)
        done = rest[-1][1]
        assert done["status"] == "failed" and done["failure_kind"] == "internal"
        assert "could not be saved" in done["error"] and "quarantine" in done["error"]
        # Writable again: the row says what the stream said, at the worker's next look.
        failed = wait_for(client, job["id"], ("failed",))
        assert failed["error"] == done["error"] and failed["images"] == []
        assert "read-only" in failed["error"] and "its 5 image files" in failed["error"]
        assert client.get("/api/v1/health").status_code == 200
    # Both images, their thumbnails and the filmstrip: moved aside, not lost, not orphaned.
    assert job_files(data / "images", job["id"]) == []
    quarantined = job_files(data / "quarantine" / "images", job["id"])
    project_dir = str(project["id"])
    assert quarantined == sorted([f"{project_dir}/{job['id']}-0.png",
                                  f"{project_dir}/{job['id']}-1.png",
                                  f"{project_dir}/filmstrips/{job['id']}.png",
                                  f"{project_dir}/thumbs/{job['id']}-0.jpg",
                                  f"{project_dir}/thumbs/{job['id']}-1.jpg"])  # fmt: skip


def test_a_job_saved_once_the_database_takes_writes_again_succeeds(
    settings: Settings, fake: FakeGenerator
) -> None:
    fake.block_at = 1  # DALI_SAVE_RETRY_S stays 60 s: the write is retried well within it
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        job = submit(client, project["id"], batch=2)
        assert fake.reached.wait(10)
        with client.stream("GET", f"/api/v1/generations/{job['id']}/events") as stream:
            events = read_events(stream.iter_lines())
            with read_only(settings):
                fake.release.set()
                for name, data in events:  # until the worker says it cannot save the job
                    if name == "problem" and data["error"].startswith("its images are not"):
                        break
            rest = list(events)
        done = wait_for(client, job["id"])
        assert rest[-1] == ("done", done)
        assert len(done["images"]) == 2
        for image in done["images"]:
            assert client.get(image["url"]).status_code == 200
    assert job_files(settings.resolved_data_dir / "quarantine", job["id"]) == []


def test_a_final_write_refused_by_a_full_disk_is_not_lost(
    settings: Settings, fake: FakeGenerator
) -> None:
    settings = settings.model_copy(update={"save_retry_s": 0.5})
    fake.block_at = 1
    fake.warnings = (LONG_TEXT, LONG_TEXT)  # the final write needs new pages
    with TestClient(create_app(settings, fake)) as client:
        studio = client.app.state.studio  # type: ignore[attr-defined]
        project = make_project(client)
        job = submit(client, project["id"])
        assert fake.reached.wait(10)
        with disk_full(studio.db):
            fake.release.set()
            deadline = time.monotonic() + 10
            while (state := studio.hub.get(job["id"])) is None or state.status == "running":
                assert time.monotonic() < deadline, "the worker never gave the job up"
                time.sleep(0.05)
        failed = wait_for(client, job["id"], ("failed",))
        assert failed["failure_kind"] == "internal"
        saying = "could not be saved: the database refused it (database or disk is full)"
        assert saying in failed["error"]
    quarantine = settings.resolved_data_dir / "quarantine" / "images"
    assert len(job_files(quarantine, job["id"])) == 3  # image, thumbnail, filmstrip
    assert job_files(settings.resolved_data_dir / "images", job["id"]) == []


def test_cancel_and_delete_answer_503_while_the_database_refuses_writes(
    settings: Settings, fake: FakeGenerator
) -> None:
    """On a full disk a statement that changes nothing goes through: a delete of a job that
    reads `running` (perhaps only because its end could not be written) was a 409, a cancel
    a 200 that flagged it for nobody. While the database refuses writes, both say so."""
    settings = settings.model_copy(update={"heartbeat_s": 60.0})  # no heartbeat write here
    fake.block_at = 1
    with TestClient(create_app(settings, fake)) as client:
        db = client.app.state.studio.db  # type: ignore[attr-defined]
        project = make_project(client)
        job = submit(client, project["id"])
        url = f"/api/v1/generations/{job['id']}"
        assert fake.reached.wait(10)
        with disk_full(db):
            jobs = f"/api/v1/projects/{project['id']}/generations"
            assert client.post(jobs, json=BIG_JOB).status_code == 503  # a write refused
        for response in (client.delete(url), client.post(f"{url}/cancel")):
            assert response.status_code == 503, response.text
            assert "database or disk is full" in response.json()["detail"]
        db.writes_work()  # what the heartbeat says after its next write
        assert client.delete(url).status_code == 409  # running, for all anyone can tell
        assert client.post(f"{url}/cancel").json()["status"] == "running"  # cancel asked
        fake.release.set()
        assert wait_for(client, job["id"], ("canceled",))["failure_kind"] == "cancelled"


def test_a_dead_worker_process_job_is_failed_once_the_database_takes_it(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    """The server's side of a worker process whose child died marks the child's job failed; a
    refused write used to kill its relay thread, leaving the job running and no new child."""
    studio = client.app.state.studio  # type: ignore[attr-defined]
    fake.block_at = 1
    project = make_project(client)
    job = submit(client, project["id"])
    assert fake.reached.wait(10)  # running on "cpu" under this server's id, as a child's job
    relay_side = ProcessWorker(studio.workers.context, "cpu")
    with read_only(settings):
        dead_child = threading.Thread(target=relay_side._fail_running, args=(-9,))
        dead_child.start()
        time.sleep(0.3)
        assert dead_child.is_alive()  # asking again while the database refuses
    dead_child.join(5)
    assert not dead_child.is_alive()
    failed = client.get(f"/api/v1/generations/{job['id']}").json()
    assert failed["status"] == "failed" and failed["failure_kind"] == "interrupted"
    assert "exit code -9" in failed["error"]
    fake.release.set()


def test_a_worker_process_relays_a_problem_saving() -> None:
    ours, servers = Pipe()
    _RelayHub(ours, threading.Lock()).problem(7, "its images are not saved yet: disk full")
    assert servers.recv() == JobProblem(7, "its images are not saved yet: disk full")
    servers.close()
    _RelayHub(ours, threading.Lock()).problem(7, "nobody hears this")  # and nothing raised


@pytest.mark.server
def test_a_refused_write_leaves_the_connection_open_under_uvicorn(tmp_path: Path) -> None:
    """uvicorn closes a keep-alive connection after an unhandled error, so the bare 500 of a
    refused write used to break the client's connection too. One connection, no reconnects:
    the 503, then 15 more requests on the same connection, the disk still full."""
    (tmp_path / "models").mkdir()
    flag = tmp_path / "disk-full"
    app = "tests.api.disk_full:build"
    with running_server(
        tmp_path, app, DISK_FULL_FLAG=str(flag), DALI_WORKER_MODE="thread"
    ) as server:
        host, port = server.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.auto_open = False  # a connection the server closed fails the next request

        def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            data = json.dumps(body) if body is not None else None
            connection.request(method, path, data, {"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        connection.connect()
        status, project = call("POST", "/api/v1/projects", {"name": "Full"})
        assert status == 201, project
        jobs = f"/api/v1/projects/{project['id']}/generations"
        with sqlite3.connect(tmp_path / "data" / "dali.db") as probe:
            flag.write_text(str(probe.execute("PRAGMA page_count").fetchone()[0]))
        status, refused = call("POST", jobs, BIG_JOB)
        assert status == 503 and "database or disk is full" in refused["detail"]
        reads = [f"/api/v1/projects/{project['id']}", "/api/v1/projects", jobs]
        assert [call("GET", path)[0] for path in reads * 5] == [200] * 15
        flag.unlink()  # room again
        assert call("POST", jobs, BIG_JOB)[0] == 202
        connection.close()
