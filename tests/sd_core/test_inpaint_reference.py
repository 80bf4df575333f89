""" "Only masked" inpainting against diffusers' `padding_mask_crop`, its counterpart: the same
crop box, the same crop sampled, the same paste back over the init image."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from sd_core.inpaint import crop_box
from sd_core.params import GenerationParams
from tests.sd_core.test_pipeline_reference import (  # noqa: F401 (the models fixture)
    PROMPT,
    generators,
    init_image,
    models,
    reference_pipeline,
)


def small_mask(left: int, top: int, right: int, bottom: int, size: int = 64) -> Image.Image:
    array = np.zeros((size, size), dtype=np.uint8)
    array[top:bottom, left:right] = 255
    return Image.fromarray(array)


@pytest.mark.parametrize(
    ("box", "pad", "size"),
    [
        ((24, 20, 40, 36), 8, (64, 64)),
        ((24, 20, 45, 36), 3, (64, 48)),
        ((2, 30, 10, 61), 5, (96, 64)),
        ((0, 0, 64, 10), 0, (64, 64)),
        ((50, 50, 64, 64), 20, (64, 128)),
    ],
)
def test_crop_box_equals_diffusers(box: tuple[int, int, int, int], pad: int, size: Any) -> None:
    mask = small_mask(*box)
    expected = VaeImageProcessor.get_crop_region(mask, size[0], size[1], pad=pad)
    assert crop_box(mask, pad, *size) == tuple(expected)


@pytest.mark.parametrize(("sampler", "strength"), [("euler", 1.0), ("ddim", 0.75)])
def test_only_masked_equals_diffusers_padding_mask_crop(
    models: Any,  # noqa: F811
    sampler: str,
    strength: float,
) -> None:
    mask = small_mask(24, 20, 40, 36)
    settings: dict[str, Any] = dict(seed=4, steps=4, sampler=sampler, guidance=7.0)
    ours = models["ours"].generate(
        GenerationParams(PROMPT, **settings, width=64, height=64, strength=strength,
                         inpaint_full_res=True, inpaint_full_res_padding=8),
        init_image=init_image(),
        mask=mask,
    )  # fmt: skip
    reference = reference_pipeline(models, "StableDiffusionInpaintPipeline", sampler)(
        prompt=PROMPT,
        image=init_image(),
        mask_image=mask,
        strength=strength,
        num_inference_steps=4,
        guidance_scale=7.0,
        height=64,
        width=64,
        padding_mask_crop=8,
        generator=generators(4, 1),
        output_type="pil",
    ).images
    got = np.asarray(ours.images[0], dtype=int)
    expected = np.asarray(reference[0], dtype=int)
    assert np.abs(got - expected).max() <= 1
    outside = np.asarray(mask) == 0
    assert np.array_equal(got[outside], np.asarray(init_image(), dtype=int)[outside])
