"""Separate VAE files: found by file name, checked, used for encode and decode, hashed.

The reference is diffusers' StableDiffusionPipeline whose `vae` is the separate VAE (loaded
through diffusers' own converter): the same prompt and generators give the same images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sd_core
from sd_core.assets import Assets
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams, InvalidParam
from sd_core.vae import CHECKPOINT_PREFIX
from sd_core.vae_files import VaeError, inspect_vae
from tests.clip_reference import hf_tokenizer
from tests.reference import (
    diffusers_models,
    diffusers_pipeline,
    diffusers_vae,
    random_checkpoint,
    random_part,
    reference_scheduler,
)

PROMPT = "a red circle on a blue background"


def write_vae(path: Path, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """A random tiny VAE in the original layout, saved (keys without the checkpoint prefix
    unless `prefix` says otherwise); returns the tensors with the checkpoint prefix."""
    part = random_part("vae", TINY_TEST, seed=seed)
    state = {prefix + k.removeprefix(CHECKPOINT_PREFIX): v.contiguous() for k, v in part.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return part


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("vae")
    state = random_checkpoint(TINY_TEST, seed=3)
    path = save_checkpoint(tmp / "tiny.safetensors", state, TINY_TEST)
    data = tmp / "data"
    (data / "models" / "VAE").mkdir(parents=True)
    alt = write_vae(data / "models" / "VAE" / "alt.vae.safetensors", seed=9)
    write_vae(data / "models" / "VAE" / "prefixed.vae.pt", seed=9, prefix=CHECKPOINT_PREFIX)
    pipe = sd_core.load_pipeline(path)
    pipe.use_assets(Assets.under(data))
    return {"pipe": pipe, "state": state, "alt": alt, "tmp": tmp, "data": data}


def images(pipe, **kwargs) -> np.ndarray:  # type: ignore[no-untyped-def]
    result = pipe.generate(
        GenerationParams(prompt=PROMPT, seed=5, steps=3, sampler="euler", **kwargs)
    )
    return np.stack([np.asarray(im, dtype=np.float32) for im in result.images])


def test_separate_vae_equals_diffusers_with_that_vae(setup):
    state = setup["state"]
    text_encoder, _, unet = diffusers_models(state, TINY_TEST)
    alt_vae = diffusers_vae({**state, **setup["alt"]}, TINY_TEST)
    tokenizer = hf_tokenizer(setup["tmp"] / "tok")
    reference = diffusers_pipeline(text_encoder, alt_vae, unet, tokenizer, reference_scheduler())
    expected = reference(
        prompt=PROMPT, num_inference_steps=3, guidance_scale=7.0, height=64, width=64,
        generator=[torch.Generator().manual_seed(5)], output_type="np",
    ).images  # fmt: skip
    pipe = setup["pipe"]
    _, latents = pipe.generate_latents(
        GenerationParams(prompt=PROMPT, seed=5, steps=3, sampler="euler", vae="alt.vae.safetensors")
    )
    ours = pipe.decode_latents(
        latents, pipe.vae_for(GenerationParams("x", vae="alt.vae.safetensors"))
    )
    ours_np = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours_np, expected, atol=1e-4, rtol=0)


def test_vae_changes_the_image_and_is_recorded(setup):
    pipe = setup["pipe"]
    own = images(pipe)
    alt = images(pipe, vae="alt.vae.safetensors")
    assert np.abs(own - alt).max() > 20  # a different decoder draws different pixels
    # The same weights under the checkpoint's prefix in a .pt give the same image.
    np.testing.assert_array_equal(images(pipe, vae="prefixed.vae.pt"), alt)
    result = pipe.generate(
        GenerationParams(prompt=PROMPT, seed=5, steps=2, vae="alt.vae.safetensors")
    )
    file = setup["data"] / "models" / "VAE" / "alt.vae.safetensors"
    short = hashlib.sha256(file.read_bytes()).hexdigest()[:10]
    text = result.images[0].info["parameters"]
    assert "VAE: alt.vae.safetensors" in text and f"VAE hash: {short}" in text
    assert "VAE" not in pipe.generate(GenerationParams(prompt=PROMPT, seed=5, steps=2)).infotext(0)


def test_model_own_vae_is_untouched_after_a_separate_one(setup):
    pipe = setup["pipe"]
    before = images(pipe)
    images(pipe, vae="alt.vae.safetensors")
    np.testing.assert_array_equal(images(pipe), before)


def test_unknown_vae_is_refused_naming_the_installed_ones(setup):
    with pytest.raises(InvalidParam) as caught:
        setup["pipe"].generate(GenerationParams(prompt=PROMPT, steps=1, vae="nope.pt"))
    assert caught.value.field == "vae"
    assert "alt.vae.safetensors" in str(caught.value) and "nope.pt" in str(caught.value)


def test_blank_vae_name_is_refused():
    with pytest.raises(InvalidParam, match="vae"):
        GenerationParams(prompt="x", vae="  ").check()


def test_files_that_are_not_vaes_are_refused(tmp_path):
    diffusers_layout = tmp_path / "diffusers.safetensors"
    save_file(
        {"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, str(diffusers_layout)
    )
    with pytest.raises(VaeError, match="diffusers' layout"):
        inspect_vae(diffusers_layout)
    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, str(other))
    with pytest.raises(VaeError, match="no encoder./decoder. keys"):
        inspect_vae(other)
    truncated = tmp_path / "cut.vae.safetensors"
    write_vae(truncated, seed=1)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(VaeError, match="not a valid safetensors file"):
        inspect_vae(truncated)


class _Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("/tmp/dali-vae-pickle-ran"),))


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = Path("/tmp/dali-vae-pickle-ran")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.vae.pt"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "x": _Boom()}, path)
    with pytest.raises(VaeError, match="refused"):
        inspect_vae(path)
    assert not marker.exists()


def test_a_vae_of_another_shape_is_refused(setup, tmp_path):
    import dataclasses

    from sd_core.vae_files import build_vae

    wide = dataclasses.replace(TINY_TEST.vae, base_channels=TINY_TEST.vae.base_channels * 2)
    path = setup["data"] / "models" / "VAE" / "alt.vae.safetensors"
    with pytest.raises(VaeError, match="has shape"):
        build_vae(inspect_vae(path), wide, torch.device("cpu"), torch.float32)
