"""The hires fix: a hires image equals its two passes run by hand through the engine, its
sizes, its infotext keys written and read back, and what it refuses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.hires import (
    LATENT_MODES,
    hires_from_infotext,
    hires_infotext,
    hires_size,
    second_pass_params,
    upscale_latents,
    upscale_pixels,
)
from sd_core.image_tensors import tensor_to_images
from sd_core.infotext import parse_infotext
from sd_core.params import GenerationParams, InvalidParam
from sd_core.pipeline import GenerationHooks

BASE = {"prompt": "a red house", "negative_prompt": "fog", "seed": 7, "steps": 3}


@pytest.fixture(scope="module")
def pipe() -> Any:
    return sd_core.load_pipeline()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("mode", ["Latent", "Latent (bicubic antialiased)"])
def test_latent_hires_equals_the_two_passes_by_hand(pipe: Any, mode: str) -> None:
    params = GenerationParams(
        **BASE, batch=2, hires=True, hires_scale=1.5, hires_upscaler=mode, hires_steps=2,
        hires_strength=0.6, hires_prompt="a blue house",
    )  # fmt: skip
    steps: list[tuple[int, int]] = []
    hooks = GenerationHooks(on_step=lambda i, n, _x: steps.append((i, n)))
    result = pipe.generate(params, hooks=hooks)
    assert [im.size for im in result.images] == [(96, 96), (96, 96)]
    assert steps[-1][0] == steps[-1][1] == len(steps)  # both passes counted as one run

    first, latents = pipe.generate_latents(replace(params, hires=False))
    cover, target = hires_size(first)
    assert cover == target == (96, 96)
    second = GenerationParams(
        **{**BASE, "prompt": "a blue house", "steps": 2}, batch=2, width=96, height=96,
        strength=0.6,
    )  # fmt: skip
    done, final = pipe.generate_latents(
        second,
        init_latents=upscale_latents(
            latents, mode, cover, target, factor=pipe.config.vae.downsample_factor
        ),
    )
    assert second_pass_params(result.params) == replace(done, hires_scale=1.5, hires_steps=2,
        hires_strength=0.6, hires_prompt="a blue house", hires_upscaler=mode)  # fmt: skip
    by_hand = tensor_to_images(pipe.decode_latents(final))
    for got, want in zip(result.images, by_hand, strict=True):
        assert np.array_equal(_pixels(got), _pixels(want))


def test_pixel_hires_equals_txt2img_resize_then_img2img(pipe: Any) -> None:
    params = GenerationParams(
        **BASE, hires=True, hires_width=128, hires_height=96, hires_upscaler="Lanczos",
        hires_strength=0.5,
    )  # fmt: skip
    result = pipe.generate(params)
    assert result.images[0].size == (128, 96)

    first = pipe.generate(GenerationParams(**BASE)).images[0]
    cover, target = hires_size(result.params)
    assert (cover, target) == ((128, 128), (128, 96))  # cover 2× then crop the centre
    upscaled = upscale_pixels(first, "Lanczos", cover, target)
    by_hand = pipe.generate(
        GenerationParams(**BASE, width=128, height=96, strength=0.5), init_image=upscaled
    ).images[0]
    assert np.array_equal(_pixels(result.images[0]), _pixels(by_hand))


def test_a_model_upscaler_plugs_in_through_the_pipeline(pipe: Any) -> None:
    asked: list[tuple[str, float]] = []

    def upscale(image: Image.Image, name: str, scale: float) -> Image.Image:
        asked.append((name, scale))
        size = (round(image.width * scale), round(image.height * scale))
        return image.resize(size, Image.Resampling.BICUBIC)

    params = GenerationParams(**BASE, hires=True, hires_upscaler="R-ESRGAN 4x+", hires_steps=1)
    with pytest.raises(InvalidParam, match="hires_upscaler"):
        pipe.generate(params)
    pipe.upscale_image = upscale
    try:
        assert pipe.generate(params).images[0].size == (128, 128)
    finally:
        pipe.upscale_image = None
    assert asked == [("R-ESRGAN 4x+", 2.0)]


def test_hires_sizes_and_limits() -> None:
    p = GenerationParams("x", width=512, height=768, hires=True).check()
    assert hires_size(replace(p, hires_scale=1.3)) == ((664, 998 // 8 * 8),) * 2
    assert hires_size(replace(p, hires_width=1024)) == ((1024, 1536),) * 2
    assert hires_size(replace(p, hires_height=1024)) == ((680, 1024),) * 2
    assert hires_size(replace(p, hires_width=1024, hires_height=1024)) == (
        (1024, 1536),
        (1024, 1024),
    )
    with pytest.raises(InvalidParam, match="2048") as error:
        hires_size(replace(p, hires_scale=3.0))
    assert error.value.field == "hires_scale"
    for bad in ({"hires_scale": 5}, {"hires_steps": -1}, {"hires_strength": 2}, {"hires": 1}):
        with pytest.raises(InvalidParam) as error:
            GenerationParams("x", **bad).check()  # type: ignore[arg-type]
        assert error.value.field == next(iter(bad))


def test_hires_is_for_txt2img_only(pipe: Any) -> None:
    with pytest.raises(InvalidParam, match="txt2img"):
        pipe.generate(GenerationParams(**BASE, hires=True), init_image=Image.new("RGB", (64, 64)))


def test_infotext_keys_are_written_and_read_back(pipe: Any) -> None:
    params = GenerationParams(
        **BASE, hires=True, hires_scale=1.5, hires_steps=2, hires_strength=0.45,
        hires_upscaler="Latent (nearest)", hires_sampler="euler", hires_negative_prompt="rain",
    )  # fmt: skip
    result = pipe.generate(params)
    text = result.images[0].info["parameters"]
    assert "Denoising strength: 0.45, " in text
    assert "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent (nearest), " in text
    assert "Hires sampler: Euler, Hires negative prompt: rain" in text
    parsed = parse_infotext(text)
    fields = hires_from_infotext(parsed.extra)
    assert fields == {
        "hires": True, "hires_scale": 1.5, "hires_steps": 2, "hires_upscaler": "Latent (nearest)",
        "hires_sampler": "Euler", "hires_negative_prompt": "rain",
    }  # fmt: skip
    again = replace(result.params, **fields, hires_strength=parsed.denoising_strength)
    assert hires_infotext(pipe.resolve(again)) == hires_infotext(result.params)


def test_hires_off_writes_nothing() -> None:
    assert hires_infotext(GenerationParams("x", hires_steps=5)) == {}
    assert hires_from_infotext({"Clip skip": "2"}) == {}
    resize = hires_infotext(GenerationParams("x", hires=True, hires_height=640))
    assert resize == {"Hires resize": "0x640", "Hires upscaler": "Latent"}
    assert hires_from_infotext(resize) == {
        "hires": True, "hires_width": None, "hires_height": 640, "hires_upscaler": "Latent"
    }  # fmt: skip


def test_every_latent_mode_keeps_a_constant_latent() -> None:
    latents = torch.full((1, 4, 8, 8), 0.5)
    for mode in LATENT_MODES:
        up = upscale_latents(latents, mode, (128, 96), (96, 96), factor=8)
        assert up.shape == (1, 4, 12, 12)
        assert torch.allclose(up, latents[:, :, :1, :1].expand_as(up)), mode


def test_hires_schedule_type_and_cfg_run_the_second_pass(pipe: Any) -> None:
    params = GenerationParams(
        **BASE, sampler="euler", hires=True, hires_scale=1.5, hires_steps=4, hires_strength=0.6,
        hires_scheduler="Karras", hires_guidance=3.0,
    )  # fmt: skip
    result = pipe.generate(params)
    assert (result.params.hires_scheduler, result.params.hires_guidance) == ("karras", 3.0)

    first, latents = pipe.generate_latents(replace(params, hires=False))
    cover, target = hires_size(first)
    second = GenerationParams(
        **{**BASE, "steps": 4}, sampler="euler", scheduler="karras", guidance=3.0, width=96,
        height=96, strength=0.6,
    )  # fmt: skip
    _, final = pipe.generate_latents(
        second,
        init_latents=upscale_latents(
            latents, "Latent", cover, target, factor=pipe.config.vae.downsample_factor
        ),
    )
    by_hand = tensor_to_images(pipe.decode_latents(final))[0]
    assert np.array_equal(_pixels(result.images[0]), _pixels(by_hand))
    # Each of the two changes the image (with 2 steps Karras' σ's equal the sampler's own).
    for plain in ({"hires_scheduler": None}, {"hires_guidance": None}):
        other = pipe.generate(replace(params, **plain)).images[0]
        assert np.abs(_pixels(other) - _pixels(result.images[0])).max() > 0, plain


def test_hires_schedule_type_defaults_to_the_first_pass_and_automatic_drops_it() -> None:
    p = GenerationParams("x", sampler="euler", scheduler="karras", guidance=5.0, hires=True)
    p = p.resolve(64, "euler_a")
    assert (second_pass_params(p).scheduler, second_pass_params(p).guidance) == ("karras", 5.0)
    automatic = replace(p, hires_scheduler="Automatic").check()
    assert automatic.hires_scheduler == "automatic"
    assert second_pass_params(automatic).scheduler is None
    assert hires_infotext(automatic)["Hires schedule type"] == "Automatic"
    assert "Hires schedule type" not in hires_infotext(replace(p, hires_scheduler="karras"))


def test_hires_schedule_type_and_cfg_are_written_and_read_back(pipe: Any) -> None:
    params = GenerationParams(
        **BASE, sampler="euler", hires=True, hires_steps=1, hires_scheduler="exponential",
        hires_guidance=4.5,
    )  # fmt: skip
    text = pipe.generate(params).images[0].info["parameters"]
    assert "Hires schedule type: Exponential, Hires CFG Scale: 4.5" in text
    fields = hires_from_infotext(parse_infotext(text).extra)
    assert (fields["hires_scheduler"], fields["hires_guidance"]) == ("exponential", 4.5)
    assert "Hires CFG Scale" not in hires_infotext(replace(params, hires_guidance=7.0).check())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hires_scheduler": "beta"}, "hires_scheduler"),
        ({"hires_guidance": 31}, "hires_guidance"),
        ({"hires_sampler": "ddim", "hires_scheduler": "karras"}, "hires_scheduler"),
        ({"hires_sampler": "ddim", "scheduler": "karras"}, "hires_scheduler"),
    ],
)
def test_a_hires_schedule_type_or_cfg_it_cannot_run_names_its_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidParam) as error:
        GenerationParams("x", sampler="euler", hires=True, **fields).resolve(64, "euler_a")
    assert error.value.field == field
