"""`JobQueue`, the per-image statements, on a real SQLite file and on a real PostgreSQL server:
queueing with its limit, claiming (oldest first, per device, never twice), succeeding only for
the owner, finishing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import FailureKind, Generation, Image, JobStatus, Project
from stable_diffusion_api.services.job_queue import (
    CancelOutcome,
    JobQueue,
    ProjectSettings,
    StopRequest,
)
from tests.api.helpers import migrated_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database with two projects: a SQLite file, or a fresh PostgreSQL database."""
    database = migrated_database(request, tmp_path)
    with database.session() as session:
        session.add_all(
            [
                Project(id=1, name="first", device="cpu", defaults={"steps": 7}),
                Project(id=2, name="second", device="cuda:0", dtype="float16"),
            ]
        )
    yield database
    database.dispose()


def job(project_id: int = 1, device: str = "cpu", prompt: str = "a red circle") -> dict[str, Any]:
    return {"project_id": project_id, "device": device, "dtype": None, "model": "dali-tiny",
            "prompt": prompt, "steps": 4, "guidance": 7.5, "seed": 3}  # fmt: skip


def test_project_settings_are_read_and_a_missing_project_is_none(db: Database) -> None:
    queue = JobQueue(db)
    assert queue.project(1) == ProjectSettings("cpu", None, False, None, {"steps": 7})
    assert queue.project(2) == ProjectSettings("cuda:0", "float16", False, None, {})
    assert queue.project(99) is None


def test_enqueue_counts_the_jobs_ahead_on_the_device_and_stops_at_the_limit(db: Database) -> None:
    queue = JobQueue(db)
    first = queue.enqueue(job(), queue_limit=3)
    second = queue.enqueue(job(), queue_limit=3)
    elsewhere = queue.enqueue(job(2, "cuda:0"), queue_limit=3)
    assert first is not None and second is not None and elsewhere is not None
    assert (first.ahead, second.ahead, elsewhere.ahead) == (0, 1, 0)
    assert second.id > first.id
    assert queue.enqueue(job(), queue_limit=3) is None  # three wait: full, nothing inserted
    with db.session() as session:
        rows = session.scalars(select(Generation).order_by(Generation.id)).all()
        assert [(row.status, row.device) for row in rows] == [
            ("queued", "cpu"), ("queued", "cpu"), ("queued", "cuda:0")
        ]  # fmt: skip
        assert all(row.created_at is not None and row.batch == 1 for row in rows)  # defaults


def test_enqueue_attaches_input_files_in_the_same_transaction(db: Database) -> None:
    seen: list[int] = []

    def attach(job_id: int) -> dict[str, Any]:
        seen.append(job_id)
        return {"init_image": f"inputs/{job_id}/init.png"}

    queued = JobQueue(db).enqueue(job(), queue_limit=5, attach=attach)
    assert queued is not None and seen == [queued.id]
    with db.session() as session:
        row = session.get(Generation, queued.id)
        assert row is not None and row.init_image == f"inputs/{queued.id}/init.png"


def test_enqueue_for_a_project_deleted_meanwhile_raises_lookup_error(db: Database) -> None:
    with pytest.raises(LookupError):
        JobQueue(db).enqueue(job(project_id=42), queue_limit=5)
    with db.session() as session:
        assert session.scalars(select(Generation)).all() == []


def test_claim_takes_the_oldest_job_of_its_device_once(db: Database) -> None:
    queue = JobQueue(db)
    ids = [queue.enqueue(job(prompt=f"job {i}"), queue_limit=9) for i in range(3)]
    gpu = queue.enqueue(job(2, "cuda:0", prompt="gpu job"), queue_limit=9)
    claimed = queue.claim("cpu", "worker-a")
    assert claimed is not None
    row, project_name = claimed
    assert ids[0] is not None and row.id == ids[0].id and project_name == "first"
    assert (row.status, row.worker_id, row.prompt) == ("running", "worker-a", "job 0")
    assert row.started_at is not None and row.created_at is not None
    second = queue.claim("cpu", "worker-a")
    assert second is not None and second[0].prompt == "job 1"
    on_gpu = queue.claim("cuda:0", "worker-b")
    assert gpu is not None and on_gpu is not None and on_gpu[0].id == gpu.id
    assert on_gpu[1] == "second"
    assert queue.claim("cuda:0", "worker-b") is None  # nothing waits there now


def test_two_workers_claiming_at_once_never_get_the_same_job(db: Database) -> None:
    queue = JobQueue(db)
    for i in range(20):
        queue.enqueue(job(prompt=f"job {i}"), queue_limit=50)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def work(name: str) -> None:
        while (claimed := queue.claim("cpu", name)) is not None:
            got[name].append(claimed[0].id)

    threads = [threading.Thread(target=work, args=(name,)) for name in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    everything = got["a"] + got["b"]
    assert len(everything) == 20 and len(set(everything)) == 20
    with db.session() as session:
        owners = dict(session.execute(select(Generation.id, Generation.worker_id)).all())
    assert all(owners[i] == "a" for i in got["a"]) and all(owners[i] == "b" for i in got["b"])


def image_row(generation_id: int, index: int) -> dict[str, Any]:
    return {"generation_id": generation_id, "project_id": 1, "index": index, "seed": 3 + index,
            "path": f"images/1/{generation_id}-{index}.png",
            "thumb_path": f"images/1/{generation_id}-{index}.jpg", "width": 64, "height": 64,
            "parameters": "a red circle"}  # fmt: skip


def running_job(queue: JobQueue, owner: str) -> int:
    """A job queued and then claimed by `owner`: its id."""
    queue.enqueue(job(), queue_limit=5)
    claimed = queue.claim("cpu", owner)
    assert claimed is not None
    return claimed[0].id


def test_succeed_marks_the_owners_job_and_inserts_its_images_in_order(db: Database) -> None:
    queue = JobQueue(db)
    job_id = running_job(queue, "worker-a")
    columns = {"sampler": "euler", "timings": {"engine_s": 0.5}, "step_seconds": 0.02}
    done = queue.succeed(job_id, "worker-a", columns, [image_row(job_id, 0), image_row(job_id, 1)])
    assert done is not None
    row, images = done
    assert (row.status, row.sampler, row.timings) == ("succeeded", "euler", {"engine_s": 0.5})
    assert [image.index for image in images] == [0, 1]
    assert images[0].id is not None and images[1].id == images[0].id + 1
    assert all(image.created_at is not None for image in images)
    with db.session() as session:
        stored = session.get(Generation, job_id)
        assert stored is not None and stored.status == "succeeded"
        assert stored.timings == {"engine_s": 0.5} and stored.step_seconds == 0.02
        assert [image.path for image in stored.images] == [image.path for image in images]


def test_succeed_does_nothing_for_a_job_that_is_not_the_callers(db: Database) -> None:
    queue = JobQueue(db)
    job_id = running_job(queue, "worker-a")
    columns = {"step_seconds": 0.1}
    assert queue.succeed(job_id, "worker-b", columns, [image_row(job_id, 0)]) is None
    with db.session() as session:
        session.execute(delete(Generation).where(Generation.id == job_id))  # project deleted
    assert queue.succeed(job_id, "worker-a", columns, [image_row(job_id, 0)]) is None
    with db.session() as session:
        assert session.scalars(select(Image)).all() == []


def test_finish_changes_only_a_running_job_and_records_its_failure_kind(db: Database) -> None:
    queue = JobQueue(db)
    first = queue.enqueue(job(), queue_limit=5)
    second = queue.enqueue(job(), queue_limit=5)
    assert first is not None and second is not None
    queue.claim("cpu", "worker-a")
    ended = queue.finish(first.id, FailureKind.OUT_OF_MEMORY, "out of memory", {"step_seconds": 2})
    assert ended is JobStatus.FAILED
    # Still queued: untouched.
    assert queue.finish(second.id, FailureKind.INTERNAL, "boom") is None
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    assert (rows[first.id].status, rows[first.id].failure_kind, rows[first.id].error) == (
        JobStatus.FAILED, FailureKind.OUT_OF_MEMORY, "out of memory",
    )  # fmt: skip
    assert rows[first.id].step_seconds == 2 and rows[first.id].finished_at is not None
    assert (rows[second.id].status, rows[second.id].failure_kind) == ("queued", None)


def test_finish_with_kind_cancelled_means_canceled(db: Database) -> None:
    queue = JobQueue(db)
    job_id = running_job(queue, "worker-a")
    assert queue.finish(job_id, FailureKind.CANCELLED, "canceled while running") == "canceled"
    with db.session() as session:
        row = session.get(Generation, job_id)
        assert row is not None
        assert (row.status, row.failure_kind) == (JobStatus.CANCELED, FailureKind.CANCELLED)
        assert isinstance(row.status, JobStatus)  # read back as the enum, not a plain string


def test_cancel_ends_a_queued_job_flags_a_running_one_and_leaves_a_finished_one(
    db: Database,
) -> None:
    queue = JobQueue(db)
    running = running_job(queue, "worker-a")
    queued = queue.enqueue(job(), queue_limit=5)
    assert queued is not None
    assert queue.cancel(queued.id) == CancelOutcome(JobStatus.CANCELED, changed=True)
    assert queue.cancel(running) == CancelOutcome(JobStatus.RUNNING, changed=True)
    assert queue.cancel_requested(running) is True
    assert queue.cancel(queued.id) == CancelOutcome(JobStatus.CANCELED, changed=False)
    assert queue.cancel(queued.id + 1000) is None
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    assert (rows[queued.id].status, rows[queued.id].failure_kind, rows[queued.id].error) == (
        "canceled", "cancelled", "canceled before it started",
    )  # fmt: skip
    assert (rows[running].status, rows[running].failure_kind) == ("running", None)
    assert queue.claim("cpu", "worker-a") is None  # the canceled job never runs


def test_cancel_project_jobs_cancels_the_queued_and_flags_the_running(db: Database) -> None:
    queue = JobQueue(db)
    running = running_job(queue, "worker-a")
    queued = queue.enqueue(job(), queue_limit=5)
    other = queue.enqueue(job(2, "cuda:0"), queue_limit=5)
    assert queued is not None and other is not None
    with db.engine.begin() as connection:
        assert JobQueue.cancel_project_jobs(connection, 1) == [running]
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    assert (rows[queued.id].status, rows[queued.id].failure_kind) == ("canceled", "cancelled")
    assert rows[running].status == "running" and rows[running].cancel_requested
    assert rows[other.id].status == "queued" and not rows[other.id].cancel_requested


def test_fail_orphaned_interrupts_only_the_running_jobs_of_dead_workers(db: Database) -> None:
    queue = JobQueue(db)
    dead = running_job(queue, "dead-worker")
    alive = running_job(queue, "live-worker")
    waiting = queue.enqueue(job(), queue_limit=5)
    assert waiting is not None
    assert queue.fail_orphaned({"live-worker"}) == [dead]
    assert queue.fail_orphaned({"live-worker"}) == []
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    assert (rows[dead].status, rows[dead].failure_kind) == ("failed", "interrupted")
    assert rows[dead].error is not None and rows[dead].error.startswith("interrupted")
    assert rows[alive].status == "running" and rows[waiting.id].status == "queued"


def test_fail_dead_worker_interrupts_its_device_job_saying_the_exit_code(db: Database) -> None:
    queue = JobQueue(db)
    mine = running_job(queue, "server-1")
    theirs = running_job(queue, "server-2")
    assert queue.fail_dead_worker("cuda:0", "server-1", -9) == []  # nothing runs there
    assert queue.fail_dead_worker("cpu", "server-1", -9) == [mine]
    with db.session() as session:
        rows = {row.id: row for row in session.scalars(select(Generation))}
    assert (rows[mine].status, rows[mine].failure_kind) == ("failed", "interrupted")
    assert rows[mine].error == "interrupted: the worker process stopped unexpectedly (exit code -9)"
    assert rows[theirs].status == "running"


def test_cancel_requested_reads_the_flag_and_a_vanished_row_counts_as_canceled(
    db: Database,
) -> None:
    queue = JobQueue(db)
    queued = queue.enqueue(job(), queue_limit=5)
    assert queued is not None
    assert queue.cancel_requested(queued.id) is False
    with db.session() as session:
        row = session.get(Generation, queued.id)
        assert row is not None
        row.cancel_requested = True
    assert queue.cancel_requested(queued.id) is True
    assert queue.cancel_requested(queued.id + 1000) is True


def test_an_interrupt_flags_a_running_job_apart_from_a_cancel(db: Database) -> None:
    queue = JobQueue(db)
    running = running_job(queue, "worker-a")
    queued = queue.enqueue(job(), queue_limit=5)
    assert queued is not None
    # A queued job has nothing to keep: it is canceled as by a cancel.
    assert queue.cancel(queued.id, keep_partial=True) == CancelOutcome(JobStatus.CANCELED, True)
    assert queue.stop_requested(running) == StopRequest(cancel=False, interrupt=False)
    assert queue.cancel(running, keep_partial=True) == CancelOutcome(JobStatus.RUNNING, True)
    assert queue.stop_requested(running) == StopRequest(cancel=False, interrupt=True)
    assert queue.cancel_requested(running) is False
    assert queue.stop_requested(running + 1000) == StopRequest(cancel=True, interrupt=False)


def test_an_interrupted_job_ends_interrupted_with_its_images(db: Database) -> None:
    queue = JobQueue(db)
    job_id = running_job(queue, "worker-a")
    with pytest.raises(ValueError, match="succeeded or interrupted"):
        queue.succeed(job_id, "worker-a", {}, [image_row(job_id, 0)], JobStatus.FAILED)
    done = queue.succeed(
        job_id, "worker-a", {"step_seconds": 0.1}, [image_row(job_id, 0)], JobStatus.INTERRUPTED
    )
    assert done is not None and done[0].status == JobStatus.INTERRUPTED
    with db.session() as session:
        stored = session.get(Generation, job_id)
        assert stored is not None and stored.status == "interrupted"
        assert stored.failure_kind is None and len(stored.images) == 1
