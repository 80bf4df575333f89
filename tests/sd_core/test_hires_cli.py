"""`python -m sd_core generate --hires-scale …` runs the hires fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.infotext import parse_infotext
from tests.reference import random_checkpoint
from tests.sd_core.test_cli import run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.safetensors"
    return save_checkpoint(path, random_checkpoint(TINY_TEST, seed=8), TINY_TEST)


def test_hires_flags_reach_the_image(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "hires.png"
    result = run(
        "generate", "--checkpoint", str(checkpoint), "--prompt", "a red circle", "--seed", "1",
        "--steps", "2", "--hires-scale", "1.5", "--hires-upscaler", "Nearest", "--hires-steps",
        "1", "--hires-strength", "0.5", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (96, 96)
        parsed = parse_infotext(image.text["parameters"])
    assert (parsed.width, parsed.denoising_strength) == (64, 0.5)
    assert parsed.extra["Hires upscale"] == "1.5" and parsed.extra["Hires upscaler"] == "Nearest"


def test_a_bad_hires_scale_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    result = run(
        "generate", "--prompt", "x", "--hires-scale", "5", "--out", str(tmp_path / "o.png")
    )
    assert result.returncode == 2 and "hires_scale must be from 1 to 4, got 5" in result.stderr


def test_hires_schedule_type_and_cfg_flags(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "hires.png"
    result = run(
        "generate", "--checkpoint", str(checkpoint), "--prompt", "a red circle", "--seed", "1",
        "--steps", "2", "--sampler", "euler", "--hires-scale", "1.5", "--hires-steps", "1",
        "--hires-scheduler", "karras", "--hires-cfg", "3", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        parsed = parse_infotext(image.text["parameters"])
    assert parsed.extra["Hires schedule type"] == "Karras"
    assert parsed.extra["Hires CFG Scale"] == "3"
    bad = run("generate", "--prompt", "x", "--hires-scale", "2", "--hires-scheduler", "beta",
              "--out", str(tmp_path / "o.png"))  # fmt: skip
    assert bad.returncode == 2 and "hires_scheduler: unknown schedule type 'beta'" in bad.stderr
