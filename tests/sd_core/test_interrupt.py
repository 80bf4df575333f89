"""`GenerationHooks.interrupt`: AUTOMATIC1111's interrupt. The run stops after the step at which
it is asked and keeps what it made: the images are that step's predicted x0, decoded."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.image_tensors import tensor_to_images
from sd_core.params import GenerationParams
from sd_core.pipeline import GenerationHooks

PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def pipe() -> Any:
    return sd_core.load_pipeline()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _run(pipe: Any, params: GenerationParams, stop_after: int, **inputs: Any) -> Any:
    """`pipe.generate` asked to interrupt once step `stop_after` is done; (the result, every
    step's (step, total, predicted x0) seen by the progress hook)."""
    seen: list[tuple[int, int, torch.Tensor]] = []

    def on_step(step: int, total: int, x0: torch.Tensor) -> None:
        seen.append((step, total, x0.clone()))

    hooks = GenerationHooks(on_step=on_step, interrupt=lambda: seen[-1][0] >= stop_after)
    return pipe.generate(params, hooks=hooks, **inputs), seen


def test_an_interrupt_keeps_the_predicted_image_of_the_step_it_stopped_at(pipe: Any) -> None:
    params = GenerationParams(PROMPT, seed=3, steps=10, sampler="euler_a", batch=2)
    result, seen = _run(pipe, params, stop_after=4)
    assert [s[0] for s in seen] == [1, 2, 3, 4] and result.interrupted_at == 4
    expected = tensor_to_images(pipe.decode_latents(seen[-1][2]))
    for got, want in zip(result.images, expected, strict=True):
        assert np.array_equal(_pixels(got), _pixels(want))
    assert "interrupted after step 4 of 10" in result.warnings[-1]
    # The infotext is the request's, as A1111 writes it; the dali JSON says where it stopped.
    assert "Steps: 10," in result.images[0].info["parameters"]
    assert json.loads(result.images[0].info["dali"])["interrupted_at"] == 4
    # Only partly denoised: not the finished image.
    finished = pipe.generate(params).images[0]
    assert np.abs(_pixels(finished) - _pixels(result.images[0])).max() > 10


def test_no_interrupt_or_one_at_the_last_step_changes_nothing(pipe: Any) -> None:
    params = GenerationParams(PROMPT, seed=4, steps=3, sampler="euler")
    plain = pipe.generate(params)
    late, seen = _run(pipe, params, stop_after=3)
    assert late.interrupted_at is None and len(seen) == 3
    assert np.array_equal(_pixels(late.images[0]), _pixels(plain.images[0]))
    assert "interrupted_at" not in json.loads(plain.images[0].info["dali"])


def test_an_interrupted_inpaint_keeps_the_unmasked_pixels(pipe: Any) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    params = GenerationParams(PROMPT, seed=5, steps=8, sampler="euler", strength=1.0)
    result, _ = _run(pipe, params, stop_after=2, init_image=init, mask=mask)
    assert result.interrupted_at == 2
    kept = np.asarray(mask) == 0
    assert np.array_equal(_pixels(result.images[0])[kept], _pixels(init)[kept])


def test_an_interrupted_hires_fix_keeps_the_pass_it_stopped_in(pipe: Any) -> None:
    params = GenerationParams(
        PROMPT, seed=6, steps=4, sampler="euler", hires=True, hires_scale=1.5, hires_steps=4,
        hires_strength=0.5,
    )  # fmt: skip
    # In the first pass: its images, at the first pass's size (as A1111 returns them).
    first, seen = _run(pipe, params, stop_after=2)
    assert first.interrupted_at == 2 and seen[-1][:2] == (2, 6)  # 4 steps + 2 of the second
    assert first.images[0].size == (64, 64)
    # Right after the first pass: the first pass's finished images.
    done_first, _ = _run(pipe, params, stop_after=4)
    assert done_first.interrupted_at == 4 and done_first.images[0].size == (64, 64)
    whole_first = pipe.generate(GenerationParams(PROMPT, seed=6, steps=4, sampler="euler")).images[
        0
    ]
    assert np.array_equal(_pixels(done_first.images[0]), _pixels(whole_first))
    # In the second pass: the upscaled images so far.
    second, seen = _run(pipe, params, stop_after=5)
    assert second.interrupted_at == 5 and seen[-1][:2] == (5, 6)
    assert second.images[0].size == (96, 96)
    assert "interrupted after step 5 of 6" in second.warnings[-1]
