"""Fixtures for the A1111 route tests: the app on a temporary data directory, fake engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.a1111.server_app import with_a1111
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.migrated import copy_migrated


def make_settings(data: Path) -> Settings:
    return Settings(
        data_dir=data,
        models_dir=data / "models",
        poll_s=0.05,
        heartbeat_s=0.2,
        stale_after_s=2.0,
        queue_limit=20,
        # Open unless a test says otherwise, whatever the developer's environment holds.
        api_key=None,
        api_auth=None,
    )


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    copy_migrated(migrated_sqlite, tmp_path / "data")
    return make_settings(tmp_path / "data")


@pytest.fixture
def fake(settings: Settings) -> FakeGenerator:
    builtin = write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    return FakeGenerator(builtin)


@pytest.fixture
def client(
    settings: Settings, fake: FakeGenerator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    # The A1111 settings come from the environment: make sure the developer's does not leak in.
    monkeypatch.delenv("DALI_API_AUTH", raising=False)
    monkeypatch.delenv("DALI_A1111_PROJECT", raising=False)
    with TestClient(with_a1111(create_app(settings, fake))) as test_client:
        yield test_client
    fake.release.set()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, FakeGenerator]]:
    """One app for the tests that only read or are refused (nothing they send is queued)."""
    settings = make_settings(tmp_path_factory.mktemp("shared") / "data")
    fake = FakeGenerator(
        write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    )
    with pytest.MonkeyPatch.context() as env:
        env.delenv("DALI_API_AUTH", raising=False)
        env.delenv("DALI_A1111_PROJECT", raising=False)
        with TestClient(with_a1111(create_app(settings, fake))) as test_client:
            yield test_client, fake
