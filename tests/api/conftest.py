"""Fixtures for the API tests: an app on a temporary data directory with the fake generator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.migrated import copy_migrated
from tests.s3 import S3Server, s3_server


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    data = tmp_path / "data"
    copy_migrated(migrated_sqlite, data)
    return Settings(
        data_dir=data,
        models_dir=data / "models",
        poll_s=0.05,
        heartbeat_s=0.2,
        stale_after_s=2.0,
        # One machine, no other node: a stray file is quarantined at once, however young.
        orphan_grace_s=0.0,
        queue_limit=20,
        # Open unless a test says otherwise, whatever the developer's environment holds.
        api_key=None,
        api_auth=None,
    )


@pytest.fixture
def fake(settings: Settings) -> FakeGenerator:
    builtin = write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    return FakeGenerator(builtin)


@pytest.fixture
def client(settings: Settings, fake: FakeGenerator) -> Iterator[TestClient]:
    with TestClient(create_app(settings, fake)) as test_client:
        yield test_client
    fake.release.set()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A throwaway S3 server (moto's) for this test session (tests/s3.py)."""
    with s3_server() as server:
        yield server
