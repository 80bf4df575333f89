"""Prompts as AUTOMATIC1111 reads them: chunks, BREAK, weights with the mean restored, clip skip.

The reference is computed here independently: transformers' CLIPTextModel (loaded from the
same random checkpoint through diffusers' converter) encodes each chunk of ids built by hand,
and the weighting and mean restore are written out in the test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.conditioning import CHUNK_TOKENS, encode_prompts, tokenize_prompt
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams
from sd_core.tokenizer import CLIPTokenizer
from tests.clip_reference import reference_encoding
from tests.reference import diffusers_models, random_checkpoint, sd_core_models

TOK = CLIPTokenizer.default()
BOS, EOS = TOK.BOS, TOK.EOS


@pytest.fixture(scope="module")
def encoders() -> tuple[Any, Any]:
    checkpoint = random_checkpoint(TINY_TEST, seed=3)
    reference, _, _ = diffusers_models(checkpoint, TINY_TEST)
    ours, _, _ = sd_core_models(checkpoint, TINY_TEST)
    return ours, reference


def chunk(ids: list[int]) -> list[int]:
    return [BOS, *ids, EOS] + [EOS] * (CHUNK_TOKENS - len(ids))


def ours(encoder: Any, prompts: list[str], clip_skip: int = 1) -> list[torch.Tensor]:
    with torch.inference_mode():
        encoded = encode_prompts(encoder, TOK, prompts, clip_skip, torch.device("cpu"))
    return encoded.context


def test_weighted_prompt_equals_the_independent_computation(encoders: tuple[Any, Any]) -> None:
    encoder, reference = encoders
    red, circle, blue = TOK.tokenize("red"), TOK.tokenize("circle"), TOK.tokenize("blue")
    a, on, bg = TOK.tokenize("a"), TOK.tokenize("on a"), TOK.tokenize("background")
    ids = a + red + circle + on + blue + bg
    weights = [1.0] + [1.3] * len(red) + [1.1] * len(circle) + [1.0] * 2 + [1 / 1.1] + [1.0]
    (got,) = ours(encoder, ["a (red:1.3) (circle) on a [blue] background"])
    expected = reference_encoding(
        reference, [chunk(ids)], [[1.0, *weights] + [1.0] * (CHUNK_TOKENS + 1 - len(weights))]
    )
    assert got.shape == (1, 77, TINY_TEST.clip.width)
    # rtol: float32 sums in another order (AVX2 against AVX-512) differ by ~1e-6 of the value
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_long_prompt_is_chunked_with_the_comma_backoff_and_clip_skip(
    encoders: tuple[Any, Any],
) -> None:
    encoder, reference = encoders
    words = ["red", "green", "blue", "yellow"]
    # 70 single-token words, a comma, then 10 more: the chunk fills at 75 with the comma at
    # index 70 (5 from the end, within 20), so the first chunk ends after the comma.
    first = [w for i in range(70) for w in [words[i % 4]]]
    prompt = " ".join(first) + ", " + " ".join(words[i % 4] for i in range(10))
    tokens = TOK.tokenize(prompt)
    assert len(tokens) == 81 and tokens[70] == TOK.tokenize(",")[0]
    chunks = tokenize_prompt(TOK, prompt)
    assert chunks.ids == [chunk(tokens[:71]), chunk(tokens[71:])]
    (got,) = ours(encoder, [prompt], clip_skip=2)
    expected = reference_encoding(reference, chunks.ids, [[1.0] * 77] * 2, clip_skip=2)
    assert got.shape == (1, 154, TINY_TEST.clip.width)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_without_a_comma_the_chunk_is_cut_at_75_tokens() -> None:
    prompt = " ".join(["red"] * 80)
    chunks = tokenize_prompt(TOK, prompt)
    red = TOK.tokenize("red")[0]
    assert chunks.ids == [chunk([red] * 75), chunk([red] * 5)]


def test_break_starts_a_new_chunk_and_the_negative_is_padded_to_match(
    encoders: tuple[Any, Any],
) -> None:
    encoder, _ = encoders
    chunks = tokenize_prompt(TOK, "a red circle BREAK a blue background")
    assert chunks.ids == [
        chunk(TOK.tokenize("a red circle")),
        chunk(TOK.tokenize("a blue background")),
    ]
    negative, positive = ours(encoder, ["blurry", "a red circle BREAK a blue background"])
    assert negative.shape == positive.shape == (1, 154, TINY_TEST.clip.width)
    # The negative's second chunk is the empty prompt's encoding.
    (empty,) = ours(encoder, [""])
    torch.testing.assert_close(negative[:, 77:], empty)


def test_extra_network_tags_are_removed_with_a_warning() -> None:
    chunks = tokenize_prompt(TOK, "a red circle <lora:detail:0.8>, <hypernet:x:1>")
    assert chunks.ids == tokenize_prompt(TOK, "a red circle , ").ids
    assert len(chunks.warnings) == 2
    assert "<lora:detail:0.8>" in chunks.warnings[0] and "does not apply it" in chunks.warnings[0]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("cond") / "tiny.safetensors"
    save_checkpoint(path, random_checkpoint(TINY_TEST, seed=4), TINY_TEST)
    return sd_core.load_pipeline(path)


def pixels(pipe: Any, prompt: str, **settings: Any) -> np.ndarray:
    result = pipe.generate(GenerationParams(prompt, seed=5, steps=2, **settings))
    return np.asarray(result.images[0], dtype=int)


def test_weight_one_is_bit_identical_to_the_plain_prompt_and_other_weights_are_not(
    pipe: Any,
) -> None:
    plain = pixels(pipe, "a red circle on a blue background")
    for same in (
        "a (red circle:1.0) on a blue background",
        "a red circle on a blue background <lora:x:1>",
    ):
        assert np.array_equal(pixels(pipe, same), plain), same
    assert np.abs(pixels(pipe, "a (red circle:1.5) on a blue background") - plain).max() > 0
    assert np.abs(pixels(pipe, "a red circle BREAK on a blue background") - plain).max() > 0


def test_the_result_carries_the_prompt_warnings_and_long_prompts_are_not_cut(pipe: Any) -> None:
    result = pipe.generate(GenerationParams("a red circle <lora:detail:0.8>", seed=1, steps=1))
    assert len(result.warnings) == 1 and "<lora:detail:0.8>" in result.warnings[0]
    long = " ".join(["red circle"] * 40)  # 80 tokens: the last 5 used to be cut off
    shorter = " ".join(["red circle"] * 37) + " red"  # its first 75 tokens
    assert np.abs(pixels(pipe, long) - pixels(pipe, shorter)).max() > 0
