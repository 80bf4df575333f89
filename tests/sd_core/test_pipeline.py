"""Pipeline behaviour beyond reference equality: validation, callbacks, cancel, metadata, devices."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.devices import list_devices, resolve_device, resolve_dtype
from sd_core.infotext import parse_infotext
from sd_core.params import MAX_SEED, GenerationParams, InvalidParam
from sd_core.pipeline import GenerationHooks
from sd_core.preview import latent_to_rgb, latents_to_rgb
from tests.reference import random_checkpoint


def generate(
    pipe, prompt, *, init_image=None, mask=None, callback=None, cancel=None, trace=None, **settings
):  # type: ignore[no-untyped-def]
    """The images of `pipe.generate(GenerationParams(prompt, **settings), …)`."""
    hooks = GenerationHooks(on_step=callback, cancel=cancel, trace=trace)
    return pipe.generate(
        GenerationParams(prompt, **settings), init_image=init_image, mask=mask, hooks=hooks
    ).images


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, random_checkpoint(TINY_TEST, seed=5), TINY_TEST)


@pytest.fixture(scope="module")
def pipe(checkpoint_path):  # type: ignore[no-untyped-def]
    return sd_core.load_pipeline(checkpoint_path)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"steps": 0}, ["steps", "0", "1 to 150"]),
        ({"steps": 151}, ["steps", "151"]),
        ({"steps": 2.5}, ["steps", "integer"]),
        ({"guidance": 31}, ["guidance", "31", "0 to 30"]),
        ({"guidance": float("nan")}, ["guidance", "nan"]),
        ({"strength": 1.5}, ["strength", "1.5", "0 to 1"]),
        ({"width": 100}, ["width", "100", "multiple of 8"]),
        ({"height": 56}, ["height", "56", "64"]),
        ({"width": 4096}, ["width", "4096", "2048"]),
        ({"batch": 0}, ["batch", "0"]),
        ({"seed": -5}, ["seed", "-5"]),
        ({"sampler": "nope"}, ["unknown sampler", "nope", "euler_a", "dpmpp_2m"]),
        ({"prompt": 3}, ["prompt", "string"]),
        ({"batch": 9}, ["batch", "9", "1 to 8"]),
        ({"seed": MAX_SEED, "batch": 2}, ["seed + batch - 1", str(MAX_SEED)]),
        ({"variation_seed": 2**40, "variation_strength": 0.5}, ["variation_seed", str(2**40)]),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(pipe, kwargs, words):
    args = {"prompt": "a red circle", "steps": 2, **kwargs}
    with pytest.raises(ValueError) as e:
        pipe.generate(GenerationParams(**args))
    for word in words:
        assert word in str(e.value)


def test_mask_checks(pipe):
    image = Image.new("RGB", (64, 64), "red")
    with pytest.raises(ValueError, match="mask needs an init_image"):
        generate(pipe, "x", steps=1, mask=Image.new("L", (64, 64)))
    with pytest.raises(ValueError, match="mask size 32x32 must equal init_image size 64x64"):
        generate(pipe, "x", steps=1, init_image=image, mask=Image.new("L", (32, 32)))


def test_defaults_and_metadata(pipe):
    (image,) = generate(pipe, "a red circle", seed=7, steps=2)
    assert image.size == (TINY_TEST.native_size, TINY_TEST.native_size)
    params = parse_infotext(image.info["parameters"])
    assert params.prompt == "a red circle" and params.seed == 7 and params.steps == 2
    assert params.sampler == "Euler a"  # the model's default sampler, by its A1111 name
    assert params.model_hash == pipe.model_hash
    dali = json.loads(image.info["dali"])
    assert dali["sampler"] == "euler_a" and dali["device"] == "cpu" and dali["dtype"] == "float32"


def test_random_seed_is_reported_and_reproducible(pipe):
    (first,) = generate(pipe, "a blue square", steps=2, sampler="euler")
    seed = first.info["seed"]
    (again,) = generate(pipe, "a blue square", steps=2, sampler="euler", seed=seed)
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_callback_sees_every_step_and_cancel_stops_within_one(pipe):
    seen: list[tuple[int, int, tuple[int, ...]]] = []
    generate(
        pipe,
        "x",
        seed=1,
        steps=4,
        sampler="euler",
        batch=2,
        callback=lambda i, n, latents: seen.append((i, n, tuple(latents.shape))),
    )
    assert seen == [(i, 4, (2, 4, 8, 8)) for i in range(1, 5)]

    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(seen_cancel) >= 2

    seen_cancel: list[int] = []
    with pytest.raises(sd_core.GenerationCancelled):
        generate(
            pipe,
            "x",
            seed=1,
            steps=10,
            sampler="euler",
            callback=lambda i, n, _: seen_cancel.append(i),
            cancel=cancel,
        )
    assert seen_cancel == [1, 2]


def test_trace_and_variation_seed(pipe):
    frames = []
    generate(
        pipe,
        "x",
        seed=3,
        steps=3,
        sampler="euler",
        trace=lambda i, n, x, d: frames.append((i, x.shape, d.shape)),
    )
    assert [f[0] for f in frames] == [1, 2, 3]
    base = np.asarray(generate(pipe, "x", seed=3, steps=3, sampler="euler")[0], dtype=int)
    none = np.asarray(
        generate(
            pipe, "x", seed=3, steps=3, sampler="euler", variation_seed=9, variation_strength=0.0
        )[0],
        dtype=int,
    )
    full = np.asarray(generate(pipe, "x", seed=9, steps=3, sampler="euler")[0], dtype=int)
    towards = np.asarray(
        generate(
            pipe, "x", seed=3, steps=3, sampler="euler", variation_seed=9, variation_strength=1.0
        )[0],
        dtype=int,
    )
    assert np.array_equal(base, none)
    assert np.abs(towards - full).max() <= 1  # strength 1 = the variation seed's noise
    with pytest.raises(ValueError, match="variation_strength"):
        generate(pipe, "x", steps=1, variation_seed=1, variation_strength=2.0)


def test_long_prompt_is_encoded_in_chunks_not_truncated(pipe):
    # 100 tokens: two chunks of the text encoder (see test_conditioning.py), nothing dropped.
    encoded = pipe.encode_text(["red " * 100])
    assert encoded.context[0].shape[1] == 2 * 77 and encoded.warnings == ()


def test_img2img_strength_zero_keeps_the_image_and_inpaint_keeps_unmasked_latents(pipe):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    settings = GenerationParams("x", seed=1, steps=4, sampler="euler")
    _, inpainted = pipe.generate_latents(
        replace(settings, strength=1.0), init_image=image, mask=Image.fromarray(mask)
    )
    _, kept = pipe.generate_latents(replace(settings, strength=0.0), init_image=image)
    # strength 0 denoises nothing: the image's own (posterior-sampled) latents come back, and
    # inpainting keeps exactly those latents where the mask is black (the left half).
    torch.testing.assert_close(inpainted[..., :4], kept[..., :4])
    assert (inpainted[..., 4:] - kept[..., 4:]).abs().mean() > 0.1
    (decoded,) = generate(
        pipe, "x", seed=1, steps=4, sampler="euler", init_image=image, strength=0.0
    )
    assert decoded.size == (64, 64)


def test_devices_and_dtypes():
    ids = [d.id for d in list_devices()]
    assert ids[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda:7.*available devices: cpu"):
        resolve_device("cuda:7")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="float16.*not supported on cpu"):
        resolve_dtype("float16", torch.device("cpu"))


def test_missing_device_is_refused_by_load_pipeline(checkpoint_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for machines without it")
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        sd_core.load_pipeline(checkpoint_path, device="cuda")


def test_bfloat16_on_cpu_gives_a_finite_close_image(checkpoint_path, pipe):
    low = sd_core.load_pipeline(checkpoint_path, dtype="bfloat16")
    a = np.asarray(generate(pipe, "x", seed=2, steps=3, sampler="euler")[0], dtype=int)
    b = np.asarray(generate(low, "x", seed=2, steps=3, sampler="euler")[0], dtype=int)
    assert np.abs(a - b).mean() < 12


def test_preview_is_latent_sized_rgb():
    images = latents_to_rgb(torch.randn(2, 4, 8, 12))
    assert [im.size for im in images] == [(12, 8), (12, 8)] and images[0].mode == "RGB"
    with pytest.raises(ValueError, match="shape"):
        latents_to_rgb(torch.randn(4, 8, 8))


def test_preview_from_a_numpy_latent_maps_each_pixel_through_the_factors():
    latent = np.zeros((4, 2, 3), np.float32)
    latent[0, 0, 0] = 1.0  # channel 0 alone: RGB = (1 + factors[0]) / 2
    latent[3, 1, 2] = 10.0  # far out of range: clipped to black
    image = np.asarray(latent_to_rgb(latent), dtype=int)
    assert image.shape == (2, 3, 3)
    assert image[0, 0].tolist() == [round(255 * (1 + f) / 2) for f in (0.298, 0.207, 0.208)]
    assert image[0, 1].tolist() == [128, 128, 128] and image[1, 2].tolist() == [0, 0, 0]
    batch = torch.randn(2, 4, 5, 7)
    for tensor_image, numpy_latent in zip(latents_to_rgb(batch), batch.numpy(), strict=True):
        assert np.array_equal(np.asarray(tensor_image), np.asarray(latent_to_rgb(numpy_latent)))
    with pytest.raises(ValueError, match="shape"):
        latent_to_rgb(np.zeros((3, 8, 8), np.float32))


def test_result_carries_the_resolved_params_and_the_metadata_is_written_from_them(pipe):
    result = pipe.generate(GenerationParams("a red circle", steps=2, batch=2, seed=-1))
    p = result.params
    assert p.seed is not None and 0 <= p.seed <= MAX_SEED - 1  # drawn, room for seed + 1
    assert p.sampler == TINY_TEST.default_sampler and p.width == p.height == TINY_TEST.native_size
    assert result.seeds == [p.seed, p.seed + 1] and result.mode == "txt2img"
    assert result.timings.sampling > 0 and result.timings.text_encoding > 0
    for i, image in enumerate(result.images):
        assert image.info["seed"] == p.seed + i
        assert image.info["parameters"] == result.infotext(i)
        assert json.loads(image.info["dali"]) == result.metadata(i)
    again = pipe.generate(replace(p, seed=p.seed + 1, batch=1)).images[0]
    # Image 1 made alone from its own seed (batched arithmetic may round differently by 1).
    diff = np.abs(np.asarray(again, dtype=int) - np.asarray(result.images[1], dtype=int))
    assert diff.max() <= 1


def test_params_normalise_numbers_and_resolve_variation_seeds():
    p = GenerationParams("x", seed=3, steps=5, sampler="euler", width=64, height=64)
    assert GenerationParams(**p.to_dict()) == p
    assert GenerationParams("x", guidance=7).check().guidance == 7.0
    resolved = GenerationParams("x", variation_seed=5, variation_strength=0.0).resolve(64, "euler")
    assert resolved.variation_seed is None  # no blend: nothing to record
    drawn = GenerationParams("x", variation_strength=0.5).resolve(64, "euler")
    assert drawn.variation_seed is not None


def test_clip_skip_changes_the_image_and_is_written_to_the_infotext(pipe):
    plain = pipe.generate(GenerationParams("a red circle", seed=4, steps=2))
    skipped = pipe.generate(GenerationParams("a red circle", seed=4, steps=2, clip_skip=2))
    a, b = (np.asarray(r.images[0], dtype=int) for r in (plain, skipped))
    assert np.abs(a - b).max() > 0
    assert "Clip skip" not in plain.images[0].info["parameters"]  # 1 is A1111's default: omitted
    assert parse_infotext(skipped.images[0].info["parameters"]).extra["Clip skip"] == "2"
    assert json.loads(skipped.images[0].info["dali"])["clip_skip"] == 2
    with pytest.raises(ValueError, match="clip_skip must be from 1 to 12"):
        pipe.generate(GenerationParams("x", steps=1, clip_skip=13))


def test_eta_reaches_the_sampler_and_the_infotext(pipe):
    plain = pipe.generate(GenerationParams("x", seed=2, steps=4, sampler="ddim"))
    noisy = pipe.generate(GenerationParams("x", seed=2, steps=4, sampler="ddim", eta=1.0))
    assert "Eta" not in plain.images[0].info["parameters"]
    assert "Eta DDIM: 1" in noisy.images[0].info["parameters"]
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(noisy.images[0]))
    own = pipe.generate(GenerationParams("x", seed=2, steps=4, sampler="euler_a", eta=1.0))
    assert "Eta" not in own.images[0].info["parameters"]  # its own: nothing to say
    half = pipe.generate(GenerationParams("x", seed=2, steps=4, sampler="euler_a", eta=0.5))
    assert "Eta: 0.5" in half.images[0].info["parameters"]
    for sampler, eta, words in (
        ("euler", 0.5, "has no eta"),
        ("dpmpp_2m_sde", 0.5, "eta 1 only"),
        ("ddim", 1.5, "from 0 to 1"),
    ):
        with pytest.raises(InvalidParam, match=words) as error:
            pipe.generate(GenerationParams("x", steps=2, sampler=sampler, eta=eta))
        assert error.value.field == "eta"
    with pytest.raises(InvalidParam, match="has no eta"):  # the hires pass's sampler too
        pipe.generate(GenerationParams("x", steps=2, sampler="ddim", eta=0.5, hires=True,
                                       hires_sampler="euler"))  # fmt: skip
