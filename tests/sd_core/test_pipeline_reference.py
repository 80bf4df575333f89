"""Whole pipelines against diffusers: txt2img (every sampler), img2img and inpainting.

A random-weight checkpoint in the original layout at the tiny config is loaded by sd_core and,
through diffusers' own single-file converters, by diffusers. Same prompt, same per-image CPU
generators → the decoded images agree within 1e-4 (float32, CPU).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams
from sd_core.pipeline import StableDiffusionPipeline
from tests.clip_reference import hf_tokenizer
from tests.reference import (
    diffusers_models,
    diffusers_pipeline,
    random_checkpoint,
    reference_scheduler,
)

REFERENCE_SCHEDULERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
PROMPT = "a red circle in the top left on a blue background"
NEGATIVE = "blurry"


def scheduler(name: str):  # type: ignore[no-untyped-def]
    cls_name, extra = REFERENCE_SCHEDULERS[name]
    return reference_scheduler(cls_name, **extra)


def generators(seed: int, batch: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def assert_images_close(ours: torch.Tensor, reference: np.ndarray) -> None:
    """ours: (B, 3, H, W) in [-1, 1]; reference: diffusers' (B, H, W, 3) in [0, 1]."""
    ours_np = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ours_np.shape == reference.shape
    np.testing.assert_allclose(ours_np, reference, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("pipe")
    state = random_checkpoint(TINY_TEST, seed=1)
    path = save_checkpoint(tmp / "tiny.safetensors", state, TINY_TEST)
    ours = sd_core.load_pipeline(path)
    text_encoder, vae, unet = diffusers_models(state, TINY_TEST)
    inpaint_config = dataclasses.replace(
        TINY_TEST, unet=dataclasses.replace(TINY_TEST.unet, in_channels=9)
    )
    inpaint_state = random_checkpoint(inpaint_config, seed=2)
    inpaint_path = save_checkpoint(tmp / "inpaint.safetensors", inpaint_state, inpaint_config)
    return {
        "ours": ours,
        "reference": (text_encoder, vae, unet),
        "tokenizer": hf_tokenizer(tmp / "tokenizer"),
        "inpaint_ours": sd_core.load_pipeline(inpaint_path),
        "inpaint_reference": diffusers_models(inpaint_state, inpaint_config),
    }


def reference_pipeline(models, cls_name: str, sampler: str, inpaint: bool = False):  # type: ignore[no-untyped-def]
    text_encoder, vae, unet = models["inpaint_reference" if inpaint else "reference"]
    return diffusers_pipeline(
        text_encoder, vae, unet, models["tokenizer"], scheduler(sampler), cls_name
    )


def ours_images(
    pipe: StableDiffusionPipeline, init_image=None, mask=None, **kwargs
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    _, latents = pipe.generate_latents(GenerationParams(**kwargs), init_image=init_image, mask=mask)
    return pipe.decode_latents(latents)


def test_loaded_pipeline_describes_itself(models):
    pipe = models["ours"]
    assert pipe.config.native_size == 64
    assert len(pipe.model_hash) == 10
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"


@pytest.mark.parametrize("sampler", sorted(REFERENCE_SCHEDULERS))
def test_txt2img_equals_diffusers(models, sampler):
    steps, seed, batch = 4, 11, 2
    ours = ours_images(
        models["ours"],
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=seed,
        steps=steps,
        sampler=sampler,
        guidance=7.5,
        width=64,
        height=64,
        batch=batch,
    )
    reference = reference_pipeline(models, "StableDiffusionPipeline", sampler)(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=7.5,
        height=64,
        width=64,
        num_images_per_prompt=batch,
        generator=generators(seed, batch),
        output_type="np",
    ).images
    assert_images_close(ours, reference)


def test_txt2img_non_square_without_guidance(models):
    ours = ours_images(
        models["ours"],
        prompt=PROMPT,
        seed=5,
        steps=3,
        sampler="euler",
        guidance=1.0,
        width=96,
        height=64,
    )
    reference = reference_pipeline(models, "StableDiffusionPipeline", "euler")(
        prompt=PROMPT,
        num_inference_steps=3,
        guidance_scale=1.0,
        height=64,
        width=96,
        generator=generators(5, 1),
        output_type="np",
    ).images
    assert_images_close(ours, reference)


def test_batch_image_equals_its_seed_alone(models):
    pipe = models["ours"]
    batch = pipe.generate(
        GenerationParams(PROMPT, seed=20, steps=3, sampler="euler_a", batch=3)
    ).images
    alone = pipe.generate(GenerationParams(PROMPT, seed=21, steps=3, sampler="euler_a")).images
    assert [im.info["seed"] for im in batch] == [20, 21, 22]
    same = np.abs(np.asarray(batch[1], dtype=int) - np.asarray(alone[0], dtype=int))
    # Equal up to float round-off of batched vs single kernels: at most one level per pixel.
    assert same.max() <= 1
    other = np.abs(np.asarray(batch[0], dtype=int) - np.asarray(batch[1], dtype=int))
    assert other.mean() > 5


def init_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def mask_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    array = np.zeros((size[1], size[0]), dtype=np.uint8)
    array[16:48, 8:40] = 255
    return Image.fromarray(array)


@pytest.mark.parametrize(
    ("sampler", "strength"), [("euler", 0.6), ("ddim", 0.75), ("dpmpp_2m", 0.5), ("euler_a", 0.8)]
)
def test_img2img_equals_diffusers(models, sampler, strength):
    ours = ours_images(
        models["ours"],
        prompt=PROMPT,
        seed=3,
        steps=5,
        sampler=sampler,
        guidance=6.0,
        init_image=init_image(),
        strength=strength,
    )
    reference = reference_pipeline(models, "StableDiffusionImg2ImgPipeline", sampler)(
        prompt=PROMPT,
        image=init_image(),
        strength=strength,
        num_inference_steps=5,
        guidance_scale=6.0,
        generator=generators(3, 1),
        output_type="np",
    ).images
    assert_images_close(ours, reference)


@pytest.mark.parametrize(
    ("nine_channels", "sampler", "strength", "seed"),
    [
        (False, "euler", 1.0, 4),
        (False, "ddim", 0.75, 4),
        (False, "dpmpp_2m", 1.0, 4),
        (True, "euler", 1.0, 6),
        (True, "ddim", 0.7, 6),
    ],
    ids=["regular-euler", "regular-ddim", "regular-dpmpp_2m", "9ch-euler", "9ch-ddim"],
)
def test_inpaint_equals_diffusers(models, nine_channels, sampler, strength, seed):
    """A regular checkpoint (latent blending) and a 9-channel inpainting checkpoint."""
    ours = ours_images(
        models["inpaint_ours" if nine_channels else "ours"],
        prompt=PROMPT,
        seed=seed,
        steps=4,
        sampler=sampler,
        guidance=7.0,
        init_image=init_image(),
        mask=mask_image(),
        strength=strength,
    )
    reference = reference_pipeline(
        models, "StableDiffusionInpaintPipeline", sampler, inpaint=nine_channels
    )(
        prompt=PROMPT,
        image=init_image(),
        mask_image=mask_image(),
        strength=strength,
        num_inference_steps=4,
        guidance_scale=7.0,
        height=64,
        width=64,
        generator=generators(seed, 1),
        output_type="np",
    ).images
    assert_images_close(ours, reference)
