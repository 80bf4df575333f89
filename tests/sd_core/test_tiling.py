"""Seamless tiling: circular padding in the UNet and the VAE for the run, and put back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.infotext import parse_infotext
from sd_core.params import GenerationParams, InvalidParam
from sd_core.tiling import circular_padding

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def pipe() -> sd_core.StableDiffusionPipeline:
    return sd_core.load_pipeline()


def seam_ratio(image: Image.Image) -> float:
    """How much the pixels change across the wrap-around (right edge → left edge, bottom →
    top) against across any neighbouring pair inside: ≈ 1 for an image that tiles."""
    a = np.asarray(image).astype(float)
    wrap = np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean()
    inner = np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean()
    return float(wrap / inner)


def test_tiled_images_continue_across_their_edges(pipe: sd_core.StableDiffusionPipeline) -> None:
    settings = {"seed": 1, "steps": 4, "batch": 4, "sampler": "euler"}
    before = pipe.generate(GenerationParams(PROMPT, **settings)).images
    tiled = pipe.generate(GenerationParams(PROMPT, tiling=True, **settings))
    after = pipe.generate(GenerationParams(PROMPT, **settings)).images

    plain_ratio = np.mean([seam_ratio(image) for image in before])
    tiled_ratio = np.mean([seam_ratio(image) for image in tiled.images])
    # Measured on the built-in model: ≈ 4.4 without tiling, ≈ 1.1 with it.
    assert tiled_ratio < 1.6 < 2.5 < plain_ratio, (tiled_ratio, plain_ratio)
    assert parse_infotext(tiled.images[0].info["parameters"]).extra["Tiling"] == "True"
    assert "Tiling" not in before[0].info["parameters"]
    # The cached model got its own padding back: the same images as before.
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after, strict=True)
    )


def test_circular_padding_makes_the_decoder_shift_equivariant(
    pipe: sd_core.StableDiffusionPipeline,
) -> None:
    """On a torus a shift of the latent is the same shift of the image: no edge exists."""
    latent = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    shifted = torch.roll(latent, shifts=(3, 5), dims=(2, 3))
    with torch.inference_mode():
        with circular_padding(pipe.vae) as switched:
            image = pipe.decode_latents(latent)
            moved = pipe.decode_latents(shifted)
        plain = pipe.decode_latents(latent)
        plain_moved = pipe.decode_latents(shifted)
    assert switched > 0
    f = pipe.config.vae.downsample_factor  # the latent shift (3, 5) in pixels
    expected = torch.roll(image, shifts=(3 * f, 5 * f), dims=(2, 3))
    assert torch.allclose(moved, expected, atol=1e-4)
    assert not torch.allclose(
        plain_moved, torch.roll(plain, shifts=(3 * f, 5 * f), dims=(2, 3)), atol=1e-2
    )
    assert all(
        layer.padding_mode == "zeros"
        for layer in pipe.vae.modules()
        if isinstance(layer, torch.nn.Conv2d)
    )


def test_tiling_must_be_a_bool() -> None:
    with pytest.raises(InvalidParam, match="tiling must be true or false"):
        GenerationParams("x", tiling="yes").check()  # type: ignore[arg-type]
