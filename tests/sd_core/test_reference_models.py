"""sd_core's CLIP, VAE and UNet compute what transformers/diffusers compute from the same weights.

A random checkpoint in the original layout is loaded into both (diffusers through its own
single-file converters), and outputs must agree to 1e-4 relative:
max |ours - reference| <= 1e-4 * max(1, max |reference|). The references use explicit-softmax
attention, so they do not share sd_core's SDPA kernel.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from sd_core.config import SD_V1, TINY_TEST, ModelConfig
from sd_core.unet import UNetModel
from sd_core.vae import AutoencoderKL
from tests.reference import (
    assert_matches,
    diffusers_models,
    diffusers_unet,
    diffusers_vae,
    random_checkpoint,
    random_part,
    sd_core_models,
    sd_core_part,
)

START, END = 49406, 49407  # <|startoftext|>, <|endoftext|> (also SD's padding)


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny models run many small ops; on a shared 2-core machine torch's intra-op threads then
    wait on each other (measured here: 0.2 s vs 1.3-5.6 s per tiny UNet call). Full-size tests
    keep the default thread count."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    checkpoint = random_checkpoint(TINY_TEST, seed=0)
    text_encoder, vae, unet = diffusers_models(checkpoint, TINY_TEST)
    clip, autoencoder, unet_model = sd_core_models(checkpoint, TINY_TEST)
    return {
        "ref_clip": text_encoder,
        "ref_vae": vae,
        "ref_unet": unet,
        "clip": clip,
        "vae": autoencoder,
        "unet": unet_model,
    }


def padded_prompts(lengths: list[int], generator: torch.Generator) -> torch.Tensor:
    """(B, 77) ids like SD's tokenizer makes: start, `length` random words, end, end-padding."""
    ids = torch.full((len(lengths), 77), END, dtype=torch.int64)
    for row, length in enumerate(lengths):
        ids[row, 0] = START
        ids[row, 1 : 1 + length] = torch.randint(0, START, (length,), generator=generator)
    return ids


def test_clip_last_hidden_state(models: dict[str, Any]) -> None:
    ids = padded_prompts([5, 0, 75], torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = models["clip"](ids)
        reference = models["ref_clip"](input_ids=ids).last_hidden_state
    assert ours.shape == (3, 77, TINY_TEST.clip.width)
    assert reference.std() > 0.1  # a non-trivial output, so agreement means something
    assert_matches(ours, reference)


@pytest.mark.parametrize("clip_skip", [2, 3, 12])
def test_clip_skip_is_an_earlier_hidden_state_through_the_final_layer_norm(
    models: dict[str, Any], clip_skip: int
) -> None:
    """A1111's "Clip skip" N: transformers' hidden_states[-N] (the output N - 1 layers before
    the last), then the model's final layer norm."""
    ids = padded_prompts([7, 40], torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = models["clip"](ids, clip_skip=clip_skip)
        out = models["ref_clip"](input_ids=ids, output_hidden_states=True)
        reference = models["ref_clip"].final_layer_norm(out.hidden_states[-clip_skip])
        last = models["clip"](ids)
    assert_matches(ours, reference)
    assert (ours - last).abs().max() > 1e-3  # it really is another layer's output
    with pytest.raises(ValueError, match="clip_skip must be from 1 to 12"):
        models["clip"](ids, clip_skip=13)


def test_clip_rejects_too_long_input(models: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="out of range"):
        models["clip"](torch.zeros((1, 78), dtype=torch.int64))


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96)])
def test_vae_encode_mean_and_logvar(models: dict[str, Any], height: int, width: int) -> None:
    image = torch.rand((2, 3, height, width), generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        mean, logvar = models["vae"].encode(image)
        dist = models["ref_vae"].encode(image).latent_dist
    factor = TINY_TEST.vae.downsample_factor
    assert mean.shape == logvar.shape == (2, 4, height // factor, width // factor)
    assert dist.mean.std() > 0.1
    assert_matches(mean, dist.mean)
    assert_matches(logvar, dist.logvar)


@pytest.mark.parametrize(("height", "width"), [(8, 8), (8, 12)])
def test_vae_decode(models: dict[str, Any], height: int, width: int) -> None:
    latents = torch.randn((2, 4, height, width), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = models["vae"].decode(latents)
        reference = models["ref_vae"].decode(latents).sample
    assert ours.shape == (2, 3, 8 * height, 8 * width)
    assert reference.std() > 0.1
    assert_matches(ours, reference)


@pytest.mark.parametrize(
    ("height", "width", "timesteps"),
    [
        (8, 12, torch.tensor([999.0, 1.0])),
        (8, 12, torch.tensor([12.34, 500.5])),  # fractional, as Karras-style samplers produce
        (8, 8, torch.tensor([981, 0], dtype=torch.int64)),
        (9, 13, torch.tensor([250.75, 40.0])),  # latent sides that do not halve evenly
    ],
    ids=["8x12-float", "8x12-fractional", "8x8-int64", "9x13-fractional"],
)
def test_unet_noise_prediction(
    models: dict[str, Any], height: int, width: int, timesteps: torch.Tensor
) -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.randn((2, 4, height, width), generator=generator)
    context = torch.randn((2, 77, TINY_TEST.unet.context_dim), generator=generator)
    with torch.inference_mode():
        ours = models["unet"](x, timesteps, context)
        reference = models["ref_unet"](x, timesteps, encoder_hidden_states=context).sample
    assert ours.shape == x.shape
    assert reference.std() > 0.1
    assert_matches(ours, reference)


def test_unet_timesteps_change_the_output(models: dict[str, Any]) -> None:
    """Guards the comparison above: the timestep path is live, so a wrong embedding would show."""
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    context = torch.randn((1, 77, TINY_TEST.unet.context_dim))
    with torch.inference_mode():
        a = models["unet"](x, torch.tensor([10.0]), context)
        b = models["unet"](x, torch.tensor([10.5]), context)
    assert (a - b).abs().max() > 1e-3


def test_inpainting_unet_matches_diffusers() -> None:
    config = dataclasses.replace(TINY_TEST, unet=dataclasses.replace(TINY_TEST.unet, in_channels=9))
    checkpoint = random_part("unet", config, seed=7)
    ours = sd_core_part("unet", checkpoint, config)
    reference = diffusers_unet(checkpoint, config)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn((2, 9, 8, 12), generator=generator)
    context = torch.randn((2, 77, config.unet.context_dim), generator=generator)
    timesteps = torch.tensor([700.25, 3.0])
    with torch.inference_mode():
        out = ours(x, timesteps, context)
        expected = reference(x, timesteps, encoder_hidden_states=context).sample
    assert out.shape == (2, 4, 8, 12)
    assert_matches(out, expected)


def test_unet_rejects_wrong_channel_count(models: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="x must have shape"):
        models["unet"](torch.zeros(1, 9, 8, 8), torch.tensor([1.0]), torch.zeros(1, 77, 32))


# --- full size -----------------------------------------------------------------------------------


def _full_size_check(part: str, config: ModelConfig) -> None:
    # Every weight at full size, on 256×256 images (32×32 latents): every attention and
    # resampling path runs as at 512×512, at a quarter of the compute.
    checkpoint = random_part(part, config, seed=11)
    generator = torch.Generator().manual_seed(12)
    with torch.inference_mode():
        if part == "unet":
            x = torch.randn((2, 4, 32, 32), generator=generator)
            context = torch.randn((2, 77, config.unet.context_dim), generator=generator)
            timesteps = torch.tensor([801.0, 37.5])
            reference = diffusers_unet(checkpoint, config, sdpa=True)
            expected = reference(x, timesteps, encoder_hidden_states=context).sample
            del reference
            gc.collect()
            ours = sd_core_part("unet", checkpoint, config)
            assert isinstance(ours, UNetModel)
            actual = ours(x, timesteps, context)
        else:
            z = torch.randn((1, 4, 32, 32), generator=generator)
            reference = diffusers_vae(checkpoint, config, sdpa=True)
            expected = reference.decode(z).sample
            del reference
            gc.collect()
            ours = sd_core_part("vae", checkpoint, config)
            assert isinstance(ours, AutoencoderKL)
            actual = ours.decode(z)
    assert expected.std() > 0.1
    assert_matches(actual, expected)


@pytest.mark.slow
def test_full_size_unet_matches_diffusers() -> None:
    _full_size_check("unet", SD_V1)


@pytest.mark.slow
def test_full_size_vae_decode_matches_diffusers() -> None:
    _full_size_check("vae", SD_V1)
