"""LoRAs and embeddings as prompts name them, through `pipe.generate` with installed files.

`test_lora.py` and `test_embeddings.py` prove the patching and the encoding against diffusers;
here the pipeline's part: a `<lora:name:w>` tag applies that file at that weight (the same
image as applying it by hand), the cached weights come back bit for bit after every kind of
run, what cannot be used is a warning, a broken file an error, and the infotext records the
files' hashes as A1111 writes them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

import sd_core
from sd_core import GenerationCancelled, GenerationHooks
from sd_core.assets import Assets
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.embeddings import load_embedding
from sd_core.lora import LoraError, applied_loras, load_lora, unet_kohya_names
from sd_core.params import GenerationParams
from sd_core.pipeline import StableDiffusionPipeline
from tests.reference import random_checkpoint

PROMPT = "a red circle on a blue background"


def write_lora(path: Path, pipe: StableDiffusionPipeline, seed: int) -> None:
    """A random rank-2 LoRA over every UNet layer and the text encoder's first fc1."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(pipe.unet.named_modules())
    tensors: dict[str, Tensor] = {}
    for ours, kohya in unet_kohya_names(pipe.unet).items():
        weight = modules[ours].weight
        out, fan_in = weight.shape[0], math.prod(weight.shape[1:])
        down = torch.randn((2, *weight.shape[1:]), generator=generator) / math.sqrt(fan_in)
        up = 0.5 * torch.randn((out, 2), generator=generator)
        tensors[f"{kohya}.lora_down.weight"] = down
        tensors[f"{kohya}.lora_up.weight"] = up.reshape(out, 2, *([1] * (weight.ndim - 2)))
        tensors[f"{kohya}.alpha"] = torch.tensor(2.0)
    fc1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    out, width = pipe.text_encoder.encoder.layers[0].mlp.fc1.weight.shape
    tensors[f"{fc1}.lora_down.weight"] = torch.randn((2, width), generator=generator)
    tensors[f"{fc1}.lora_up.weight"] = torch.randn((out, 2), generator=generator)
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> StableDiffusionPipeline:
    tmp = tmp_path_factory.mktemp("prompt-assets")
    path = save_checkpoint(tmp / "tiny.safetensors", random_checkpoint(TINY_TEST, 4), TINY_TEST)
    pipeline = sd_core.load_pipeline(path)
    data = tmp / "data"
    for folder in ("loras", "embeddings"):
        (data / folder).mkdir(parents=True)
    write_lora(data / "loras" / "ink.safetensors", pipeline, seed=1)
    (data / "loras" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    width = pipeline.config.clip.width
    vectors = torch.randn((2, width), generator=torch.Generator().manual_seed(3))
    save_file({"emb_params": vectors}, str(data / "embeddings" / "glowy.safetensors"))
    pipeline.use_assets(Assets.under(data))
    return pipeline


def run(
    pipe: StableDiffusionPipeline, prompt: str, negative: str = ""
) -> tuple[np.ndarray, sd_core.GenerationResult]:
    result = pipe.generate(
        GenerationParams(prompt=prompt, negative_prompt=negative, seed=7, steps=3, sampler="euler")
    )
    return np.asarray(result.images[0], dtype=np.int16), result


def weights(pipe: StableDiffusionPipeline) -> list[Tensor]:
    return [t.clone() for m in (pipe.text_encoder, pipe.unet) for t in m.state_dict().values()]


def assert_weights_equal(pipe: StableDiffusionPipeline, before: list[Tensor]) -> None:
    after = [t for m in (pipe.text_encoder, pipe.unet) for t in m.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_a_lora_tag_applies_that_file_at_that_weight(pipe):
    before = weights(pipe)
    plain, _ = run(pipe, PROMPT)
    tagged, result = run(pipe, f"{PROMPT} <lora:ink:0.6>")
    assert np.abs(tagged - plain).max() > 10  # the LoRA draws something else
    assert_weights_equal(pipe, before)  # and the cached model is as it was
    lora = load_lora(pipe.assets.loras.find("ink").path)  # type: ignore[union-attr]
    with torch.inference_mode(), applied_loras(pipe.text_encoder, pipe.unet, [(lora, 0.6, 0.6)]):
        by_hand, _ = run(pipe, PROMPT)
    np.testing.assert_array_equal(tagged, by_hand)
    assert result.warnings == ()
    assert f'Lora hashes: "ink: {lora.short_hash}"' in result.images[0].info["parameters"]
    assert "<lora:ink:0.6>" in result.params.prompt  # the tag stays in what is recorded
    np.testing.assert_array_equal(run(pipe, PROMPT)[0], plain)


def test_separate_text_encoder_and_unet_weights(pipe):
    both, _ = run(pipe, f"{PROMPT} <lora:ink:0.6>")
    np.testing.assert_array_equal(run(pipe, f"{PROMPT} <lora:ink:te=0.6:unet=0.6>")[0], both)
    unet_only, _ = run(pipe, f"{PROMPT} <lora:ink:0:0.6>")
    assert np.abs(unet_only - both).max() > 0  # the text encoder's part counts too


def test_what_cannot_be_used_is_a_warning_and_the_image_is_made_without_it(pipe):
    plain, _ = run(pipe, PROMPT)
    image, result = run(pipe, f"{PROMPT} <lora:nowhere:0.8>", negative="<lora:ink:1>")
    np.testing.assert_array_equal(image, plain)
    assert len(result.warnings) == 2
    assert "negative prompt" in result.warnings[0]
    assert "no LoRA named 'nowhere'" in result.warnings[1] and "ink" in result.warnings[1]


def test_a_broken_lora_file_is_an_error_and_changes_nothing(pipe):
    before = weights(pipe)
    with pytest.raises(LoraError, match="broken.safetensors"):
        run(pipe, f"{PROMPT} <lora:broken:1>")
    assert_weights_equal(pipe, before)


def test_weights_come_back_after_a_cancelled_run(pipe):
    before = weights(pipe)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        pipe.generate(
            GenerationParams(prompt=f"{PROMPT} <lora:ink:1>", seed=1, steps=5),
            hooks=GenerationHooks(cancel=cancel),
        )
    assert_weights_equal(pipe, before)


def test_an_embedding_named_in_the_prompt_is_used_and_recorded(pipe):
    plain, _ = run(pipe, f"{PROMPT} glowy")
    pipe.embeddings = None  # the word "glowy" as text
    try:
        as_text, _ = run(pipe, f"{PROMPT} glowy")
    finally:
        pipe.embeddings = pipe.assets.embeddings  # type: ignore[union-attr]
    assert np.abs(plain - as_text).max() > 10
    _, result = run(pipe, "a circle", negative="glowy")  # the negative prompt counts too
    embedding = load_embedding(pipe.assets.embeddings.find("glowy").path)  # type: ignore[union-attr]
    assert f'TI hashes: "glowy: {embedding.short_hash}"' in result.images[0].info["parameters"]
    assert [a.kind for a in result.assets] == ["embedding"]
