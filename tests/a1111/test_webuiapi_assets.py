"""Prompt syntax, LoRAs, embeddings and VAE files through `webuiapi` (the A1111 client from
PyPI) against a real uvicorn with the real engine, as an A1111 user drives them.

The asset files are made for the server's model (the built-in one, else a random tiny
checkpoint) before the server starts: a LoRA in kohya's layout on the mid block's
self-attention and the first text-encoder layer, an embedding of the model's width, one of
SD v1.x's width (skipped), and a VAE file: the model's own VAE with noise added, so the images
it decodes differ. Images are 64×64 with two steps; each comparison keeps the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sd_core
from sd_core.infotext import parse_infotext
from tests.a1111.live_server import Server, running_server, title_of, write_random_checkpoint

PROMPT = "a red circle on a blue background"
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 11, "sampler_name": "Euler a"}
LORA, EMBEDDING, WIDE, VAE = "tiny-lora", "tinyemb", "wideemb", "noisy.vae.safetensors"
UNET = "model.diffusion_model."
TEXT = "cond_stage_model.transformer.text_model."
# kohya name → the checkpoint key of the weight it patches (diffusers / transformers paths).
LORA_TARGETS = {
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (
        UNET + "middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    ),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v": (
        UNET + "middle_block.1.transformer_blocks.0.attn1.to_v.weight"
    ),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
        TEXT + "encoder.layers.0.self_attn.q_proj.weight"
    ),
    "lora_te_text_model_encoder_layers_0_mlp_fc1": TEXT + "encoder.layers.0.mlp.fc1.weight",
}
VAE_PREFIX = "first_stage_model."


def write_lora(checkpoint: Path, path: Path, rank: int = 4) -> None:
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    with safe_open(checkpoint, "pt") as source:
        for name, key in LORA_TARGETS.items():
            out_features, in_features = source.get_slice(key).get_shape()
            tensors[f"{name}.lora_down.weight"] = torch.randn(
                rank, in_features, generator=generator
            )
            tensors[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, path, metadata={"ss_network_dim": str(rank), "ss_output_name": LORA})


def write_vae(checkpoint: Path, path: Path) -> None:
    generator = torch.Generator().manual_seed(2)
    tensors = {}
    with safe_open(checkpoint, "pt") as source:
        for key in source.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if not key.startswith(VAE_PREFIX):
                continue
            tensor = source.get_tensor(key).float()
            if tensor.numel() > 1 and key.startswith(VAE_PREFIX + "decoder."):
                noise = torch.randn(tensor.shape, generator=generator)
                tensor = tensor + 0.3 * tensor.std() * noise
            tensors[key.removeprefix(VAE_PREFIX)] = tensor.contiguous()
    save_file(tensors, path)


def text_width(checkpoint: Path) -> int:
    with safe_open(checkpoint, "pt") as source:
        return int(source.get_slice(TEXT + "embeddings.token_embedding.weight").get_shape()[1])


def addnet_hash(path: Path) -> str:
    """kohya's hash of a .safetensors file's tensor data (after the header), as A1111 shows
    LoRAs: written out here rather than imported from the engine."""
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[start:]).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_of(server: Server) -> Path:
    """The server's model: the built-in one, else the random checkpoint the test wrote."""
    if server.builtin:
        return Path(sd_core.BUILTIN_MODEL_PATH)
    return server.data.parent / "models" / "tiny-random.safetensors"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("a1111-assets")
    models = root / "models"
    models.mkdir()
    checkpoint = Path(sd_core.BUILTIN_MODEL_PATH)
    if not checkpoint.exists():
        checkpoint = models / "tiny-random.safetensors"
        write_random_checkpoint(checkpoint)
    data = root / "data"
    for folder in ("loras", "embeddings", "models/VAE"):
        (data / folder).mkdir(parents=True)
    write_lora(checkpoint, data / "loras" / f"{LORA}.safetensors")
    width = text_width(checkpoint)
    generator = torch.Generator().manual_seed(3)
    save_file(
        {"emb_params": torch.randn(2, width, generator=generator)},
        data / "embeddings" / f"{EMBEDDING}.safetensors",
    )
    save_file(
        {"emb_params": torch.randn(1, 768 if width != 768 else 1024, generator=generator)},
        data / "embeddings" / f"{WIDE}.safetensors",
    )
    write_vae(checkpoint, data / "models" / "VAE" / VAE)
    with running_server(root) as running:
        yield running


@pytest.fixture(scope="module")
def api(server: Server) -> Any:
    client = server.api()
    if not server.builtin:
        client.util_set_model(title_of(client, "tiny-random"))
    return client


def pixels(result: Any) -> np.ndarray:
    assert len(result.images) == 1, result.info
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def differ(a: Any, b: Any) -> bool:
    return bool(np.abs(pixels(a) - pixels(b)).max() > 0)


def written(result: Any) -> Any:
    infotext = result.images[0].info["parameters"]
    assert result.info["infotexts"][0] == infotext
    return parse_infotext(infotext)


def test_lists(server: Server, api: Any) -> None:
    data = server.data
    assert api.get_loras() == [
        {
            "name": LORA,
            "alias": LORA,
            "path": str(data / "loras" / f"{LORA}.safetensors"),
            "metadata": {"ss_network_dim": "4", "ss_output_name": LORA},
        }
    ]
    embeddings = api.get_embeddings()
    assert set(embeddings["loaded"]) == {EMBEDDING} and set(embeddings["skipped"]) == {WIDE}
    loaded = embeddings["loaded"][EMBEDDING]
    assert (loaded["vectors"], loaded["shape"]) == (2, text_width(checkpoint_of(server)))
    assert embeddings["skipped"][WIDE]["vectors"] == 1
    assert api.get_sd_vae() == [{"model_name": VAE, "filename": str(data / "models" / "VAE" / VAE)}]
    for name in ("loras", "embeddings", "vae"):
        response = api.session.post(f"{api.baseurl}/refresh-{name}")
        assert response.status_code == 200 and response.json() is None
    assert api.get_options()["sd_vae"] == "Automatic"


def test_prompt_weights_and_clip_skip_change_the_image(api: Any) -> None:
    plain = api.txt2img(prompt=PROMPT, **SMALL)
    weighted = api.txt2img(prompt="a (red:1.3) circle on a blue background", **SMALL)
    assert differ(plain, weighted)
    skipped = api.txt2img(prompt=PROMPT, override_settings={"CLIP_stop_at_last_layers": 2}, **SMALL)
    assert differ(plain, skipped)
    assert skipped.info["clip_skip"] == 2 and written(skipped).extra["Clip skip"] == "2"
    again = api.txt2img(prompt=PROMPT, **SMALL)
    assert not differ(plain, again)  # the same request gives the same image


def test_lora_changes_the_image_and_is_hashed(server: Server, api: Any) -> None:
    plain = api.txt2img(prompt=PROMPT, **SMALL)
    with_lora = api.txt2img(prompt=f"{PROMPT} <lora:{LORA}:1>", **SMALL)
    assert differ(plain, with_lora)
    expected = addnet_hash(server.data / "loras" / f"{LORA}.safetensors")[:12]
    assert written(with_lora).extra["Lora hashes"] == f"{LORA}: {expected}"
    assert with_lora.info["warnings"] == []
    # The weights are restored after the run: the plain prompt gives the plain image again.
    assert not differ(plain, api.txt2img(prompt=PROMPT, **SMALL))


def test_missing_lora_is_a_warning_not_a_failure(api: Any) -> None:
    result = api.txt2img(prompt=f"{PROMPT} <lora:nosuch:1>", **SMALL)
    assert len(result.images) == 1
    assert any("nosuch" in warning for warning in result.info["warnings"]), result.info
    assert "Lora hashes" not in written(result).extra


def test_embedding_is_used_and_hashed(server: Server, api: Any) -> None:
    result = api.txt2img(prompt=f"a photo of {EMBEDDING}", **SMALL)
    expected = sha256(server.data / "embeddings" / f"{EMBEDDING}.safetensors")[:12]
    assert written(result).extra["TI hashes"] == f"{EMBEDDING}: {expected}"


def test_sd_vae_override_and_option(server: Server, api: Any) -> None:
    plain = api.txt2img(prompt=PROMPT, **SMALL)
    assert plain.info["sd_vae_name"] is None and "VAE" not in written(plain).extra
    noisy = api.txt2img(prompt=PROMPT, override_settings={"sd_vae": VAE}, **SMALL)
    assert differ(plain, noisy)
    expected = sha256(server.data / "models" / "VAE" / VAE)[:10]
    params = written(noisy)
    assert (params.extra["VAE"], params.extra["VAE hash"]) == (VAE, expected)
    assert (noisy.info["sd_vae_name"], noisy.info["sd_vae_hash"]) == (VAE, expected)

    # PNG Info gives the VAE back, and the infotext reproduces the image.
    assert api.png_info(noisy.images[0]).parameters["VAE"] == VAE
    body = {"infotext": noisy.info["infotexts"][0], "prompt": PROMPT}
    again = api._to_api_result(api.session.post(f"{api.baseurl}/txt2img", json=body))
    assert not differ(noisy, again) and again.info["sd_vae_name"] == VAE

    api.set_options({"sd_vae": VAE})
    try:
        assert api.get_options()["sd_vae"] == VAE
        by_option = api.txt2img(prompt=PROMPT, **SMALL)
        assert not differ(noisy, by_option) and by_option.info["sd_vae_name"] == VAE
        own = api.txt2img(prompt=PROMPT, override_settings={"sd_vae": "None"}, **SMALL)
        assert not differ(plain, own)
    finally:
        api.set_options({"sd_vae": "Automatic"})
    assert api.get_options()["sd_vae"] == "Automatic"


def test_unknown_sd_vae_is_a_422_naming_it(api: Any) -> None:
    body = {"prompt": PROMPT, **SMALL, "override_settings": {"sd_vae": "nope.vae.pt"}}
    refused = api.session.post(f"{api.baseurl}/txt2img", json=body)
    assert refused.status_code == 422
    assert "sd_vae" in refused.text and VAE in refused.text
    refused = api.session.post(f"{api.baseurl}/options", json={"sd_vae": "nope.vae.pt"})
    assert refused.status_code == 422 and "sd_vae" in refused.text
