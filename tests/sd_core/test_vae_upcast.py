"""A half-precision VAE decode never hands back NaN: sd_core/vae_upcast.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams
from sd_core.tiled_vae import VaeTiling, vae_decode
from sd_core.vae import AutoencoderKL
from sd_core.vae_upcast import decode_finite, float32_copy
from tests.reference import random_checkpoint, random_part, sd_core_part


def vae(dtype: torch.dtype) -> AutoencoderKL:
    model = sd_core_part("vae", random_part("vae", TINY_TEST, seed=4), TINY_TEST)
    assert isinstance(model, AutoencoderKL)
    return model.to(dtype)


def test_an_overflowing_float16_decode_is_redone_in_float32() -> None:
    half = vae(torch.float16)
    # Activations past float16's 65504 in the decoder's first layer (finite in float32): the
    # float16 decode overflows to inf, then NaN in the next GroupNorm.
    with torch.no_grad():
        half.post_quant_conv.weight.mul_(100.0)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 1000.0
    with torch.inference_mode():
        plain = vae_decode(half, z.half(), VaeTiling())
        assert not bool(torch.isfinite(plain).all())  # the failure the guard is for
        got = decode_finite(half, z.half(), VaeTiling())
        expected = float32_copy(half).decode(z.half().float())
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert torch.equal(got, expected)
    assert float32_copy(half) is float32_copy(half)  # built once


def test_a_finite_float16_decode_is_kept_and_float32_is_never_checked() -> None:
    half = vae(torch.float16)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = decode_finite(half, z.half(), VaeTiling())
        assert got.dtype == torch.float16 and bool(torch.isfinite(got).all())
        full = vae(torch.float32)
        reference = full.decode(z)
        assert (got.float() - reference).abs().max() < 0.05  # float16 within rounding
        assert torch.equal(decode_finite(full, z, VaeTiling()), reference)


@pytest.mark.slow  # float16 convolutions on the CPU take seconds even for the tiny model
def test_a_float16_pipeline_on_the_cpu_makes_a_finite_image(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = save_checkpoint(
        tmp_path / "tiny.safetensors", random_checkpoint(TINY_TEST, seed=4), TINY_TEST
    )
    pipe = sd_core.load_pipeline(path)
    from sd_core.fast_path import FastPath, apply_fast_path

    apply_fast_path(pipe, FastPath(dtype="float16"))
    image = pipe.generate(GenerationParams("a cat", seed=1, steps=2)).images[0]
    pixels = np.asarray(image)
    assert pixels.std() > 0  # not one flat (black) colour
