"""`OptionStore`: A1111 options kept in the project's row, merged under a row lock, on a real
SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stable_diffusion_api.a1111.options import MAX_VALUE_CHARS, STORED_DEFAULTS, OptionStore
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField, NotFound
from stable_diffusion_api.models import Project
from tests.api.helpers import migrated_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = migrated_database(request, tmp_path)
    with database.session() as session:
        session.add(Project(id=1, name="first", device="cpu"))
    yield database
    database.dispose()


def row(db: Database) -> Project:
    with db.session() as session:
        project = session.get(Project, 1)
        assert project is not None
        return project


def test_options_merge_into_the_row_and_read_back_over_the_defaults(db: Database) -> None:
    store = OptionStore(db)
    assert store.get(row(db)) == STORED_DEFAULTS and row(db).a1111_options is None
    edited = row(db).updated_at
    store.set(1, {"send_seed": False, "ext": [1, "two"]})
    assert row(db).updated_at == edited  # not an edit of the project: the list's order stays
    store.set(1, {"ext": {"replaced": True}})
    assert row(db).a1111_options == {"send_seed": False, "ext": {"replaced": True}}
    assert store.get(row(db)) == {**STORED_DEFAULTS, "send_seed": False, "ext": {"replaced": True}}
    with pytest.raises(InvalidField) as refused:
        store.set(1, {"big": "x" * MAX_VALUE_CHARS})
    assert refused.value.field == "big"
    with pytest.raises(NotFound):
        store.set(2, {"send_seed": True})
    assert row(db).a1111_options == {"send_seed": False, "ext": {"replaced": True}}


def test_two_web_processes_setting_keys_at_once_keep_every_key(db: Database) -> None:
    # Two stores: what two web processes hold. Each writes its own keys, 20 times over.
    stores = [OptionStore(db), OptionStore(db)]
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            start.wait()
            for i in range(20):
                stores[index].set(1, {f"p{index}_{i}": i})
        except BaseException as error:  # noqa: BLE001 (reported below)
            failures.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    kept = row(db).a1111_options or {}
    assert kept == {f"p{index}_{i}": i for index in range(2) for i in range(20)}
