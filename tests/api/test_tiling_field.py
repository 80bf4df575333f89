"""`tiling` on the REST request: to the engine, into the row (no column: extra_params) and back."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_tiling_reaches_the_engine_and_the_view(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client, "Textures")
    done = wait_for(client, submit(client, project["id"], tiling=True)["id"])
    assert done["tiling"] is True and fake.calls[-1].params.tiling is True
    plain = wait_for(client, submit(client, project["id"])["id"])
    assert plain["tiling"] is False and fake.calls[-1].params.tiling is False
