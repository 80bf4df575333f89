"""Checkpoint loading: formats, wrappers, dtypes, ignored keys, config inference, refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd_core.checkpoint import (
    CLIP_PREFIX,
    UNET_PREFIX,
    CheckpointError,
    build_models,
    checkpoint_info,
    checkpoint_state_dict,
    load_models,
    save_checkpoint,
)
from sd_core.config import TINY_TEST, UNetConfig

EXTRA_KEYS = [
    line.split("\t")[0]
    for line in (Path(__file__).parent.parent / "fixtures" / "original_extra_keys.tsv")
    .read_text()
    .splitlines()
    if line.strip()
]


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = checkpoint_state_dict(build_models(TINY_TEST))
    return {k: v.clone() for k, v in state.items()}


def _assert_loaded_equal(models: dict, state: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    loaded = checkpoint_state_dict(models)
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key].float(), value.float(), atol=atol, rtol=0)


def test_safetensors_round_trip_reads_config_from_metadata(tmp_path, tiny_state):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_state, TINY_TEST, {"dali_name": "t"})
    config, models, metadata = load_models(path)
    assert config == TINY_TEST  # heads come from metadata: shapes alone cannot tell them
    assert metadata["dali_name"] == "t"
    _assert_loaded_equal(models, tiny_state)
    assert not any(p.requires_grad for p in models["unet"].parameters())


def test_config_is_inferred_from_shapes_without_metadata(tmp_path, tiny_state):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    config, models, _ = load_models(path)
    assert config.unet == TINY_TEST.unet
    assert config.vae == TINY_TEST.vae
    assert dataclasses.replace(config.clip, heads=TINY_TEST.clip.heads) == TINY_TEST.clip
    _assert_loaded_equal(models, tiny_state)


@pytest.mark.parametrize("wrapped", [True, False])
def test_ckpt_fp16_with_extra_and_ema_keys(tmp_path, tiny_state, wrapped):
    state: dict[str, torch.Tensor] = {k: v.half() for k, v in tiny_state.items()}
    for key in EXTRA_KEYS:
        state[key] = torch.zeros(1000) if not key.startswith("model_ema") else torch.tensor(0)
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(3)
    obj = {"state_dict": state, "global_step": 470000} if wrapped else state
    path = tmp_path / "m.ckpt"
    torch.save(obj, path)
    config, models, _ = load_models(path, dtype=torch.float32)
    assert next(models["unet"].parameters()).dtype == torch.float32
    _assert_loaded_equal(models, {k: v.half().float() for k, v in tiny_state.items()})
    _, models16, _ = load_models(path, dtype=torch.float16)
    assert next(models16["vae"].parameters()).dtype == torch.float16


def test_position_ids_may_be_missing_or_float(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state[CLIP_PREFIX + "embeddings.position_ids"]
    path = save_checkpoint(tmp_path / "a.safetensors", state, TINY_TEST)
    _, models, _ = load_models(path)
    assert models["text_encoder"].embeddings.position_ids.tolist() == [list(range(77))]
    state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(77.0)[None]
    path = save_checkpoint(tmp_path / "b.safetensors", state, TINY_TEST)
    _, models, _ = load_models(path)
    assert models["text_encoder"].embeddings.position_ids.dtype == torch.int64


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": Exploit()}}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_models(path)
    assert not marker.exists()
    torch.save({"state_dict": {"x": Exploit()}}, tmp_path / "evil2.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load_models(tmp_path / "evil2.ckpt")
    assert not marker.exists()


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state[UNET_PREFIX + "out.2.bias"]
    state["model.diffusion_model.surprise.weight"] = torch.zeros(2)
    path = save_checkpoint(tmp_path / "m.safetensors", state, TINY_TEST)
    with pytest.raises(CheckpointError) as e:
        load_models(path)
    message = str(e.value)
    assert "1 missing" in message and "out.2.bias" in message
    assert "1 unexpected" in message and "surprise.weight" in message


def test_wrong_shape_is_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    key = UNET_PREFIX + "out.2.bias"
    state[key] = torch.zeros(5)
    path = save_checkpoint(tmp_path / "m.safetensors", state, TINY_TEST)
    with pytest.raises(CheckpointError, match="out.2.bias"):
        load_models(path)


@pytest.mark.parametrize(
    ("key", "shape", "family"),
    [
        ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", (768,), "XL"),
        ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", (3072, 1024), "2.x"),
        ("down_blocks.0.resnets.0.conv1.weight", (320, 320, 3, 3), "diffusers layout"),
        ("some.other.model.weight", (3, 3), "not an SD v1.x"),
    ],
)
def test_other_families_are_refused_by_name(tmp_path, key, shape, family):
    path = tmp_path / "other.safetensors"
    save_file(
        {key: torch.zeros(shape), "model.diffusion_model.x": torch.zeros(1)}
        if family == "2.x"
        else {key: torch.zeros(shape)},
        str(path),
    )
    with pytest.raises(CheckpointError, match=family):
        load_models(path)


def test_sd2_context_width_is_refused(tmp_path):
    key = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    path = tmp_path / "sd2.safetensors"
    save_file({key: torch.zeros(320, 1024)}, str(path))
    with pytest.raises(CheckpointError, match="2.x"):
        load_models(path)


def test_missing_truncated_and_misnamed_files(tmp_path, tiny_state):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_models(tmp_path / "nope.safetensors")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        load_models(tmp_path / "m.bin")
    good = save_checkpoint(tmp_path / "good.safetensors", tiny_state, TINY_TEST)
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_models(tmp_path / "cut.safetensors")
    torch.save(tiny_state, tmp_path / "good.ckpt")
    raw = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_models(tmp_path / "cut.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        load_models(tmp_path / "junk.safetensors")


def test_inpainting_variant_is_inferred(tmp_path):
    config = dataclasses.replace(TINY_TEST, unet=dataclasses.replace(TINY_TEST.unet, in_channels=9))
    state = checkpoint_state_dict(build_models(config))
    path = tmp_path / "inpaint.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, models, _ = load_models(path)
    assert loaded.unet.in_channels == 9
    assert isinstance(loaded.unet, UNetConfig)
    assert checkpoint_info(path).variant == "sd-v1-inpainting"


def test_checkpoint_info_counts_and_hashes(tmp_path, tiny_state):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_state, TINY_TEST)
    info = checkpoint_info(path)
    assert info.variant == "sd-v1"
    assert info.dtype == "float32"
    models = build_models(TINY_TEST)
    assert info.parameters["unet"] == sum(p.numel() for p in models["unet"].parameters())
    assert info.parameters["vae"] == sum(p.numel() for p in models["vae"].parameters())
    assert info.parameters["text_encoder"] == sum(
        p.numel() for p in models["text_encoder"].parameters()
    )
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.sha256 == sha and info.short_hash == sha[:10]
