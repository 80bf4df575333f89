"""LoRA networks in the kohya / AUTOMATIC1111 layout, applied by patching sd_core's weights.

A LoRA file holds, per patched module, a few small tensors under one name:

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha
    lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight   ...

The module names are diffusers' (UNet) and transformers' (text encoder) paths with `.` → `_`.
sd_core's modules carry the original CompVis names instead, so `unet_kohya_names` and
`text_encoder_kohya_names` derive each Linear/Conv2d's kohya name from the model instance
and its config; names spelled the CompVis way (`lora_unet_input_blocks_1_1_proj_in`, as some
LyCORIS tools write them) are accepted too.

Each layer updates one weight, W ← W + multiplier · scale · ΔW; the kinds of layer (LoRA,
LoCon, LyCORIS LoHa and LoKr) and their ΔW are in `sd_core.lora_layers`.

`applied_loras` patches the weights in place for the duration of a `with` block and restores
the original values bit for bit on the way out, also when the block raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from sd_core.lora_layers import ALPHA_KEY, NETWORK_KEYS, LoraLayer, build_layer
from sd_core.tensor_source import CheckpointError, TensorSource

if TYPE_CHECKING:
    from sd_core.clip import CLIPTextModel
    from sd_core.unet import UNetModel


class LoraError(CheckpointError):
    """A LoRA file that cannot be used (or does not fit the model), with the reason in words."""


# --- files ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Lora:
    """One LoRA file, loaded: its layers by kohya module name ("lora_unet_…", "lora_te_…").

    name: the file's stem, as prompts name it (`<lora:name:1>`).
    short_hash: what A1111 writes in "Lora hashes" (see `lora_short_hash`).
    ignored: keys of the file that are not understood (e.g. DoRA's `dora_scale`), reported as a
    warning when the LoRA is applied.
    """

    name: str
    path: Path
    short_hash: str
    layers: Mapping[str, LoraLayer] = field(repr=False)
    ignored: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False)


def addnet_hash(path: Path) -> str:
    """sha256 (hex) of a .safetensors file's tensor data: every byte after the 8-byte header
    length and the JSON header. kohya's "additional networks" hash, which A1111 uses for LoRAs
    (it does not change when only the metadata is edited)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def lora_short_hash(path: Path) -> str:
    """A1111's short LoRA hash: the addnet hash of a .safetensors, the sha256 of any other
    file; the first 12 hex digits."""
    if path.suffix.lower() == ".safetensors":
        return addnet_hash(path)[:12]
    from sd_core.checkpoint import file_sha256

    return file_sha256(path)[:12]


def load_lora(path: Path) -> Lora:
    """Read a LoRA (.safetensors, or a .pt/.ckpt of tensors only) into a `Lora`.

    Raises LoraError, naming the file and the problem, for a corrupt or truncated file, a
    pickle that holds anything but tensors (refused without running it), a file with no LoRA
    layers at all, or a layer whose factors do not fit together.
    """
    path = Path(path)
    try:
        source = TensorSource(path, "LoRA")
    except CheckpointError as e:
        raise LoraError(str(e)) from e
    groups: dict[str, dict[str, Tensor]] = {}
    ignored: list[str] = []
    keys = source.keys()
    for key in keys:
        module, _, suffix = key.partition(".")
        if suffix != ALPHA_KEY and suffix not in NETWORK_KEYS:
            ignored.append(key)
            continue
        try:
            groups.setdefault(module, {})[suffix] = source.pop(key)
        except CheckpointError as e:
            raise LoraError(str(e)) from e

    layers: dict[str, LoraLayer] = {}
    for module, tensors in groups.items():
        if set(tensors) == {ALPHA_KEY}:
            ignored.append(f"{module}.{ALPHA_KEY}")
            continue
        try:
            layers[module] = build_layer(module, tensors)
        except ValueError as e:
            raise LoraError(f"LoRA {str(path)!r}: layer {module!r}: {e}") from e
    if not layers:
        first = ", ".join(repr(k) for k in keys[:3]) or "none"
        raise LoraError(
            f"LoRA {str(path)!r} holds no LoRA layers (keys like "
            f"'<module>.lora_down.weight' and '.lora_up.weight', or LyCORIS 'hada_*'/'lokr_*'); "
            f"its first keys: {first}"
        )
    return Lora(
        name=path.stem,
        path=path,
        short_hash=lora_short_hash(path),
        layers=layers,
        ignored=tuple(ignored),
        metadata=dict(source.metadata),
    )


# --- module names ---------------------------------------------------------------------------

PATCHABLE = (nn.Linear, nn.Conv2d)
UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_text_model_"  # transformers' CLIPTextModel nests it in text_model

# diffusers' names for the insides of a block, where they differ from CompVis' (the
# SpatialTransformer's insides are named alike in both).
RESBLOCK_RENAMES = {
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
SAMPLER_RENAMES = {"op": "conv", "conv": "conv"}  # Downsample.op, Upsample.conv


def _block_layers(unet: UNetModel) -> Iterator[tuple[str, str, nn.Module]]:
    """(our path, diffusers' path, module) for each layer of each input/middle/output block.

    Level and position come from the config: the input blocks after conv_in run, per level,
    num_res_blocks × [ResBlock (+ attention)] then a Downsample (not at the last level); the
    output blocks, deepest level first, (num_res_blocks + 1) × [ResBlock (+ attention)], the
    last with an Upsample (not at the top level).
    """
    from sd_core.unet import Downsample, ResBlock, SpatialTransformer, Upsample

    per_level = unet.config.num_res_blocks + 1

    def diffusers_path(prefix: str, index: int, layer: nn.Module, ours: str) -> str:
        if isinstance(layer, ResBlock):
            return f"{prefix}.resnets.{index}"
        if isinstance(layer, SpatialTransformer):
            return f"{prefix}.attentions.{index}"
        if isinstance(layer, Downsample) and prefix.startswith("down_blocks"):
            return f"{prefix}.downsamplers.0"
        if isinstance(layer, Upsample) and prefix.startswith("up_blocks"):
            return f"{prefix}.upsamplers.0"
        raise ValueError(f"unexpected {type(layer).__name__} at {ours} for this UNet's config")

    for n, block in enumerate(unet.input_blocks):
        if n == 0:
            continue  # conv_in, named below
        level, index = divmod(n - 1, per_level)
        for m, layer in enumerate(block.children()):
            ours = f"input_blocks.{n}.{m}"
            yield ours, diffusers_path(f"down_blocks.{level}", index, layer, ours), layer
    middle = list(unet.middle_block.children())
    for m, layer in enumerate(middle):
        index = sum(isinstance(before, type(layer)) for before in middle[:m])
        ours = f"middle_block.{m}"
        yield ours, diffusers_path("mid_block", index, layer, ours), layer
    for n, block in enumerate(unet.output_blocks):
        level, index = divmod(n, per_level)
        for m, layer in enumerate(block.children()):
            ours = f"output_blocks.{n}.{m}"
            yield ours, diffusers_path(f"up_blocks.{level}", index, layer, ours), layer


def unet_kohya_names(unet: UNetModel) -> dict[str, str]:
    """Our module path → kohya name, for every Linear and Conv2d of `unet`.

    `input_blocks.1.1.transformer_blocks.0.attn1.to_q` →
    `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`;
    `output_blocks.2.2.conv` → `lora_unet_up_blocks_0_upsamplers_0_conv`.
    """
    from sd_core.unet import Downsample, ResBlock, Upsample

    diffusers = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.2": "conv_out",
    }
    for ours, theirs, layer in _block_layers(unet):
        renames: Mapping[str, str] = {}
        if isinstance(layer, ResBlock):
            renames = RESBLOCK_RENAMES
        elif isinstance(layer, Downsample | Upsample):
            renames = SAMPLER_RENAMES
        for sub, module in layer.named_modules():
            if isinstance(module, PATCHABLE):
                diffusers[f"{ours}.{sub}"] = f"{theirs}.{renames.get(sub, sub)}"
    names: dict[str, str] = {}
    for path, module in unet.named_modules():
        if isinstance(module, PATCHABLE):
            if path not in diffusers:
                raise ValueError(f"UNet module {path!r} has no diffusers name")
            names[path] = UNET_PREFIX + diffusers[path].replace(".", "_")
    return names


def text_encoder_kohya_names(text_encoder: CLIPTextModel) -> dict[str, str]:
    """Our module path → kohya name, for every Linear of the CLIP text model:
    `encoder.layers.0.self_attn.q_proj` → `lora_te_text_model_encoder_layers_0_self_attn_q_proj`.
    """
    return {
        path: TEXT_ENCODER_PREFIX + path.replace(".", "_")
        for path, module in text_encoder.named_modules()
        if isinstance(module, PATCHABLE)
    }


class _Target(NamedTuple):
    part: str  # "text encoder" or "UNet"
    path: str  # our module path
    module: nn.Module


def _targets(text_encoder: CLIPTextModel, unet: UNetModel) -> dict[str, _Target]:
    """kohya name (and the CompVis-spelled alias of each UNet name) → the module it patches."""
    modules = dict(unet.named_modules())
    targets = {
        kohya: _Target("text encoder", path, text_encoder.get_submodule(path))
        for path, kohya in text_encoder_kohya_names(text_encoder).items()
    }
    for path, kohya in unet_kohya_names(unet).items():
        target = _Target("UNet", path, modules[path])
        targets[kohya] = target
        targets.setdefault(UNET_PREFIX + path.replace(".", "_"), target)
    return targets


# --- applying -------------------------------------------------------------------------------


@contextmanager
def _editing(weight: Tensor) -> Iterator[None]:
    """Where `weight` may be changed in place: an inference tensor only inside inference
    mode, a normal one (perhaps requiring grad) outside it and without autograd."""
    if weight.is_inference():
        with torch.inference_mode():
            yield
    else:
        with torch.inference_mode(False), torch.no_grad():
            yield


def _weight(module: nn.Module) -> Tensor:
    """The module's weight, looked up now: moving a model between devices swaps its data."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _patch(module: nn.Module, updates: Sequence[tuple[LoraLayer, float]]) -> Tensor:
    """W ← W + Σ multiplier · scale · ΔW, summed in float32 on W's device, then cast to W's
    dtype; returns a copy of W as it was (same device, dtype and layout)."""
    weight = _weight(module)
    with _editing(weight):
        backup = weight.detach().clone()
        total = torch.zeros(weight.shape[0], weight[0].numel(), device=weight.device)
        for layer, multiplier in updates:
            total += layer.delta(weight.device) * multiplier
        weight.copy_(weight.float() + total.reshape(weight.shape))
    return backup


def _restore(module: nn.Module, backup: Tensor) -> None:
    weight = _weight(module)
    with _editing(weight):
        weight.copy_(backup)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@contextmanager
def applied_loras(
    text_encoder: CLIPTextModel,
    unet: UNetModel,
    loras: Sequence[tuple[Lora, float, float]],
) -> Iterator[tuple[str, ...]]:
    """Patch (lora, text-encoder multiplier, UNet multiplier) into the models for a `with` block.

    Yields the warnings met (layers of a LoRA that match nothing in these models, keys not
    understood). Every layer is checked against its weight before anything is changed: one
    that does not fit raises LoraError naming the LoRA, the layer and both shapes. A multiplier
    of 0 leaves that model untouched. On exit — also when the block raises — every patched
    weight gets back its exact original values (copies kept on the weight's device meanwhile).
    Works inside and outside `torch.inference_mode`. The models themselves change: whoever
    else uses them meanwhile sees the LoRAs too, so callers run one such block at a time.
    """
    targets = _targets(text_encoder, unet)
    plan: dict[str, tuple[nn.Module, list[tuple[LoraLayer, float]]]] = {}
    warnings: list[str] = []
    for lora, te_multiplier, unet_multiplier in loras:
        unmatched: list[str] = []
        for name, layer in lora.layers.items():
            target = targets.get(name)
            if target is None:
                unmatched.append(name)
                continue
            weight_shape = tuple(_weight(target.module).shape)
            if not layer.fits(weight_shape):
                raise LoraError(
                    f"LoRA {lora.name!r} ({str(lora.path)!r}) does not fit this model: layer "
                    f"{name!r} has shape {layer.shape}, the {target.part} weight "
                    f"{target.path!r} has shape {weight_shape}"
                )
            multiplier = te_multiplier if target.part == "text encoder" else unet_multiplier
            if multiplier != 0:
                key = f"{target.part}:{target.path}"
                plan.setdefault(key, (target.module, []))[1].append((layer, multiplier))
        if unmatched:
            warnings.append(
                f"LoRA {lora.name!r}: {_count(len(unmatched), 'layer')} "
                f"{'matches' if len(unmatched) == 1 else 'match'} nothing in this model "
                f"(first: {unmatched[0]})"
            )
        if lora.ignored:
            warnings.append(
                f"LoRA {lora.name!r}: {_count(len(lora.ignored), 'key')} not understood, "
                f"ignored (first: {lora.ignored[0]})"
            )

    backups: list[tuple[nn.Module, Tensor]] = []
    try:
        for module, updates in plan.values():
            backups.append((module, _patch(module, updates)))
        yield tuple(warnings)
    finally:
        for module, backup in reversed(backups):
            _restore(module, backup)
