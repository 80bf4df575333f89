"""`JobQueue.claim_batch`: the oldest queued job of a device and the younger ones that match it,
claimed together in one statement, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Project
from stable_diffusion_api.services.job_queue import JobQueue
from tests.api.helpers import migrated_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = migrated_database(request, tmp_path)
    with database.session() as session:
        session.add_all([Project(id=1, name="first", device="cpu"),
                         Project(id=2, name="second", device="cuda:0")])  # fmt: skip
    yield database
    database.dispose()


def job(prompt: str, **fields: Any) -> dict[str, Any]:
    values = {"project_id": 1, "device": "cpu", "dtype": None, "model": "dali-tiny",
              "prompt": prompt, "steps": 4, "guidance": 7.5, "seed": 3, "width": 64,
              "height": 64, "sampler": "euler_a", "extra_params": None}  # fmt: skip
    return values | fields


def test_the_oldest_job_decides_and_matching_younger_jobs_join_it(db: Database) -> None:
    queue = JobQueue(db)
    for values in (
        job("a", guidance=3.0, seed=1, batch=2, negative_prompt="blue"),  # each job's own
        job("other steps", steps=5),
        job("b", seed=2),
        job("on the gpu", project_id=2, device="cuda:0"),
        job("other size", width=128),
        job("img2img", init_image="inputs/1.png"),
        job("other scheduler", extra_params={"scheduler": "karras"}),
        job("c", seed=3),
        job("d", seed=4),
    ):
        queue.enqueue(values, queue_limit=20)
    claimed = queue.claim_batch("cpu", "worker-a", 3)
    assert [row.prompt for row, _ in claimed] == ["a", "b", "c"]  # oldest first, at most 3
    assert all(row.status == "running" and row.worker_id == "worker-a" for row, _ in claimed)
    assert {name for _, name in claimed} == {"first"}
    # The next oldest decides next: alone, as nothing else waiting matches it.
    assert [row.prompt for row, _ in queue.claim_batch("cpu", "worker-a", 3)] == ["other steps"]
    assert [row.prompt for row, _ in queue.claim_batch("cpu", "worker-a", 3)] == ["other size"]
    # A job with an input image runs alone, even beside a matching one.
    assert [row.prompt for row, _ in queue.claim_batch("cpu", "worker-a", 3)] == ["img2img"]
    assert [row.prompt for row, _ in queue.claim_batch("cpu", "worker-a", 3)] == ["other scheduler"]
    assert [row.prompt for row, _ in queue.claim_batch("cpu", "worker-a", 3)] == ["d"]
    assert queue.claim_batch("cpu", "worker-a", 3) == []
    assert [row.prompt for row, _ in queue.claim_batch("cuda:0", "worker-b", 3)] == ["on the gpu"]


def test_two_workers_claiming_batches_at_once_never_get_the_same_job(db: Database) -> None:
    queue = JobQueue(db)
    for i in range(24):
        queue.enqueue(job(f"job {i}", seed=i), queue_limit=50)
    got: dict[str, list[int]] = {"a": [], "b": []}
    failures: list[BaseException] = []

    def work(name: str) -> None:
        try:
            while claimed := queue.claim_batch("cpu", name, 4):
                assert len(claimed) <= 4
                got[name] += [row.id for row, _ in claimed]
        except BaseException as exc:  # a claim that fails (a deadlock) must fail the test,
            failures.append(exc)  # not leave the other thread to claim the rest

    threads = [threading.Thread(target=work, args=(name,)) for name in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    everything = got["a"] + got["b"]
    assert len(everything) == 24 and len(set(everything)) == 24
