"""Test helpers: random SD v1.x checkpoints and the reference models that read them.

The oracle for `sd_core`'s networks is diffusers + transformers. A random checkpoint in the
original (LDM) layout is built from sd_core's own module trees, loaded into sd_core by plain
`load_state_dict`, and into the reference models through diffusers' own single-file converters,
so no test holds a hand-written key mapping.

    checkpoint = random_checkpoint(TINY_TEST, seed=0)
    text_encoder, vae, unet = diffusers_models(checkpoint, TINY_TEST)
    clip, autoencoder, unet_model = sd_core_models(checkpoint, TINY_TEST)

sd_core's models and diffusers' VAE and UNet share storage with `checkpoint` (they are built on
the meta device and the tensors are assigned, not copied), so a full-size UNet costs its 3.4 GB
once, not three times; nothing here mutates weights, so sharing is safe. transformers'
CLIPTextModel gets a copy (its non-persistent position_ids buffer needs a real build). All
models are returned in eval mode with `requires_grad=False`; `model.to(...)` makes copies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sd_core import clip as sd_clip
from sd_core import unet as sd_unet
from sd_core import vae as sd_vae
from sd_core.config import ModelConfig

PARTS = ("clip", "vae", "unet")
PREFIXES = {
    "clip": sd_clip.CHECKPOINT_PREFIX,
    "vae": sd_vae.CHECKPOINT_PREFIX,
    "unet": sd_unet.CHECKPOINT_PREFIX,
}

# Scales of the random weights: matrices ~ N(0, 1/fan_in) keep activations O(1) through the
# depth; norm gains ~ 1 + N(0, 0.2²) and biases ~ N(0, 0.1²) are non-trivial, so a swapped or
# ignored norm/bias shows up. Layers the original zero-initialises (out convs, proj_out) get the
# same treatment, so every path contributes to the output.
NORM_GAIN_STD = 0.2
BIAS_STD = 0.1


def _sd_core_model(part: str, config: ModelConfig) -> nn.Module:
    if part == "clip":
        return sd_clip.CLIPTextModel(config.clip)
    if part == "vae":
        return sd_vae.AutoencoderKL(config.vae)
    if part == "unet":
        return sd_unet.UNetModel(config.unet)
    raise ValueError(f"part={part!r} is not one of {PARTS}")


def random_part(part: str, config: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random weights for one of `PARTS`, with prefixed (original-layout) keys, float32 CPU.

    Built from sd_core's module tree on the meta device, so no default init runs.
    """
    with torch.device("meta"):
        model = _sd_core_model(part, config)
    # One stream per (seed, part): a part's weights do not depend on which other parts are built.
    generator = torch.Generator().manual_seed(seed * len(PARTS) + PARTS.index(part))
    prefix = PREFIXES[part]
    out: dict[str, Tensor] = {}
    for name, meta in model.state_dict().items():
        shape = tuple(meta.shape)
        if name == "embeddings.position_ids":
            tensor = torch.arange(shape[1], dtype=torch.int64).reshape(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            tensor = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif name.endswith("weight"):  # GroupNorm / LayerNorm gain
            tensor = 1.0 + NORM_GAIN_STD * torch.randn(shape, generator=generator)
        else:
            tensor = BIAS_STD * torch.randn(shape, generator=generator)
        out[prefix + name] = tensor
    return out


def random_checkpoint(config: ModelConfig, seed: int = 0) -> dict[str, Tensor]:
    """One flat random state dict in the original layout: UNet, VAE and CLIP (+ position_ids)."""
    checkpoint: dict[str, Tensor] = {}
    for part in PARTS:
        checkpoint.update(random_part(part, config, seed))
    return checkpoint


def _strip(checkpoint: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in checkpoint.items() if k.startswith(prefix)}


def _load_strict(model: nn.Module, state: dict[str, Tensor], what: str, assign: bool) -> None:
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    assert not missing and not unexpected, (
        f"{what}: missing keys {missing[:10]} (of {len(missing)}), "
        f"unexpected keys {unexpected[:10]} (of {len(unexpected)})"
    )
    model.load_state_dict(state, strict=True, assign=assign)
    model.eval().requires_grad_(False)


# --- sd_core ------------------------------------------------------------------------------------


def sd_core_part(part: str, checkpoint: dict[str, Tensor], config: ModelConfig) -> nn.Module:
    with torch.device("meta"):
        model = _sd_core_model(part, config)
    _load_strict(model, _strip(checkpoint, PREFIXES[part]), f"sd_core {part}", assign=True)
    return model


def sd_core_models(
    checkpoint: dict[str, Tensor], config: ModelConfig
) -> tuple[sd_clip.CLIPTextModel, sd_vae.AutoencoderKL, sd_unet.UNetModel]:
    """sd_core's three models with the checkpoint's weights (prefixes stripped, strict load)."""
    text = sd_core_part("clip", checkpoint, config)
    vae = sd_core_part("vae", checkpoint, config)
    unet = sd_core_part("unet", checkpoint, config)
    assert isinstance(text, sd_clip.CLIPTextModel)
    assert isinstance(vae, sd_vae.AutoencoderKL)
    assert isinstance(unet, sd_unet.UNetModel)
    return text, vae, unet


# --- diffusers / transformers -------------------------------------------------------------------


def ldm_original_config(config: ModelConfig) -> dict[str, Any]:
    """The parts of an LDM yaml (`v1-inference.yaml`) that diffusers' config builders read."""
    unet, vae = config.unet, config.vae
    return {
        "model": {
            "params": {
                "scale_factor": vae.scale_factor,
                "unet_config": {
                    "params": {
                        "in_channels": unet.in_channels,
                        "out_channels": unet.out_channels,
                        "model_channels": unet.model_channels,
                        "attention_resolutions": list(unet.attention_resolutions),
                        "num_res_blocks": unet.num_res_blocks,
                        "channel_mult": list(unet.channel_mult),
                        "num_heads": unet.num_heads,
                        "transformer_depth": unet.transformer_depth,
                        "context_dim": unet.context_dim,
                        "use_linear_in_transformer": False,
                    }
                },
                "first_stage_config": {
                    "params": {
                        "embed_dim": vae.embed_dim,
                        "ddconfig": {
                            "double_z": True,
                            "z_channels": vae.z_channels,
                            "in_channels": vae.in_channels,
                            "out_ch": vae.out_channels,
                            "ch": vae.base_channels,
                            "ch_mult": list(vae.channel_mult),
                            "num_res_blocks": vae.num_res_blocks,
                            "attn_resolutions": [],
                        },
                    }
                },
            }
        }
    }


def _use_classic_attention(model: Any) -> None:
    """Make a diffusers model compute attention as explicit softmax(QKᵀ/√d)V (no SDPA), so the
    reference does not share sd_core's attention kernel."""
    from diffusers.models.attention_processor import AttnProcessor

    model.set_attn_processor(AttnProcessor())


def diffusers_unet(
    checkpoint: dict[str, Tensor], config: ModelConfig, *, sdpa: bool = False
) -> Any:
    """diffusers `UNet2DConditionModel` loaded through `convert_ldm_unet_checkpoint`."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config_from_ldm,
    )

    unet_config = create_unet_diffusers_config_from_ldm(ldm_original_config(config), checkpoint)
    unet_config["norm_num_groups"] = config.unet.norm_groups
    with torch.device("meta"):
        model = UNet2DConditionModel(**unet_config)
    state = convert_ldm_unet_checkpoint(checkpoint, unet_config)
    _load_strict(model, state, "diffusers UNet2DConditionModel", assign=True)
    if not sdpa:
        _use_classic_attention(model)
    return model


def diffusers_vae(checkpoint: dict[str, Tensor], config: ModelConfig, *, sdpa: bool = False) -> Any:
    """diffusers `AutoencoderKL` loaded through `convert_ldm_vae_checkpoint`."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    vae_config = create_vae_diffusers_config_from_ldm(ldm_original_config(config), checkpoint)
    vae_config["norm_num_groups"] = config.vae.norm_groups
    with torch.device("meta"):
        model = AutoencoderKL(**vae_config)
    state = convert_ldm_vae_checkpoint(checkpoint, vae_config)
    _load_strict(model, state, "diffusers AutoencoderKL", assign=True)
    if not sdpa:
        _use_classic_attention(model)
    return model


def diffusers_text_encoder(
    checkpoint: dict[str, Tensor], config: ModelConfig, *, sdpa: bool = False
) -> Any:
    """transformers `CLIPTextModel` loaded through `convert_ldm_clip_checkpoint`."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    clip = config.clip
    text_config = CLIPTextConfig(
        vocab_size=clip.vocab_size,
        hidden_size=clip.width,
        intermediate_size=clip.intermediate,
        num_hidden_layers=clip.layers,
        num_attention_heads=clip.heads,
        max_position_embeddings=clip.max_positions,
        hidden_act=clip.activation,
        layer_norm_eps=clip.layer_norm_eps,
    )
    text_config._attn_implementation = "sdpa" if sdpa else "eager"
    # Built on the CPU, not meta: its position_ids buffer is not persistent, so a meta build
    # would never receive real values.
    model = CLIPTextModel(text_config)
    state = convert_ldm_clip_checkpoint(checkpoint)
    # transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel's keys.
    if not hasattr(model, "text_model"):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    # The original stores position_ids; transformers keeps it as a non-persistent buffer.
    for key in ("embeddings.position_ids", "text_model.embeddings.position_ids"):
        if key in state and key not in model.state_dict():
            assert torch.equal(state.pop(key), model.embeddings.position_ids.to(torch.int64))
    _load_strict(model, state, "transformers CLIPTextModel", assign=False)
    return model


def diffusers_models(
    checkpoint: dict[str, Tensor], config: ModelConfig, *, sdpa: bool = False
) -> tuple[Any, Any, Any]:
    """(transformers CLIPTextModel, diffusers AutoencoderKL, diffusers UNet2DConditionModel).

    By default the references compute attention the classic way (explicit softmax); pass
    `sdpa=True` to use their SDPA paths (faster, and what a timing comparison should use).
    """
    return (
        diffusers_text_encoder(checkpoint, config, sdpa=sdpa),
        diffusers_vae(checkpoint, config, sdpa=sdpa),
        diffusers_unet(checkpoint, config, sdpa=sdpa),
    )


# --- comparison ---------------------------------------------------------------------------------


def relative_error(actual: Tensor, reference: Tensor) -> float:
    """max |actual - reference| / max(1, max |reference|), computed in float64."""
    assert actual.shape == reference.shape, (
        f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    )
    a, r = actual.detach().double(), reference.detach().double()
    return float((a - r).abs().max() / max(1.0, float(r.abs().max())))


def assert_matches(actual: Tensor, reference: Tensor, tolerance: float = 1e-4) -> float:
    """Assert `relative_error(actual, reference) <= tolerance`; return the error."""
    error = relative_error(actual, reference)
    assert error <= tolerance, (
        f"relative error {error:.3e} > {tolerance:.0e} (reference max abs "
        f"{float(reference.abs().max()):.3e})"
    )
    return error


def diffusers_pipeline(
    text_encoder: Any, vae: Any, unet: Any, tokenizer: Any, scheduler: Any,
    cls_name: str = "StableDiffusionPipeline",
) -> Any:  # fmt: skip
    """A diffusers pipeline of class `cls_name` over the given models, without the safety
    checker and progress bars."""
    import diffusers

    pipe = getattr(diffusers, cls_name)(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_scheduler(cls_name: str = "EulerDiscreteScheduler", **extra: Any) -> Any:
    """A diffusers scheduler with SD v1.x's schedule (`tests/fixtures/scheduler_config.json`)."""
    import json
    from pathlib import Path

    import diffusers

    config = json.loads((Path(__file__).parent / "fixtures" / "scheduler_config.json").read_text())
    return getattr(diffusers, cls_name).from_config({**config, **extra})
