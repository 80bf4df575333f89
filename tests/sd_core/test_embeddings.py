"""Textual-inversion embeddings: the file layouts, the matching in prompts, and diffusers.

The reference is diffusers' own `load_textual_inversion` on a pipeline built from the same random
tiny checkpoint: it adds the embedding's vectors as new tokens of the text encoder and rewrites
the prompt to use them. sd_core instead finds the name in the prompt's tokens; both must give
the same conditioning and the same images. The chunk, weight and name rules are checked
against an independent computation: transformers' CLIPTextModel with the vectors added as
token rows, each chunk weighted and scaled back to its mean as written out here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import sd_core
from sd_core.checkpoint import CheckpointError, save_checkpoint
from sd_core.clip import CLIPTextModel
from sd_core.conditioning import (
    CHUNK_TOKENS,
    EMBEDDING_PLACEHOLDER,
    EmbeddingMatcher,
    EmbeddingSlot,
    encode_prompts,
    tokenize_prompt,
)
from sd_core.config import TINY_TEST
from sd_core.embeddings import Embedding, EmbeddingError, embedding_library, load_embedding
from sd_core.params import GenerationParams
from sd_core.tokenizer import CLIPTokenizer
from tests.clip_reference import hf_tokenizer, reference_encoding
from tests.reference import (
    diffusers_models,
    diffusers_pipeline,
    random_checkpoint,
    reference_scheduler,
    sd_core_models,
)

TOK = CLIPTokenizer.default()
BOS, EOS = TOK.BOS, TOK.EOS
WIDTH = TINY_TEST.clip.width
VOCAB = TINY_TEST.clip.vocab_size
CPU = torch.device("cpu")
PROMPT = "a photo of {} on a table"


def vectors(count: int, seed: int, width: int = WIDTH) -> torch.Tensor:
    # Larger than the random token rows (std 1/sqrt(32) ≈ 0.18), so their effect is plain.
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def save_a1111(path: Path, vecs: torch.Tensor) -> Path:
    """A1111's textual-inversion .pt layout, as its trainer saves it."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vecs.clone())},
            "name": path.stem,
            "step": 1500,
            "sd_checkpoint": "e1441589a6",
            "sd_checkpoint_name": "v1-5-pruned-emaonly",
        },
        path,
    )
    return path


def save_diffusers(path: Path, vector: torch.Tensor) -> Path:
    """diffusers' learned_embeds.bin layout: {token: (width,)}."""
    torch.save({f"<{path.stem}>": vector.clone()}, path)
    return path


def save_emb_params(path: Path, vecs: torch.Tensor) -> Path:
    save_file({"emb_params": vecs.contiguous()}, str(path))
    return path


def chunk(ids: list[int]) -> list[int]:
    return [BOS, *ids, EOS] + [EOS] * (CHUNK_TOKENS - len(ids))


def words(count: int) -> str:
    """`count` single-token words."""
    return " ".join(["red", "green", "blue", "yellow"][i % 4] for i in range(count))


# --- the files ----------------------------------------------------------------------------------


def test_a1111_pt_layout(tmp_path: Path) -> None:
    vecs = vectors(3, 1)
    path = save_a1111(tmp_path / "myemb.pt", vecs.half())
    embedding = load_embedding(path)
    assert embedding.name == "myemb" and embedding.path == path
    assert embedding.vectors.dtype == torch.float32 and embedding.vectors.device.type == "cpu"
    assert torch.equal(embedding.vectors, vecs.half().float())
    assert (embedding.count, embedding.width) == (3, WIDTH)
    assert embedding.short_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_diffusers_bin_layout_with_one_vector(tmp_path: Path) -> None:
    vector = vectors(1, 2)[0]
    embedding = load_embedding(save_diffusers(tmp_path / "oneemb.bin", vector))
    assert embedding.vectors.shape == (1, WIDTH)
    assert torch.equal(embedding.vectors[0], vector)


def test_safetensors_emb_params_and_single_tensor(tmp_path: Path) -> None:
    vecs = vectors(2, 3)
    assert torch.equal(
        load_embedding(save_emb_params(tmp_path / "a.safetensors", vecs)).vectors, vecs
    )
    save_file({"whatever": vecs[0].to(torch.bfloat16)}, str(tmp_path / "b.safetensors"))
    single = load_embedding(tmp_path / "b.safetensors")
    assert torch.equal(single.vectors, vecs[:1].to(torch.bfloat16).float())
    # emb_params wins over other tensors beside it (some trainers add metadata tensors).
    save_file({"emb_params": vecs, "step": torch.tensor([3])}, str(tmp_path / "c.safetensors"))
    assert torch.equal(load_embedding(tmp_path / "c.safetensors").vectors, vecs)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name → (a file that must be refused, a fragment of the reason)."""
    v = vectors(2, 4)
    out: dict[str, tuple[Path, str]] = {}

    def pt(name: str, obj: object, why: str) -> None:
        torch.save(obj, tmp_path / f"{name}.pt")
        out[name] = (tmp_path / f"{name}.pt", why)

    def st(name: str, tensors: dict[str, torch.Tensor], why: str) -> None:
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        out[name] = (tmp_path / f"{name}.safetensors", why)

    pt("two_params", {"string_to_param": {"*": v, "other": v}}, "2 tensors")
    pt("two_tensors", {"a": v, "b": v}, "2 tensors")
    pt("no_tensor", {"name": "x", "step": 3}, "no tensor")
    pt("a_list", [v], "list")
    pt("bare", v, "Tensor")
    pt("three_d", {"string_to_param": {"*": v[None]}}, "shape")
    pt("integers", {"string_to_param": {"*": v.long()}}, "dtype")
    pt("nan", {"string_to_param": {"*": v * float("nan")}}, "NaN")
    st("sdxl", {"clip_l": v, "clip_g": torch.zeros(2, 48)}, "SDXL")
    st("several", {"a": v, "b": v.clone()}, "2 tensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    out["garbage"] = (tmp_path / "garbage.safetensors", "JSON")
    save_emb_params(tmp_path / "cut.safetensors", v)
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    out["truncated"] = (tmp_path / "cut.safetensors", "truncated")
    (tmp_path / "junk.pt").write_bytes(b"this is no torch file at all")
    out["junk_pt"] = (tmp_path / "junk.pt", "corrupt")
    (tmp_path / "x.txt").write_text("x")
    out["suffix"] = (tmp_path / "x.txt", "suffix")
    out["missing"] = (tmp_path / "gone.pt", "no such file")
    return out


def test_unusable_files_are_refused_naming_the_file_and_why(tmp_path: Path) -> None:
    for name, (path, why) in _bad_files(tmp_path).items():
        with pytest.raises(EmbeddingError) as caught:
            load_embedding(path)
        message = str(caught.value)
        assert str(path) in message and why in message, (name, message)
        assert isinstance(caught.value, CheckpointError)


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> Any:
            return (os.mkdir, (str(marker),))

    torch.save({"string_to_param": {"*": Exploit()}}, tmp_path / "evil.pt")
    with open(tmp_path / "evil2.bin", "wb") as f:
        pickle.dump({"<evil2>": Exploit()}, f)
    for name in ("evil.pt", "evil2.bin"):
        with pytest.raises(EmbeddingError, match="refused"):
            load_embedding(tmp_path / name)
        assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.is_dir()


def test_library_names_files_by_stem_and_loads_each_once(tmp_path: Path) -> None:
    save_a1111(tmp_path / "myemb.pt", vectors(3, 1))
    (tmp_path / "sub").mkdir()
    save_emb_params(tmp_path / "sub" / "safeemb.safetensors", vectors(2, 2))
    (tmp_path / "notes.txt").write_text("not an embedding")
    library = embedding_library(tmp_path)
    assert library.names() == ["myemb", "safeemb"]
    first = library.get("myemb")
    assert isinstance(first, Embedding) and library.get("myemb") is first


# --- matching in prompts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_checkpoint(TINY_TEST, seed=8)


@pytest.fixture(scope="module")
def encoder(state: dict[str, torch.Tensor]) -> CLIPTextModel:
    return sd_core_models(state, TINY_TEST)[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """myemb (3 vectors, A1111 .pt), safeemb (2, emb_params), oneemb (1, diffusers .bin)."""
    directory = tmp_path_factory.mktemp("embeddings")
    save_a1111(directory / "myemb.pt", vectors(3, 11))
    save_emb_params(directory / "safeemb.safetensors", vectors(2, 12))
    save_diffusers(directory / "oneemb.bin", vectors(1, 13)[0])
    return directory


def matcher(directory: Path, width: int = WIDTH) -> EmbeddingMatcher:
    return EmbeddingMatcher(embedding_library(directory), TOK, width)


def test_the_name_becomes_the_vectors_in_token_space(folder: Path) -> None:
    emb = load_embedding(folder / "myemb.pt")
    found = tokenize_prompt(TOK, "a MyEmb, cat", matcher(folder))  # CLIP lowercases
    a, comma, cat = TOK.tokenize("a , cat")
    assert found.ids == [chunk([a, *[EMBEDDING_PLACEHOLDER] * 3, comma, cat])]
    assert found.embedding_slots == (EmbeddingSlot(0, 2, emb),)
    # Only whole words: "myembs" is other tokens, so it stays text.
    plain = tokenize_prompt(TOK, "a myembs cat", matcher(folder))
    assert plain.ids == tokenize_prompt(TOK, "a myembs cat").ids and not plain.embedding_slots


def test_an_embedding_never_straddles_two_chunks(folder: Path) -> None:
    red = TOK.tokenize("red")[0]
    # 72 tokens + 3 vectors fill the chunk exactly: one chunk.
    fits = tokenize_prompt(TOK, words(72) + " myemb", matcher(folder))
    assert len(fits) == 1 and fits.embedding_slots[0][:2] == (0, 73)
    # 73 + 3 do not fit: the first chunk is closed (padded) and the embedding starts the next.
    moved = tokenize_prompt(TOK, words(73) + " myemb red", matcher(folder))
    assert len(moved) == 2
    assert moved.ids[0] == chunk(TOK.tokenize(words(73)))
    assert moved.ids[1] == chunk([EMBEDDING_PLACEHOLDER] * 3 + [red])
    assert moved.embedding_slots[0][:2] == (1, 1)
    # The comma rule moves an embedding after the comma with its vectors: 60 words, a comma,
    # 11 words and myemb fill 75; the next word cuts after the comma.
    prompt = words(60) + ", " + words(11) + " myemb red"
    backed = tokenize_prompt(TOK, prompt, matcher(folder))
    assert len(backed) == 2 and backed.ids[0][61] == TOK.tokenize(",")[0]
    assert backed.ids[0][62:] == [EOS] * 15
    assert backed.embedding_slots[0][:2] == (1, 12)
    assert backed.ids[1][12:15] == [EMBEDDING_PLACEHOLDER] * 3 and backed.ids[1][15] == red


def test_longest_name_wins_where_names_overlap(tmp_path: Path) -> None:
    save_a1111(tmp_path / "myemb.pt", vectors(3, 1))
    save_a1111(tmp_path / "myemb_v2.pt", vectors(2, 2))
    assert TOK.tokenize("myemb_v2")[:2] == TOK.tokenize("myemb")  # the names overlap
    found = tokenize_prompt(TOK, "myemb_v2 and myemb", matcher(tmp_path))
    assert [(s.position, s.embedding.name) for s in found.embedding_slots] == [
        (1, "myemb_v2"),
        (4, "myemb"),
    ]
    assert found.ids[0][3] == TOK.tokenize("and")[0]


def test_names_that_are_no_file_stay_text_without_a_warning(folder: Path) -> None:
    found = tokenize_prompt(TOK, "a photo of otheremb", matcher(folder))
    assert found.ids == tokenize_prompt(TOK, "a photo of otheremb").ids
    assert found.warnings == () and found.embedding_slots == ()


def test_unusable_embeddings_warn_once_and_stay_text(tmp_path: Path) -> None:
    save_a1111(tmp_path / "wideemb.pt", vectors(2, 1, width=48))
    save_a1111(tmp_path / "longemb.pt", vectors(CHUNK_TOKENS + 1, 2))
    save_file(
        {"clip_l": vectors(2, 3), "clip_g": vectors(2, 3, 48)}, str(tmp_path / "xl.safetensors")
    )
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 3)
    find = matcher(tmp_path)
    prompt = "wideemb, longemb, xl, broken"
    first = tokenize_prompt(TOK, prompt, find)
    assert first.ids == tokenize_prompt(TOK, prompt).ids and first.embedding_slots == ()
    assert len(first.warnings) == 4
    wide, long, xl, broken = first.warnings
    assert "'wideemb'" in wide and "width 48" in wide and f"takes {WIDTH}" in wide
    assert "'longemb'" in long and "76 vectors" in long
    assert "'xl'" in xl and "SDXL" in xl
    assert "'broken'" in broken and "broken.safetensors" in broken
    assert all("plain text" in w for w in first.warnings)
    # The same call's next prompt does not repeat them.
    assert tokenize_prompt(TOK, prompt, find).warnings == ()


def test_a_broken_file_whose_name_is_not_in_the_prompt_is_never_read(
    tmp_path: Path, encoder: CLIPTextModel
) -> None:
    (tmp_path / "broken.pt").write_bytes(b"junk")
    save_a1111(tmp_path / "myemb.pt", vectors(3, 1))
    library = embedding_library(tmp_path)
    encoded = encode_prompts(encoder, TOK, ["a myemb cat"], 1, CPU, library)
    assert encoded.warnings == () and [e.name for e in encoded.embeddings_used] == ["myemb"]


def test_embeddings_used_are_unique_in_order_of_first_use(
    folder: Path, encoder: CLIPTextModel
) -> None:
    library = embedding_library(folder)
    encoded = encode_prompts(
        encoder, TOK, ["safeemb, myemb", "myemb oneemb BREAK safeemb"], 1, CPU, library
    )
    assert [e.name for e in encoded.embeddings_used] == ["safeemb", "myemb", "oneemb"]
    for embedding in encoded.embeddings_used:
        digest = hashlib.sha256(embedding.path.read_bytes()).hexdigest()
        assert embedding.short_hash == digest[:12]
    assert [c.shape for c in encoded.context] == [(1, 154, WIDTH)] * 2


def test_prompts_without_embeddings_are_bit_identical(folder: Path, encoder: CLIPTextModel) -> None:
    prompts = ["blurry", "a (red:1.2) circle, " + words(80) + " BREAK on a table"]
    with torch.inference_mode():
        plain = encode_prompts(encoder, TOK, prompts, 2, CPU)
        with_library = encode_prompts(encoder, TOK, prompts, 2, CPU, embedding_library(folder))
    for a, b in zip(plain.context, with_library.context, strict=True):
        assert torch.equal(a, b)
    assert with_library.embeddings_used == ()


def test_inputs_embeds_stand_in_for_the_token_lookup(encoder: CLIPTextModel) -> None:
    ids = torch.tensor([chunk(TOK.tokenize("a red circle"))])
    with torch.inference_mode():
        embeds = encoder.embeddings.token_embedding(ids)
        assert torch.equal(encoder(ids, 2, inputs_embeds=embeds), encoder(ids, 2))
        with pytest.raises(ValueError, match="inputs_embeds"):
            encoder(ids, 1, inputs_embeds=embeds[:, :10])


@pytest.fixture(scope="module")
def reference_encoder(
    state: dict[str, torch.Tensor], folder: Path
) -> tuple[Any, dict[str, list[int]]]:
    """transformers' text encoder with each embedding's vectors added as new token rows, and
    the new ids of each embedding."""
    reference = diffusers_models(state, TINY_TEST)[0]
    added: dict[str, list[int]] = {}
    rows = []
    for name in ("myemb", "safeemb", "oneemb"):
        (path,) = folder.glob(f"{name}.*")
        vecs = load_embedding(path).vectors
        added[name] = list(range(VOCAB + len(rows), VOCAB + len(rows) + len(vecs)))
        rows.extend(vecs)
    reference.resize_token_embeddings(VOCAB + len(rows))
    with torch.no_grad():
        reference.get_input_embeddings().weight[VOCAB:] = torch.stack(rows)
    return reference, added


def test_weights_apply_to_the_embeddings_positions(
    folder: Path, encoder: CLIPTextModel, reference_encoder: tuple[Any, dict[str, list[int]]]
) -> None:
    reference, added = reference_encoder
    prompt = "a (myemb:1.3) cat, [oneemb] " + words(70) + " safeemb"
    with torch.inference_mode():
        (got,) = encode_prompts(encoder, TOK, [prompt], 2, CPU, embedding_library(folder)).context
    a, cat, comma = TOK.tokenize("a cat ,")
    first = [a, *added["myemb"], cat, comma, *added["oneemb"], *TOK.tokenize(words(70))]
    # 1 + 3 + 2 + 1 + 70 = 77 tokens: the comma rule cuts after the comma (index 5 of 75 is
    # too far back), so the first chunk is cut at 75 and safeemb's 2 vectors open the second.
    ids = [chunk(first[:75]), chunk(first[75:] + added["safeemb"])]
    weights_first = [1.0, 1.3, 1.3, 1.3, 1.0, 1.0, 1 / 1.1] + [1.0] * 70
    w0 = [1.0, *weights_first[:75], 1.0]
    w1 = [1.0] * 77
    expected = reference_encoding(reference, ids, [w0, w1], clip_skip=2)
    assert got.shape == expected.shape == (1, 154, WIDTH)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# --- whole pipelines against diffusers ----------------------------------------------------------


@pytest.fixture(scope="module")
def pipes(
    tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor], folder: Path
) -> tuple[Any, Any]:
    """(sd_core's pipeline with the embedding library, diffusers' with the same embeddings
    loaded by `load_textual_inversion`)."""

    tmp = tmp_path_factory.mktemp("ti_pipe")
    ours = sd_core.load_pipeline(save_checkpoint(tmp / "tiny.safetensors", state, TINY_TEST))
    ours.embeddings = embedding_library(folder)
    text_encoder, vae, unet = diffusers_models(state, TINY_TEST)
    reference = diffusers_pipeline(
        text_encoder, vae, unet, hf_tokenizer(tmp / "tokenizer"), reference_scheduler()
    )
    for path in sorted(folder.iterdir()):
        reference.load_textual_inversion(str(path), token=path.stem)
    return ours, reference


def ours_images(pipe: Any, prompt: str) -> torch.Tensor:
    params = GenerationParams(
        prompt, negative_prompt="blurry", seed=21, steps=3, sampler="euler", guidance=7.5
    )
    _, latents = pipe.generate_latents(params)
    return pipe.decode_latents(latents)


@pytest.mark.parametrize("name", ["myemb", "safeemb", "oneemb"])
def test_pipeline_with_an_embedding_equals_diffusers(pipes: tuple[Any, Any], name: str) -> None:
    ours, reference = pipes
    prompt = PROMPT.format(name)
    with torch.inference_mode():
        encoded = ours.encode_text([prompt])
        expected, _ = reference.encode_prompt(prompt, CPU, 1, False)
    assert [e.name for e in encoded.embeddings_used] == [name] and encoded.warnings == ()
    torch.testing.assert_close(encoded.context[0], expected, atol=1e-5, rtol=0)

    images = ours_images(ours, prompt)
    theirs = reference(
        prompt=prompt,
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=7.5,
        height=64,
        width=64,
        generator=[torch.Generator("cpu").manual_seed(21)],
        output_type="np",
    ).images
    ours_np = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours_np, theirs, atol=1e-4, rtol=0)


def test_the_embedding_changes_the_image(pipes: tuple[Any, Any], tmp_path: Path) -> None:
    ours, _ = pipes
    library = ours.embeddings
    prompt = PROMPT.format("myemb")
    try:
        with_embedding = ours_images(ours, prompt)
        ours.embeddings = embedding_library(tmp_path)  # an empty folder: "myemb" is a word
        without = ours_images(ours, prompt)
    finally:
        ours.embeddings = library
    assert (with_embedding - without).abs().mean() > 0.02
