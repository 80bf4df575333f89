"""A database that refuses writes while the studio runs (issue 15, item 5): its disk full, its
file made read-only. Requests get a 503 saying why and the next ones work; a job whose final
write is refused does not stay `running`, and its images are saved or quarantined, never lost.

The faults are real: the file's mode bits, and SQLite's own "database or disk is full"
(SQLITE_FULL), raised by capping the file at its current size (`PRAGMA max_page_count`) on
every connection of the studio's pool, so that a write needing one more page fails in SQLite
as it would on a full disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from stable_diffusion_api.db import Database, DatabaseUnavailable
from stable_diffusion_api.models import Project
from stable_diffusion_api.schemas import MAX_PROMPT
from tests.api.helpers import make_project

# A row longer than a 4 KiB page needs a new one: refused by a full disk.
LONG_TEXT = ("a red circle on a blue background " * 60)[: MAX_PROMPT - 1] + "x"
BIG_JOB = {"prompt": LONG_TEXT, "negative_prompt": LONG_TEXT, "steps": 2}


@contextmanager
def disk_full(db: Database) -> Iterator[None]:
    """Within the block, the database file cannot grow: a write that needs a new page fails
    with SQLITE_FULL, as on a full disk; writes that fit in the pages there still work."""
    with db.engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    event.listen(db.engine, "checkout", on_checkout)
    try:
        yield
    finally:
        event.remove(db.engine, "checkout", on_checkout)
        db.engine.dispose()  # room again: the capped connections are closed as they come back


def test_a_refused_write_is_a_503_and_the_next_requests_work(client: TestClient) -> None:
    project = make_project(client)
    jobs = f"/api/v1/projects/{project['id']}/generations"
    db = client.app.state.studio.db  # type: ignore[attr-defined]
    with disk_full(db):
        refused = client.post(jobs, json=BIG_JOB)
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "database or disk is full" in detail and "nothing can be saved" in detail
        # The pool is not left broken: 15 more requests, reads and writes that fit, all work.
        answers = []
        for _ in range(5):
            queued = client.post(jobs, json={"prompt": "a red circle", "steps": 2})
            answers.append(queued.status_code)
            answers.append(client.get(f"/api/v1/generations/{queued.json()['id']}").status_code)
            answers.append(client.get(f"/api/v1/projects/{project['id']}").status_code)
        assert answers == [202, 200, 200] * 5
        assert client.post(jobs, json=BIG_JOB).status_code == 503
    assert client.post(jobs, json=BIG_JOB).status_code == 202  # room again
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
