"""Estimates stay steady: one generation slowed by other work moves the kept speed a little;
a benchmark the user asked for replaces it; a lasting change takes over within ten runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stable_diffusion_api.config import Settings
from stable_diffusion_api.services.speeds import SpeedService, blend
from stable_diffusion_api.services.studio import Studio


@pytest.fixture
def speeds(tmp_path: Path) -> SpeedService:
    studio = Studio(Settings(data_dir=tmp_path / "data"))
    studio.start()
    try:
        yield SpeedService(studio.db)
    finally:
        studio.stop()
        studio.db.dispose()


def kept(speeds: SpeedService) -> tuple[float, float, str]:
    [row] = speeds.list()
    return row.steps_per_s, row.overhead_s, row.source


def record(speeds: SpeedService, steps_per_s: float, overhead_s: float, source: str) -> None:
    speeds.record("cpu", "abc", None, 64, 64, steps_per_s, overhead_s, source)


def test_one_slow_generation_moves_the_estimate_by_a_little(speeds: SpeedService) -> None:
    record(speeds, 20.0, 0.5, "benchmark")
    before = speeds.estimate("cpu", "abc", None, 64, 64, 20, 1).seconds
    record(speeds, 20.0 / 780, 0.5, "generation")  # 780× slower: the machine was busy
    after = speeds.estimate("cpu", "abc", None, 64, 64, 20, 1).seconds
    assert before is not None and after is not None
    assert 1.2 < after / before < 1.5  # not 780×
    assert kept(speeds)[0] == pytest.approx(20.0 * 4**-0.3)


def test_a_benchmark_replaces_and_a_lasting_change_takes_over(speeds: SpeedService) -> None:
    record(speeds, 20.0, 0.5, "generation")
    assert kept(speeds) == (20.0, 0.5, "generation")  # the first measurement is kept as is
    record(speeds, 5.0, 1.0, "benchmark")
    assert kept(speeds) == (5.0, 1.0, "benchmark")
    for _ in range(10):
        record(speeds, 10.0, 1.0, "generation")
    assert kept(speeds)[0] == pytest.approx(10.0, rel=0.03)


def test_blend_is_geometric_and_takes_the_new_value_when_there_is_nothing_to_blend() -> None:
    assert blend(10.0, 10.0) == pytest.approx(10.0)
    assert blend(1.0, 2.0) == pytest.approx(2**0.3)
    assert blend(1.0, 1000.0) == pytest.approx(4**0.3)  # held to 4× first
    assert blend(0.0, 3.0) == 3.0
