"""`python -m sd_core generate|info|samplers` as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.infotext import parse_infotext
from sd_core.samplers import SAMPLERS, get_sampler, sampler_names
from tests.reference import random_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sd_core", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("cli") / "tiny.safetensors"
    return save_checkpoint(path, random_checkpoint(TINY_TEST, seed=8), TINY_TEST)


def test_samplers_lists_every_name_with_its_a1111_label():
    result = run("samplers")
    assert result.returncode == 0
    rows = [line.split(maxsplit=1) for line in result.stdout.splitlines()]
    assert [name for name, _ in rows] == sampler_names()
    assert dict(rows)["dpmpp_2m_karras"] == "DPM++ 2M Karras"
    assert all(get_sampler(label) is SAMPLERS[name] for name, label in rows)


def test_generate_help_shows_the_defaults():
    result = run("generate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for default in ("(default: 20)", "(default: 7.0)", "(default: 1)", "(default: 0.75)"):
        assert default in text


def test_generate_batch_writes_numbered_pngs_with_parameters(checkpoint, tmp_path):
    out = tmp_path / "out.png"
    result = run(
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "a red circle",
        "--negative-prompt",
        "blue",
        "--seed",
        "4",
        "--steps",
        "3",
        "--sampler",
        "DPM++ 2M",
        "--guidance",
        "5",
        "--batch",
        "2",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    second = tmp_path / "out-1.png"
    assert out.exists() and second.exists()
    with Image.open(second) as image:
        params = parse_infotext(image.text["parameters"])
        dali = json.loads(image.text["dali"])
    assert (params.prompt, params.negative_prompt, params.seed) == ("a red circle", "blue", 5)
    assert (params.steps, params.sampler, params.cfg_scale) == (3, "DPM++ 2M", 5.0)
    assert dali["sampler"] == "dpmpp_2m" and dali["device"] == "cpu"
    assert "seed 4" in result.stdout and "seed 5" in result.stdout
    assert "sampling" in result.stderr  # the tqdm progress bar


def test_img2img_and_inpaint_from_files(checkpoint, tmp_path):
    Image.new("RGB", (64, 64), "green").save(tmp_path / "in.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[20:40, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = run(
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--init-image",
        str(tmp_path / "in.png"),
        "--strength",
        "0.5",
        "--mask",
        str(tmp_path / "mask.png"),
        "--out",
        str(tmp_path / "o.png"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "o.png") as image:
        assert parse_infotext(image.text["parameters"]).denoising_strength == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be from 1 to 150, got 0"),
        (["--width", "100"], "width must be a multiple of 8"),
        (["--guidance", "50"], "guidance must be from 0 to 30, got 50"),
        (["--strength", "2"], "strength must be from 0 to 1, got 2"),
        (["--sampler", "fast"], "unknown sampler 'fast'"),
        (["--device", "cuda:3"], "device 'cuda:3' is not available"),
        (["--clip-skip", "13"], "clip_skip must be from 1 to 12, got 13"),
        (["--batch", "9"], "batch must be from 1 to 8, got 9"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(checkpoint, tmp_path, args, message):
    result = run(
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o.png"),
        *args,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    for path, message in [
        (tmp_path / "missing.safetensors", "does not exist"),
        (tmp_path / "junk.ckpt", "corrupt or truncated"),
    ]:
        result = run(
            "generate", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "o.png")
        )
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr
    result = run("generate", "--prompt", "x", "--out", str(tmp_path / "o.jpg"))
    assert result.returncode == 2 and "--out must end in .png" in result.stderr
    result = run("generate", "--out", str(tmp_path / "o.png"))
    assert result.returncode == 2 and "--prompt" in result.stderr


def test_info_reports_variant_counts_and_hashes(checkpoint):
    result = run("info", str(checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["variant"] == "sd-v1" and info["dtype"] == "float32"
    assert info["short_hash"] == info["sha256"][:10]
    assert info["parameters"]["unet"] > 0
    text = run("info", str(checkpoint))
    assert "short hash" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "500"], "steps must be from 1 to 150, got 500"),
        (["--sampler", "fast"], "unknown sampler 'fast'"),
        (["--device", "cuda:3"], "device 'cuda:3' is not available"),
    ],
)
def test_input_errors_come_before_the_model_loads(tmp_path, args, message):
    """A bad setting is reported even when the checkpoint could not be loaded at all (it is
    looked at before the model takes seconds to load)."""
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")  # loading it would fail
    result = run(
        "generate",
        "--checkpoint",
        str(tmp_path / "junk.ckpt"),
        "--prompt",
        "x",
        *args,
        "--out",
        str(tmp_path / "o.png"),
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_clip_skip_reaches_the_image(checkpoint, tmp_path):
    out = tmp_path / "skip.png"
    result = run(
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "a red circle",
        "--seed",
        "1",
        "--steps",
        "2",
        "--clip-skip",
        "2",
        "--quiet",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert parse_infotext(image.text["parameters"]).extra["Clip skip"] == "2"
