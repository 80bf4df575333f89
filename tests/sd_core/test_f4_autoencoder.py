"""A checkpoint whose autoencoder downsamples by 4 (three levels) draws at the asked size: the
starting latent follows the VAE's factor instead of SD's fixed 8."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams
from tests.reference import random_checkpoint

F4 = dataclasses.replace(TINY_TEST, vae=dataclasses.replace(TINY_TEST.vae, channel_mult=(1, 2, 4)))


def test_an_f4_model_draws_64_px_from_16_by_16_latents(tmp_path: Path) -> None:
    assert F4.vae.downsample_factor == 4
    path = save_checkpoint(tmp_path / "f4.safetensors", random_checkpoint(F4, seed=3), F4)
    pipe = sd_core.load_pipeline(path)
    params = GenerationParams("a red circle", seed=1, steps=2, width=64, height=80)
    _, latents = pipe.generate_latents(params)
    assert latents.shape[-2:] == (20, 16)
    assert pipe.generate(params).images[0].size == (64, 80)
    hires = dataclasses.replace(params, hires=True, hires_scale=2.0, hires_steps=1)
    assert pipe.generate(hires).images[0].size == (128, 160)
