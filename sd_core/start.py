"""Stage 2 of a generation: where sampling begins.

`starting_latent` makes the starting latent of txt2img (scaled noise), img2img (the image's
latents noised to the first σ of its shortened schedule) or inpainting (either, plus the mask),
and `noise` the per-image standard-normal draws it and the stochastic samplers take. The noise
convention is sd_core/pipeline.py's: image i draws from its own CPU generator, in diffusers'
order. Used by `StableDiffusionPipeline` and, one job at a time, by sd_core/batched.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor

from sd_core.image_tensors import image_to_tensor, mask_to_tensor, slerp
from sd_core.inpaint import FILL, fill_image, fill_latents
from sd_core.params import GenerationParams

if TYPE_CHECKING:
    from sd_core.pipeline import StableDiffusionPipeline
    from sd_core.samplers import SamplerFn, SamplerSpec
    from sd_core.vae import AutoencoderKL


@dataclass(frozen=True)
class Start:
    """Where sampling begins, as `starting_latent` prepared it.

    x: (B, C, h, w) the starting latent in sigma space; sigmas: (M+1,) the σ's to walk;
    sample: the sampler function. For img2img/inpainting, init_latents (B, C, h, w) and
    start_noise keep the image's own latents and its noise (inpainting re-noises the kept area
    with them); blend_mask (1, 1, h, w) marks the area a regular checkpoint repaints;
    extra_channels (B, 5, h, w) are an inpainting checkpoint's mask and masked-image latents.
    """

    x: Tensor
    sigmas: Tensor
    sample: SamplerFn
    init_latents: Tensor | None = None
    start_noise: Tensor | None = None
    blend_mask: Tensor | None = None
    extra_channels: Tensor | None = None


def noise(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device
) -> Tensor:
    """One standard-normal draw per image, each from its own generator: (B, *shape[1:])."""
    draws = [torch.randn(shape, generator=g) for g in generators]
    return torch.cat(draws).to(device, non_blocking=True)  # no wait for the device


def starting_latent(
    pipe: StableDiffusionPipeline,
    p: GenerationParams,
    spec: SamplerSpec,
    generators: Sequence[torch.Generator],
    init_image: Image.Image | None,
    mask_image: Image.Image | None,
    vae: AutoencoderKL,
    given: tuple[Tensor | None, Tensor | None] = (None, None),
) -> Start:
    """The starting latent of txt2img (scaled noise), img2img (the image's latents noised
    to the first σ of its shortened schedule) or inpainting (either, plus the mask).

    Random draws per image, in diffusers' order: [image posterior], noise, [masked image
    posterior]; the variation seed's noise comes from its own generators.
    """
    assert p.width is not None and p.height is not None
    factor = pipe.config.vae.downsample_factor  # 8 for every SD v1 checkpoint
    h, w = p.height // factor, p.width // factor
    shape = (1, pipe.config.vae.embed_dim, h, w)
    # σ's stay on the CPU: samplers read them as Python floats, never waiting for the device.
    sigmas = spec.sigmas(pipe.schedule, p.steps, p.scheduler).to(torch.float32)
    sample = spec.fn
    inpaint_9ch = pipe.config.unet.in_channels == 9
    image = None if init_image is None else image_to_tensor(init_image, p.width, p.height)
    if image is not None and mask_image is not None and p.inpainting_fill == FILL:
        image = fill_image(image, mask_to_tensor(mask_image, p.width, p.height))
    init_latents, image = given[0], (given[1] if image is None else image)
    if image is not None and not (inpaint_9ch and p.strength >= 1.0):
        init_latents = pipe.encode_image(image, generators, vae)
    if init_latents is not None:
        init_latents = init_latents.to(pipe.device, torch.float32)
    start_noise = noise(generators, shape, pipe.device)
    if p.variation_seed is not None and p.variation_strength > 0:
        # Image i blends towards the noise of variation seed + i (AUTOMATIC1111's subseed).
        others = [torch.Generator("cpu").manual_seed(p.variation_seed + i) for i in range(p.batch)]
        start_noise = slerp(p.variation_strength, start_noise, noise(others, shape, pipe.device))
    if init_latents is not None and mask_image is not None:  # latent noise or nothing
        small = mask_to_tensor(mask_image, p.width, p.height)
        small = torch.nn.functional.interpolate(small, size=(h, w)).to(pipe.device)
        init_latents = fill_latents(init_latents, small, start_noise, p.inpainting_fill)
    # img2img always starts from the noised image; inpainting at full strength from noise.
    if init_latents is not None and (mask_image is None or p.strength < 1.0):
        if p.strength > 0:
            plan = spec.img2img(pipe.schedule, p.steps, p.strength, p.scheduler)
            sigmas, sample = plan.sigmas.to(torch.float32), plan.fn
        else:  # nothing to denoise: the image's own latents
            sigmas = sigmas[-1:]
        x = init_latents + start_noise * sigmas[0]
    else:
        x = start_noise * spec.initial_noise_scale(sigmas)
    if p.eta is not None and spec.eta_settable:  # its own otherwise (`resolve` checked)
        sample = functools.partial(sample, eta=p.eta)
    if mask_image is None:
        return Start(x, sigmas, sample, init_latents, start_noise)
    assert image is not None
    mask = mask_to_tensor(mask_image, p.width, p.height)
    latent_mask = torch.nn.functional.interpolate(mask, size=(h, w)).to(pipe.device)
    if not inpaint_9ch:
        return Start(x, sigmas, sample, init_latents, start_noise, blend_mask=latent_mask)
    masked_latents = pipe.encode_image(image * (mask < 0.5), generators, vae)
    extra = torch.cat([latent_mask.expand(p.batch, -1, -1, -1), masked_latents], dim=1)
    return Start(x, sigmas, sample, init_latents, start_noise, extra_channels=extra)
