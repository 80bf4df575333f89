"""Fixtures for the Gradio handler tests: a `DaliUI` over a real studio (SQLite file, queue,
worker thread) whose generator is the API tests' fake, so no model loads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dali_gradio import DaliUI
from stable_diffusion_api.config import Settings
from stable_diffusion_api.services import Studio
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.migrated import copy_migrated


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    copy_migrated(migrated_sqlite, tmp_path / "data")
    return Settings(data_dir=tmp_path / "data", poll_s=0.05, heartbeat_s=0.2)


@pytest.fixture
def fake(settings: Settings) -> FakeGenerator:
    return FakeGenerator(
        write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    )


@pytest.fixture
def ui(settings: Settings, fake: FakeGenerator) -> Iterator[DaliUI]:
    studio = Studio(settings, fake)
    studio.start()
    try:
        yield DaliUI(studio)
    finally:
        fake.release.set()
        studio.stop()
        studio.db.dispose()
