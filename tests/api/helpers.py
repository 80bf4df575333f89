"""Helpers shared by the API tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.db import Database


def make_project(client: TestClient, name: str = "Shapes", **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/projects", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def submit(client: TestClient, project_id: int, **fields: Any) -> dict[str, Any]:
    body = {"prompt": "a red circle on a blue background", "steps": 4, **fields}
    response = client.post(f"/api/v1/projects/{project_id}/generations", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(
    client: TestClient, generation_id: int, statuses: tuple[str, ...] = ("succeeded",),
    timeout: float = 10.0,
) -> dict[str, Any]:  # fmt: skip
    """Poll until the generation reaches one of `statuses` (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/generations/{generation_id}").json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"generation {generation_id} stuck in {body['status']}: {body}")
        time.sleep(0.02)


def migrated_database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """For a `db` fixture parametrized "sqlite" / "postgresql": a migrated database, a SQLite
    file in `tmp_path` or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dali.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    database = Database(url)
    database.migrate()
    return database
