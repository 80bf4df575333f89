"""Start-up after a crash: interrupted jobs fail with "interrupted", queued ones run, and no
image row points at a missing file. Also a graceful stop mid-job, and a second live process."""

from __future__ import annotations

import datetime as dt
import os
import stat
import time

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Generation, Image, WorkerProcess
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def add_job(db: Database, project_id: int, status: str, worker_id: str | None, prompt: str) -> int:
    with db.session() as session:
        row = Generation(
            project_id=project_id, status=status, device="cpu", model="dali-tiny", prompt=prompt,
            steps=3, guidance=7.0, seed=1, worker_id=worker_id, negative_prompt="", batch=1,
            strength=0.75, low_memory=False, cancel_requested=False, source="api",
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.id


def test_restart_after_a_crash(settings: Settings, fake: FakeGenerator) -> None:
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        kept = wait_for(client, submit(client, project["id"], prompt="kept")["id"])
        lost = wait_for(client, submit(client, project["id"], prompt="lost")["id"])

    # What a crash leaves behind: a job a dead process was running, a job still queued, an
    # image whose file vanished, and a file no row knows (written just before the crash).
    db = Database(settings.resolved_database_url)
    crashed = add_job(db, project["id"], "running", "dead-host-123-abc", "was running")
    queued = add_job(db, project["id"], "queued", None, "was queued")
    data = settings.resolved_data_dir
    with db.session() as session:
        lost_path = session.get(Image, lost["images"][0]["id"]).path  # type: ignore[union-attr]
    (data / lost_path).unlink()
    stray = data / "images" / str(project["id"]) / f"{crashed}-0.png"
    stray.write_bytes(b"half an image")
    db.dispose()

    with TestClient(create_app(settings, fake)) as client:
        interrupted = client.get(f"/api/v1/generations/{crashed}").json()
        assert interrupted["status"] == "failed"
        assert interrupted["error"].startswith("interrupted")
        assert wait_for(client, queued)["status"] == "succeeded"
        assert client.get(f"/api/v1/images/{lost['images'][0]['id']}").status_code == 404
        assert client.get(kept["images"][0]["url"]).status_code == 200
        assert not stray.exists()  # moved aside, not deleted: the user decides
        quarantined = data / "quarantine" / stray.relative_to(data)
        assert quarantined.read_bytes() == b"half an image"
        # Every image row left points at a file that exists.
        page = client.get(f"/api/v1/projects/{project['id']}/images").json()
        for image in page["items"]:
            assert client.get(image["url"]).status_code == 200
            assert client.get(image["thumbnail_url"]).status_code == 200
        assert [c.params.prompt for c in fake.calls] == ["kept", "lost", "was queued"]


def test_stopping_the_server_interrupts_the_running_job(
    settings: Settings, fake: FakeGenerator
) -> None:
    fake.step_delay = 0.05
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        job = submit(client, project["id"], steps=150)
        wait_for(client, job["id"], ("running",))
    # Stopped before its end (the server may stop before the job's first step: then none).
    assert fake.steps_run.get("a red circle on a blue background", 0) < 150
    fake.step_delay = 0
    with TestClient(create_app(settings, fake)) as client:
        after = client.get(f"/api/v1/generations/{job['id']}").json()
        assert after["status"] == "failed" and after["error"].startswith("interrupted")
        assert after["images"] == []


def test_a_live_process_keeps_its_running_job_until_its_heartbeat_stops(
    settings: Settings, fake: FakeGenerator
) -> None:
    # Stale after 5 s: start-up on a loaded 2-core machine took longer than the 0.6 s this
    # test first used, so the "live" process was wrongly judged dead before the first check.
    quick = settings.model_copy(update={"stale_after_s": 5.0, "heartbeat_s": 0.1})
    with TestClient(create_app(quick, fake)) as client:
        project = make_project(client)
    db = Database(quick.resolved_database_url)
    with db.session() as session:
        session.add(WorkerProcess(id="other-process", hostname="here", pid=1))
    job = add_job(db, project["id"], "running", "other-process", "owned by another process")

    with TestClient(create_app(quick, fake)) as client:
        # At start-up the other process is alive (fresh heartbeat): its job is left alone.
        assert client.get(f"/api/v1/generations/{job}").json()["status"] == "running"
        with db.session() as session:  # ...then it dies: its heartbeat gets old
            session.get(WorkerProcess, "other-process").heartbeat_at = (  # type: ignore[union-attr]
                dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
            )
        deadline = time.monotonic() + 5
        while client.get(f"/api/v1/generations/{job}").json()["status"] == "running":
            assert time.monotonic() < deadline, "the dead process's job was never failed"
            time.sleep(0.05)
        assert client.get(f"/api/v1/generations/{job}").json()["error"].startswith("interrupted")
    db.dispose()


def test_recovery_removes_partial_writes_and_files_are_readable(
    settings: Settings, fake: FakeGenerator
) -> None:
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        done = wait_for(client, submit(client, project["id"])["id"])
    data = settings.resolved_data_dir
    folder = data / "images" / str(project["id"])
    old = folder / ".9-0.png.k2j4h1.tmp"  # what a crash mid-save leaves
    young = folder / ".9-1.png.abcd12.tmp"  # a live process writing right now
    for path in (old, young):
        path.write_bytes(b"half")
    os.utime(old, (0, 0))
    mine = folder / "notes.tmp"  # not a name the studio makes: left alone
    mine.write_text("user file")
    with TestClient(create_app(settings, fake)):
        pass
    assert not old.exists() and young.exists() and mine.exists()
    # Thumbnails and filmstrips (written by the storage; the PNGs here by the fake engine) are
    # as readable as the engine's PNGs (they were 0600).
    written = [*folder.glob("thumbs/*.jpg"), *folder.glob("filmstrips/*.png")]
    assert len(written) == 2 and done["filmstrip"] is not None
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_killed_local_process_is_recognised_at_once(
    settings: Settings, fake: FakeGenerator
) -> None:
    """Its heartbeat is still fresh, but its pid is gone from this host: no 30 s wait."""
    import socket
    import subprocess
    import sys

    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that existed and is now free
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        session.add(WorkerProcess(id="killed", hostname=socket.gethostname(), pid=gone.pid))
    job = add_job(db, project["id"], "running", "killed", "was running when killed")
    with TestClient(create_app(settings, fake)) as client:
        after = client.get(f"/api/v1/generations/{job}").json()
        assert after["status"] == "failed" and after["error"].startswith("interrupted")


def test_a_worker_whose_server_died_records_its_job_interrupted(
    client: TestClient, fake: FakeGenerator, monkeypatch
) -> None:
    """A worker process reporting a step to a dead server used to end the job as
    "internal error: BrokenPipeError"; the job was interrupted, and says so."""
    from multiprocessing import Pipe
    from threading import Lock

    from stable_diffusion_api.services.device_worker import ServerGone
    from stable_diffusion_api.services.worker_process import _RelayHub

    ours, servers = Pipe()
    servers.close()  # the server's end: gone
    relay = _RelayHub(ours, Lock())
    try:
        relay.step(1, 1, 4, None)
    except ServerGone:
        pass
    else:
        raise AssertionError("a step sent to a dead server must raise ServerGone")
    relay.finish(1, "failed")  # the outcome is in the row: nothing raised at the end

    studio = client.app.state.studio  # type: ignore[attr-defined]

    def dead_server(*args: object) -> None:
        raise ServerGone("the server process is gone (BrokenPipeError)")

    monkeypatch.setattr(studio.hub, "step", dead_server)
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"], ("failed",))
    assert done["failure_kind"] == "interrupted"
    assert done["error"].startswith("interrupted") and "BrokenPipe" not in done["error"]
