"""Safe loading and saving of SD v1.x checkpoints in the original (CompVis) layout.

`.safetensors` files are read tensor by tensor; `.ckpt` files go through
`torch.load(weights_only=True)`, which refuses any pickle that would run code. The model
config comes from the file's `dali_config` metadata when present, else it is inferred from
tensor shapes, so the inpainting variant (UNet in_channels 9) and narrower fine-tunes load.
Known non-weight keys (the schedule buffers, `model_ema.decay`/`num_updates`) and
`model_ema.*` weight copies are ignored by name; anything else unexpected or missing is an
error naming the first offending keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sd_core.config import (
    CLIPConfig,
    ModelConfig,
    ScheduleConfig,
    UNetConfig,
    VAEConfig,
)
from sd_core.tensor_source import CheckpointError as CheckpointError  # callers catch it here
from sd_core.tensor_source import TensorSource

CLIP_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."
UNET_PREFIX = "model.diffusion_model."
PREFIXES = {"text_encoder": CLIP_PREFIX, "vae": VAE_PREFIX, "unet": UNET_PREFIX}

# Non-weight tensors the real v1-5-pruned-emaonly file carries (tests/fixtures/original_extra_keys.tsv).
KNOWN_EXTRA_KEYS = frozenset(
    {
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "betas",
        "log_one_minus_alphas_cumprod",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "posterior_variance",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "model_ema.decay",
        "model_ema.num_updates",
    }
)
METADATA_CONFIG_KEY = "dali_config"


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    name: str
    variant: str  # "sd-v1" | "sd-v1-inpainting"
    dtype: str
    parameters: dict[str, int]
    sha256: str
    short_hash: str  # AUTOMATIC1111's short hash: sha256[:10]
    metadata: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Family detection and config inference


def _family_error(path: Path, keys: list[str], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A message saying what the file is if it is not an SD v1.x checkpoint, else None."""
    name = repr(str(path))
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return f"checkpoint {name} is a Stable Diffusion XL model; only SD v1.x is supported"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return f"checkpoint {name} is a Stable Diffusion 2.x model (OpenCLIP text encoder); only SD v1.x is supported"
    if any(
        k.startswith(("down_blocks.", "unet.", "text_encoder.", "encoder.down_blocks."))
        for k in keys
    ):
        return f"checkpoint {name} is in the diffusers layout; convert it to the original single-file layout"
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return f"checkpoint {name} holds no Stable Diffusion UNet (no '{UNET_PREFIX}*' keys); it is not an SD v1.x checkpoint"
    to_k = shapes.get(UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if to_k is not None and to_k[1] == 1024:
        return f"checkpoint {name} is a Stable Diffusion 2.x model (context width 1024); only SD v1.x is supported"
    if UNET_PREFIX + "label_emb.0.0.weight" in shapes:
        return f"checkpoint {name} is a class-conditioned (SD 2.x unCLIP or SDXL) UNet; only SD v1.x is supported"
    return None


def config_from_metadata(text: str) -> ModelConfig:
    raw = json.loads(text)

    def build(cls: Any, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                v = values[f.name]
                kwargs[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**kwargs)

    return ModelConfig(
        name=raw.get("name", "sd-v1"),
        clip=build(CLIPConfig, raw.get("clip", {})),
        vae=build(VAEConfig, raw.get("vae", {})),
        unet=build(UNetConfig, raw.get("unet", {})),
        schedule=build(ScheduleConfig, raw.get("schedule", {})),
        native_size=int(raw.get("native_size", 512)),
        default_sampler=raw.get("default_sampler", "euler_a"),
    )


def infer_config(shapes: Mapping[str, tuple[int, ...]], name: str = "sd-v1") -> ModelConfig:
    """Derive the model config of an SD v1.x-shaped checkpoint from its tensor shapes.

    Head counts are not visible in shapes: SD v1 uses 8 UNet heads and width/64 CLIP heads.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(f"checkpoint lacks the tensor {key!r} needed to infer its config")
        return shapes[key]

    u = UNET_PREFIX
    in_ch = shape(u + "input_blocks.0.0.weight")
    model_channels, in_channels = in_ch[0], in_ch[1]
    out_channels = shape(u + "out.2.weight")[0]
    mult: list[int] = []
    attention: list[int] = []
    res_blocks_per_level: list[int] = []
    context_dim = 768
    depth = 1
    level_res, level_attn = 0, False
    i = 1
    while (
        f"{u}input_blocks.{i}.0.op.weight" in shapes
        or f"{u}input_blocks.{i}.0.in_layers.2.weight" in shapes
    ):
        if f"{u}input_blocks.{i}.0.op.weight" in shapes:  # a downsample closes a level
            res_blocks_per_level.append(level_res)
            if level_attn:
                attention.append(2 ** (len(mult) - 1))
            level_res, level_attn = 0, False
        else:
            channels = shapes[f"{u}input_blocks.{i}.0.in_layers.2.weight"][0]
            if level_res == 0:
                mult.append(channels // model_channels)
            level_res += 1
            attn_key = f"{u}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"
            if attn_key in shapes:
                level_attn = True
                context_dim = shapes[attn_key][1]
                depth = 1 + max(
                    int(m.group(1))
                    for k in shapes
                    if (
                        m := re.match(
                            rf"{re.escape(u)}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.", k
                        )
                    )
                )
        i += 1
    res_blocks_per_level.append(level_res)
    if level_attn:
        attention.append(2 ** (len(mult) - 1))
    if not mult or len(set(res_blocks_per_level)) != 1:
        raise CheckpointError("checkpoint UNet has an unrecognised block structure for SD v1.x")
    unet = UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(mult),
        num_res_blocks=res_blocks_per_level[0],
        attention_resolutions=tuple(attention),
        num_heads=8,
        context_dim=context_dim,
        transformer_depth=depth,
    )

    v = VAE_PREFIX
    base = shape(v + "encoder.conv_in.weight")[0]
    vae_mult = []
    n = 0
    while f"{v}encoder.down.{n}.block.0.conv1.weight" in shapes:
        vae_mult.append(shapes[f"{v}encoder.down.{n}.block.0.conv2.weight"][0] // base)
        n += 1
    n_res = sum(
        1
        for k in shapes
        if re.fullmatch(rf"{re.escape(v)}encoder\.down\.0\.block\.\d+\.conv1\.weight", k)
    )
    vae = VAEConfig(
        in_channels=shape(v + "encoder.conv_in.weight")[1],
        out_channels=shape(v + "decoder.conv_out.weight")[0],
        base_channels=base,
        channel_mult=tuple(vae_mult),
        num_res_blocks=n_res,
        z_channels=shape(v + "encoder.conv_out.weight")[0] // 2,
        embed_dim=shape(v + "quant_conv.weight")[0] // 2,
    )

    c = CLIP_PREFIX
    vocab, width = shape(c + "embeddings.token_embedding.weight")
    layers = 1 + max(
        (
            int(m.group(1))
            for k in shapes
            if (m := re.match(rf"{re.escape(c)}encoder\.layers\.(\d+)\.", k))
        ),
        default=-1,
    )
    clip = CLIPConfig(
        vocab_size=vocab,
        max_positions=shape(c + "embeddings.position_embedding.weight")[0],
        width=width,
        layers=layers,
        heads=max(1, width // 64),
        intermediate=shape(c + "encoder.layers.0.mlp.fc1.weight")[0],
    )
    variant = "sd-v1-inpainting" if in_channels == 9 else "sd-v1"
    return ModelConfig(name=name if name != "sd-v1" else variant, clip=clip, vae=vae, unet=unet)


def variant_of(config: ModelConfig) -> str:
    return "sd-v1-inpainting" if config.unet.in_channels == 9 else "sd-v1"


# ---------------------------------------------------------------------------------------------
# Building models


def build_models(config: ModelConfig, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Fresh (randomly initialised) text encoder, VAE and UNet for `config` on `device`."""
    from sd_core.clip import CLIPTextModel
    from sd_core.unet import UNetModel
    from sd_core.vae import AutoencoderKL

    with torch.device(device):
        return {
            "text_encoder": CLIPTextModel(config.clip),
            "vae": AutoencoderKL(config.vae),
            "unet": UNetModel(config.unet),
        }


def _split_keys(path: Path, keys: list[str], expected: set[str]) -> list[str]:
    """The keys to load; raises CheckpointError for anything missing or unexpected."""
    ignored = {k for k in keys if k in KNOWN_EXTRA_KEYS or k.startswith("model_ema.")}
    present = set(keys) - ignored
    optional = {CLIP_PREFIX + "embeddings.position_ids"}
    missing = sorted(expected - present - optional)
    unexpected = sorted(present - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})")
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the SD v1.x layout: " + "; ".join(parts)
        )
    return sorted(present & expected)


def load_models(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[ModelConfig, dict[str, nn.Module], dict[str, str]]:
    """Load the three models of a checkpoint onto `device` in `dtype`.

    Models are built on the meta device and receive the file's tensors one by one
    (`load_state_dict(assign=True)`), so no second full copy of the weights exists.
    Returns (config, {"text_encoder", "vae", "unet"}, file metadata).
    """
    source = TensorSource(path)
    keys = source.keys()
    shapes = source.shapes()
    problem = _family_error(source.path, keys, shapes)
    if problem:
        raise CheckpointError(problem)
    if METADATA_CONFIG_KEY in source.metadata:
        try:
            config = config_from_metadata(source.metadata[METADATA_CONFIG_KEY])
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has unreadable '{METADATA_CONFIG_KEY}' metadata ({e})"
            ) from e
    else:
        config = infer_config(shapes, name=source.path.stem)
    models = build_models(config, device="meta")
    expected: dict[str, tuple[int, ...]] = {}
    for component, model in models.items():
        for key, value in model.state_dict().items():
            expected[PREFIXES[component] + key] = tuple(value.shape)
    to_load = _split_keys(source.path, keys, set(expected))
    for key in to_load:
        if shapes[key] != expected[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor {key!r} has shape {list(shapes[key])}, "
                f"expected {list(expected[key])} for the inferred config"
            )
    for component, model in models.items():
        prefix = PREFIXES[component]
        state: dict[str, Tensor] = {}
        for key in to_load:
            if key.startswith(prefix):
                tensor = source.pop(key)
                if tensor.is_floating_point():
                    tensor = tensor.to(device=device, dtype=dtype)
                else:
                    tensor = tensor.to(device=device)
                state[key[len(prefix) :]] = tensor
        if component == "text_encoder":
            # Some files store position_ids as floats or not at all; it is always arange.
            n = config.clip.max_positions
            state["embeddings.position_ids"] = torch.arange(n, device=device).unsqueeze(0)
        model.load_state_dict(state, strict=True, assign=True)
        model.eval().requires_grad_(False)
    return config, models, source.metadata


# ---------------------------------------------------------------------------------------------
# Saving, hashing, inspecting


def checkpoint_state_dict(models: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """One flat state dict in the original layout from {"text_encoder", "vae", "unet"}."""
    state: dict[str, Tensor] = {}
    for component, model in models.items():
        for key, value in model.state_dict().items():
            state[PREFIXES[component] + key] = value
    return state


def save_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, Tensor],
    config: ModelConfig,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a .safetensors checkpoint in the original layout, atomically.

    The config goes into the metadata under `dali_config`, so narrow models reload exactly.
    """
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    meta = {METADATA_CONFIG_KEY: json.dumps(dataclasses.asdict(config)), "format": "pt"}
    meta.update(metadata or {})
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _iter_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached in process by (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        for chunk in _iter_chunks(p):
            h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Variant, parameter counts, dtype and hashes of a checkpoint, without building models."""
    source = TensorSource(path)
    keys = source.keys()
    shapes = source.shapes()
    problem = _family_error(source.path, keys, shapes)
    if problem:
        raise CheckpointError(problem)
    if METADATA_CONFIG_KEY in source.metadata:
        config = config_from_metadata(source.metadata[METADATA_CONFIG_KEY])
    else:
        config = infer_config(shapes, name=source.path.stem)
    counts: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    for component, prefix in PREFIXES.items():
        n = 0
        for key in keys:
            if key.startswith(prefix) and not key.endswith("position_ids"):
                numel = 1
                for s in shapes[key]:
                    numel *= s
                n += numel
                dt = source.dtype_name(key).lower()
                dtypes[dt] = dtypes.get(dt, 0) + numel
        counts[component] = n
    sha = file_sha256(source.path)
    dtype = max(dtypes, key=lambda d: dtypes[d]) if dtypes else "unknown"
    names = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
    return CheckpointInfo(
        path=source.path,
        name=source.metadata.get("dali_name", source.path.stem),
        variant=variant_of(config),
        dtype=names.get(dtype, dtype),
        parameters=counts,
        sha256=sha,
        short_hash=sha[:10],
        metadata=source.metadata,
    )
