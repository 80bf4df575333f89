"""How close an image of a batch is to the same seed made alone (docs/architecture.md, "Seeds
and noise"): the built-in model, float32 on the CPU, a batch of 4 against each image alone.

Every image has its own noise generator, so the two runs differ only in the UNet and VAE
kernels' rounding on a batch of 8 (4 images, CFG) against a batch of 2. Measured over five
samplers (Euler a, Euler, DPM++ 2M, DDIM, DPM++ SDE), two prompts, seeds 0 and 1000 and 20
steps, the worst case was this one: image 1 of the batch, DPM++ 2M, latents 9.2e-5 apart
(their values reach 2.3) and pixels at most one level apart.
"""

from __future__ import annotations

import numpy as np
import pytest

import sd_core
from sd_core.image_tensors import tensor_to_images
from sd_core.params import GenerationParams

# The promise docs/architecture.md makes: twice the worst latent difference measured.
LATENT_BOUND = 2e-4
PIXEL_BOUND = 1  # levels of 255


@pytest.fixture(scope="module")
def pipe() -> sd_core.StableDiffusionPipeline:
    return sd_core.load_pipeline()  # the built-in model, float32 on the CPU


def test_a_batch_image_made_alone_is_within_the_documented_bound(
    pipe: sd_core.StableDiffusionPipeline,
) -> None:
    prompt = "a large red circle on a blue background"
    batch = GenerationParams(prompt, seed=1000, batch=4, sampler="dpmpp_2m", steps=20)
    _, batch_latents = pipe.generate_latents(batch)
    batch_images = tensor_to_images(pipe.decode_latents(batch_latents))
    latent_diffs, pixel_diffs = [], []
    for i in range(4):
        alone = GenerationParams(prompt, seed=1000 + i, sampler="dpmpp_2m", steps=20)
        _, latents = pipe.generate_latents(alone)
        (image,) = tensor_to_images(pipe.decode_latents(latents))
        latent_diffs.append(float((batch_latents[i] - latents[0]).abs().max()))
        pixel = np.abs(np.asarray(image, dtype=int) - np.asarray(batch_images[i], dtype=int))
        pixel_diffs.append(int(pixel.max()))
    assert max(latent_diffs) <= LATENT_BOUND, latent_diffs
    assert max(pixel_diffs) <= PIXEL_BOUND, pixel_diffs
