"""Project names are unique by their case-folded form, on SQLite and PostgreSQL alike: a second
`Ölbild` beside `ölbild`, or the loser of two creates racing for one name, gets 409 naming the
name (never 500), and `get_or_create` (the A1111 X-Dali-Project header, Gradio) finds the project
whatever case it is asked in."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.api.helpers import make_project
from tests.postgres import PostgresServer

RACERS = 50


@pytest.mark.parametrize(
    ("first", "second"),
    [("ölbild", "Ölbild"), ("Ölbild", "ölbild"), ("Äpfel", "äPFEL"), ("Straße", "STRASSE"), ("Σίσυφος", "ΣΊΣΥΦΟΣ"),
     ("Ölbild", "O\u0308lbild")],  # the last: Ö composed vs O + combining diaeresis
)  # fmt: skip
def test_names_differing_only_by_case_are_409_naming_the_name(
    client: TestClient, first: str, second: str
) -> None:
    make_project(client, first)
    response = client.post("/api/v1/projects", json={"name": second})
    assert response.status_code == 409, response.text
    assert repr(second) in response.json()["detail"]
    other = make_project(client, "Other")
    renamed = client.patch(f"/api/v1/projects/{other['id']}", json={"name": second})
    assert renamed.status_code == 409, renamed.text
    assert [p["name"] for p in client.get("/api/v1/projects").json()].count(first) == 1
    # Renaming a project to another case of its own name is fine.
    mine = client.get("/api/v1/projects").json()
    own = next(p for p in mine if p["name"] == first)
    assert client.patch(f"/api/v1/projects/{own['id']}", json={"name": second}).status_code == 200


def race(client: TestClient, name: str) -> Counter[int]:
    """`RACERS` threads POST a project called `name` at once; their status codes counted."""
    start = threading.Barrier(RACERS)

    def create(_: int) -> int:
        start.wait()
        return client.post("/api/v1/projects", json={"name": name}).status_code

    with ThreadPoolExecutor(RACERS) as pool:
        return Counter(pool.map(create, range(RACERS)))


def test_concurrent_creates_of_one_name_give_one_201_and_409s(client: TestClient) -> None:
    assert race(client, "Äpfel") == Counter({201: 1, 409: RACERS - 1})
    assert [p["name"] for p in client.get("/api/v1/projects").json()] == ["Äpfel"]


def test_get_or_create_survives_the_race_and_finds_any_case(client: TestClient) -> None:
    projects = client.app.state.studio.projects  # type: ignore[attr-defined]
    start = threading.Barrier(RACERS)
    names = ["Äpfel", "äpfel", "ÄPFEL", " Äpfel "]

    def get(index: int) -> int:
        start.wait()
        return projects.get_or_create(names[index % len(names)].strip()).id

    with ThreadPoolExecutor(RACERS) as pool:
        ids = set(pool.map(get, range(RACERS)))
    assert len(ids) == 1
    assert len(client.get("/api/v1/projects").json()) == 1


def test_existing_names_that_collide_by_case_are_suffixed_by_the_migration(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'dali.db'}")
    db.migrate("0008")
    names = ["Ölbild", "ölbild", "ÖLBILD", "ölbild (2)", "Other", "x" * 100, "X" * 100]
    with db.engine.begin() as connection:
        for project_id, name in enumerate(names, start=1):
            connection.execute(
                text(
                    "INSERT INTO projects (id, name, description, device, low_memory, defaults,"
                    " created_at, updated_at) VALUES (:id, :name, '', 'cpu', 0, '{}',"
                    " '2025-01-01', '2025-01-01')"
                ),
                {"id": project_id, "name": name},
            )
    db.migrate()
    with db.engine.connect() as connection:
        rows = dict(connection.exec_driver_sql("SELECT id, name FROM projects").all())
        keys = [k for (k,) in connection.exec_driver_sql("SELECT name_key FROM projects")]
    # The oldest keeps its name; the later ones get the first free " (n)".
    assert rows == {1: "Ölbild", 2: "ölbild (3)", 3: "ÖLBILD (4)", 4: "ölbild (2)", 5: "Other",
                    6: "x" * 100, 7: "X" * 96 + " (2)"}  # fmt: skip
    assert len(set(keys)) == len(keys) == len(names)
    db.downgrade("0008")
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM projects").scalar() == len(names)
    db.dispose()


def test_a1111_header_with_a_non_ascii_name_works_every_call(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.a1111.server_app import with_a1111

    monkeypatch.delenv("DALI_API_AUTH", raising=False)
    with_a1111(client.app)  # type: ignore[arg-type]
    # A client sends the header as Latin-1 bytes (what `requests` does with a str).
    for header in ["Äpfel", "Äpfel", "äpfel", "ÄPFEL"]:
        response = client.get(
            "/sdapi/v1/options", headers={"X-Dali-Project": header.encode("latin-1")}
        )
        assert response.status_code == 200, response.text
    assert [p["name"] for p in client.get("/api/v1/projects").json()] == ["Äpfel"]


def test_postgresql_folds_case_the_same_and_maps_the_race_to_409(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, models_dir=data / "models", database_url=postgres.new_database(),
                        poll_s=0.05, heartbeat_s=0.2, stale_after_s=2.0)  # fmt: skip
    fake = FakeGenerator(write_fake_checkpoint(data / "models" / "dali-tiny.safetensors"))
    with TestClient(create_app(settings, fake)) as client:
        make_project(client, "ölbild")
        assert client.post("/api/v1/projects", json={"name": "Ölbild"}).status_code == 409
        assert race(client, "Äpfel") == Counter({201: 1, 409: RACERS - 1})
        projects = client.app.state.studio.projects  # type: ignore[attr-defined]
        assert projects.get_or_create("ÄPFEL").name == "Äpfel"
    fake.release.set()
