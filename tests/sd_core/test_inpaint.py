"""Inpainting with AUTOMATIC1111's semantics (sd_core/inpaint.py): the unmasked pixels come
back exactly, mask blur / invert, the four "masked content" fills, "only masked"."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.image_tensors import image_to_tensor, mask_to_tensor
from sd_core.inpaint import crop_box, fill_image, fill_latents, prepare, process_mask
from sd_core.outpaint import Margins, outpaint, outpaint_inputs
from sd_core.params import GenerationParams, InvalidParam
from sd_core.samplers import get_sampler
from sd_core.start import starting_latent
from tests.reference import random_checkpoint

SIZE = 64


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("inpaint") / "tiny.safetensors"
    save_checkpoint(path, random_checkpoint(TINY_TEST, seed=3), TINY_TEST)
    return sd_core.load_pipeline(path)


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def square_mask(left: int = 32, top: int = 8, right: int = 48, bottom: int = 24) -> Image.Image:
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[top:bottom, left:right] = 255
    return Image.fromarray(a)


def params(**settings: Any) -> GenerationParams:
    base: dict[str, Any] = dict(seed=11, steps=2, width=SIZE, height=SIZE, sampler="euler")
    return GenerationParams("a cat", **{**base, **settings})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


@pytest.mark.parametrize("batch", [1, 2])
def test_unmasked_pixels_equal_the_input_exactly(pipe: Any, batch: int) -> None:
    init, mask = picture(), square_mask()
    result = pipe.generate(params(batch=batch), init_image=init, mask=mask)
    keep = np.asarray(mask)[..., None] == 0
    for image in result.images:
        got = pixels(image)
        assert np.array_equal(np.where(keep, got, 0), np.where(keep, pixels(init), 0))
        assert np.abs(got - pixels(init))[~keep[..., 0]].mean() > 10  # the mask was repainted


def test_mask_blur_feathers_and_invert_swaps_the_areas(pipe: Any) -> None:
    init, mask = picture(1), square_mask()
    processed = np.asarray(process_mask(mask, params(mask_blur=4)))
    assert 0 < processed[16, 29] < 255 and processed[16, 40] > 200 and processed[60, 5] == 0
    result = pipe.generate(params(mask_blur=4), init_image=init, mask=mask)
    got, before = pixels(result.images[0]), pixels(init)
    assert np.array_equal(got[48:, :], before[48:, :])  # far from the mask: untouched
    assert not np.array_equal(got[16, 28:32], before[16, 28:32])  # the feathered edge blends
    inverted = pipe.generate(params(inpainting_mask_invert=True), init_image=init, mask=mask)
    got = pixels(inverted.images[0])
    assert np.array_equal(got[8:24, 32:48], before[8:24, 32:48])  # white is kept now
    assert np.abs(got[40:, :] - before[40:, :]).mean() > 10


def _start(pipe: Any, p: GenerationParams, init: Image.Image, mask: Image.Image) -> Any:
    p = pipe.resolve(p)
    spec = get_sampler(p.sampler)
    generators = [torch.Generator("cpu").manual_seed(s) for s in p.seeds()]
    return starting_latent(pipe, p, spec, generators, init, mask, pipe.vae_for(p))


@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_each_masked_content_gives_its_initial_latent(pipe: Any, fill: int) -> None:
    init, mask = picture(2), square_mask()
    p = params(inpainting_fill=fill, strength=0.6)
    start = _start(pipe, p, init, mask)
    latent_mask = torch.nn.functional.interpolate(mask_to_tensor(mask, SIZE, SIZE), size=(8, 8))
    # What "original" encodes: the picture's own latents, from a fresh generator of the seed.
    image = image_to_tensor(init, SIZE, SIZE)
    if fill == 0:
        image = fill_image(image, mask_to_tensor(mask, SIZE, SIZE))
    encoded = pipe.encode_image(image, [torch.Generator("cpu").manual_seed(11)], pipe.vae)
    expected = {
        0: encoded,
        1: encoded,
        2: encoded * (1 - latent_mask) + start.start_noise * latent_mask,
        3: encoded * (1 - latent_mask),
    }[fill]
    torch.testing.assert_close(start.init_latents, expected)
    torch.testing.assert_close(start.x, expected + start.start_noise * start.sigmas[0])
    if fill != 1:
        original = _start(pipe, replace(p, inpainting_fill=1), init, mask).init_latents
        assert not torch.allclose(start.init_latents, original)


def test_fill_paints_the_mask_with_the_colours_around_it() -> None:
    image = torch.full((1, 3, 32, 32), -1.0)
    image[:, 0] = 1.0  # red all over
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    holed = torch.where(mask > 0, torch.zeros_like(image), image)  # grey in the hole
    torch.testing.assert_close(fill_image(holed, mask), image)
    noise, latents = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    small = torch.zeros(1, 1, 4, 4)
    assert torch.equal(fill_latents(latents, small, noise, 2), latents)


def test_crop_box_pads_and_keeps_the_aspect_ratio() -> None:
    mask = square_mask(32, 8, 48, 24)
    assert crop_box(mask, 0, 64, 64) == (32, 8, 48, 24)
    assert crop_box(mask, 4, 64, 64) == (28, 4, 52, 28)
    assert crop_box(mask, 4, 64, 32) == (16, 4, 64, 28)  # 2:1, pushed inside the picture
    assert crop_box(Image.new("L", (64, 64)), 4, 64, 64) is None


def test_only_masked_inpaints_the_crop_and_pastes_it_back_in_place(pipe: Any) -> None:
    init, mask = picture(3), square_mask()
    p = pipe.resolve(params(inpaint_full_res=True, inpaint_full_res_padding=4))
    prepared = prepare(init, mask, p)
    assert prepared.crop == (28, 4, 52, 28)
    box_view = init.crop(prepared.crop).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels(prepared.image), pixels(box_view))
    assert np.asarray(prepared.mask)[16:48, 16:48].min() > 240  # the square, scaled up
    red = Image.new("RGB", (SIZE, SIZE), (255, 0, 0))
    pasted = pixels(prepared.paste_back([red])[0])
    assert (pasted[8:24, 32:48] == (255, 0, 0)).all()
    outside = np.asarray(mask) == 0
    assert np.array_equal(pasted[outside], pixels(init)[outside])
    result = pipe.generate(p, init_image=init, mask=mask)
    got = pixels(result.images[0])
    assert np.array_equal(got[outside], pixels(init)[outside])
    whole = pixels(pipe.generate(params(), init_image=init, mask=mask).images[0])
    assert not np.array_equal(got, whole)  # the crop was sampled, not the whole picture
    text = result.images[0].info["parameters"]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 4" in text


def test_infotext_names_the_inpainting_settings(pipe: Any) -> None:
    p = params(mask_blur=4, inpainting_fill=0, inpainting_mask_invert=True)
    text = pipe.generate(p, init_image=picture(), mask=square_mask()).images[0].info["parameters"]
    for key in ("Mask blur: 4", "Masked content: fill", "Mask mode: Inpaint not masked"):
        assert key in text
    assert "Inpaint area" not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("mask_blur", 65),
        ("inpainting_fill", 4),
        ("inpaint_full_res", 1),
        ("inpaint_full_res_padding", -1),
    ],
)
def test_limits(name: str, value: Any) -> None:
    with pytest.raises(InvalidParam) as error:
        params(**{name: value}).check()
    assert error.value.field == name


def test_outpaint_margins_snap_to_the_grid_and_mask_the_new_area() -> None:
    assert Margins(left=5).snapped(64, 64) == Margins(left=8)
    assert Margins(left=4, right=4, top=3).snapped(60, 64) == Margins(4, 8, 8, 0)
    canvas, mask = outpaint_inputs(picture(), Margins(left=16, bottom=8), overlap=4)
    assert canvas.size == mask.size == (80, 72)
    kept = np.asarray(mask) == 0
    assert kept[:60, 20:].all() and not kept[:, :20].any() and not kept[60:].any()
    assert np.array_equal(pixels(canvas)[:64, 16:], pixels(picture()))
    assert np.array_equal(pixels(canvas)[10, :16], np.repeat(pixels(picture())[10, :1], 16, 0))


def test_outpaint_extends_the_picture_and_keeps_it(pipe: Any) -> None:
    result = outpaint(pipe, params(), picture(), right=16, top=8, overlap=4)
    got = pixels(result.images[0])
    assert got.shape == (72, 80, 3) and result.params.inpainting_fill == 0
    assert np.array_equal(got[12:, :60], pixels(picture())[4:, :60])
    assert result.mode == "inpaint"
