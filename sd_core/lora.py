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

Each layer updates one weight W (out, in) or (out, in, kh, kw):

    W ← W + multiplier · scale · ΔW,   scale = alpha / rank (1 when the file has no alpha)

LoRA / LoCon: ΔW = up @ down (a conv's factors flattened to matrices; with a LyCORIS `lora_mid`
Tucker core, up · mid · down). LyCORIS LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b). LyCORIS LoKr:
ΔW = w1 ⊗ w2 (Kronecker), each factor whole or a low-rank product.

`applied_loras` patches the weights in place for the duration of a `with` block and restores
the original values bit for bit on the way out, also when the block raises.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from sd_core.tensor_source import CheckpointError, TensorSource

if TYPE_CHECKING:
    from sd_core.clip import CLIPTextModel
    from sd_core.unet import UNetModel


class LoraError(CheckpointError):
    """A LoRA file that cannot be used (or does not fit the model), with the reason in words."""


# --- layers ---------------------------------------------------------------------------------


class LoraLayer(ABC):
    """The update of one Linear or Conv2d weight.

    `delta` gives ΔW as an (out_features, fan_in) float32 matrix, fan_in = in · kh · kw, which
    the caller reshapes to the weight's shape; `kernel` is (kh, kw) where the factors show it,
    else None (a Linear-shaped factor fits a 1×1 conv, a flattened one any kernel).
    """

    name: str
    alpha: float | None

    @property
    @abstractmethod
    def rank(self) -> int | None:
        """The rank that `alpha` is divided by; None where the layer has none (whole LoKr)."""

    @property
    @abstractmethod
    def out_features(self) -> int: ...

    @property
    @abstractmethod
    def fan_in(self) -> int: ...

    @property
    @abstractmethod
    def kernel(self) -> tuple[int, int] | None: ...

    @abstractmethod
    def product(self, device: torch.device) -> Tensor:
        """ΔW before scaling: (out_features, fan_in) float32 on `device`."""

    @property
    def scale(self) -> float:
        """alpha / rank, or 1 when the file stores no alpha (kohya's and A1111's rule)."""
        if self.alpha is None or not self.rank:
            return 1.0
        return self.alpha / self.rank

    def delta(self, device: torch.device) -> Tensor:
        """scale · ΔW: (out_features, fan_in) float32 on `device`."""
        return self.product(device) * self.scale

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight shape this layer updates: (out, in, kh, kw) if the kernel is known, else
        (out, fan_in)."""
        if self.kernel is None:
            return (self.out_features, self.fan_in)
        kh, kw = self.kernel
        return (self.out_features, self.fan_in // (kh * kw), kh, kw)

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        """Whether ΔW can be added to a weight of `weight_shape` (Linear (out, in) or Conv2d
        (out, in, kh, kw))."""
        kernel = tuple(weight_shape[2:]) if len(weight_shape) == 4 else (1, 1)
        return (
            weight_shape[0] == self.out_features
            and math.prod(weight_shape[1:]) == self.fan_in
            and (self.kernel is None or self.kernel == kernel)
        )


def _f32(tensor: Tensor, device: torch.device) -> Tensor:
    return tensor.to(device=device, dtype=torch.float32)


def _tucker(core: Tensor, out_factor: Tensor, in_factor: Tensor) -> Tensor:
    """core (r1, r2, kh, kw), out_factor (out, r1), in_factor (r2, in) → (out, in, kh, kw)."""
    return torch.einsum("abkl,oa,bi->oikl", core, out_factor, in_factor)


@dataclass(frozen=True, eq=False)
class LowRankLayer(LoraLayer):
    """kohya LoRA / LyCORIS LoCon: ΔW = up @ down, with a Tucker core up · mid · down.

    down: (rank, in) for a Linear, (rank, in, kh, kw) for a Conv2d ((rank, in, 1, 1) with mid)
    up: (out, rank), or (out, rank, 1, 1) for a Conv2d
    mid: None, or (rank_up, rank_down, kh, kw) — LyCORIS' `lora_mid` for a kh×kw conv
    """

    name: str
    down: Tensor = field(repr=False)
    up: Tensor = field(repr=False)
    alpha: float | None = None
    mid: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def kernel(self) -> tuple[int, int] | None:
        source = self.mid if self.mid is not None else self.down
        return (int(source.shape[2]), int(source.shape[3])) if source.ndim == 4 else None

    @property
    def fan_in(self) -> int:
        kh, kw = self.kernel or (1, 1)
        return int(self.down.shape[1]) * kh * kw

    def product(self, device: torch.device) -> Tensor:
        up = _f32(self.up, device).flatten(1)  # (out, rank)
        down = _f32(self.down, device).flatten(1)  # (rank, in · kh · kw), or (rank, in) with mid
        if self.mid is None:
            return up @ down
        return _tucker(_f32(self.mid, device), up, down).flatten(1)


@dataclass(frozen=True, eq=False)
class LohaLayer(LoraLayer):
    """LyCORIS LoHa: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b), rank = w1_b's rows.

    Plain: w1_a, w2_a (out, r); w1_b, w2_b (r, in · kh · kw).
    Tucker (t1 and t2 (r, r, kh, kw) given): w1_a, w2_a (r, out); w1_b, w2_b (r, in); each
    factor is then core ×₁ w_aᵀ ×₂ w_bᵀ (the mode products of LyCORIS).
    """

    name: str
    w1_a: Tensor = field(repr=False)
    w1_b: Tensor = field(repr=False)
    w2_a: Tensor = field(repr=False)
    w2_b: Tensor = field(repr=False)
    alpha: float | None = None
    t1: Tensor | None = field(default=None, repr=False)
    t2: Tensor | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.w1_a.shape[1] if self.t1 is not None else self.w1_a.shape[0])

    @property
    def kernel(self) -> tuple[int, int] | None:
        return None if self.t1 is None else (int(self.t1.shape[2]), int(self.t1.shape[3]))

    @property
    def fan_in(self) -> int:
        kh, kw = self.kernel or (1, 1)
        return int(math.prod(self.w1_b.shape[1:])) * kh * kw

    def _factor(self, a: Tensor, b: Tensor, core: Tensor | None, device: torch.device) -> Tensor:
        if core is None:
            return _f32(a, device) @ _f32(b, device).flatten(1)
        return _tucker(_f32(core, device), _f32(a, device).T, _f32(b, device)).flatten(1)

    def product(self, device: torch.device) -> Tensor:
        first = self._factor(self.w1_a, self.w1_b, self.t1, device)
        return first * self._factor(self.w2_a, self.w2_b, self.t2, device)


@dataclass(frozen=True, eq=False)
class LokrLayer(LoraLayer):
    """LyCORIS LoKr: ΔW = w1 ⊗ w2 (Kronecker product of the two as matrices).

    w1: (a, b), or w1_a (a, r) @ w1_b (r, b)
    w2: (c, d) or (c, d, kh, kw), or w2_a (c, r) @ w2_b (r, d · kh · kw), or with a Tucker
        core t2 (r, r, kh, kw): w2_a (r, c), w2_b (r, d)
    ΔW: (a · c, b · d · kh · kw); rank (for alpha) = w1_b's rows, else w2_b's, else none.
    """

    name: str
    w1: Tensor | None = field(default=None, repr=False)
    w1_a: Tensor | None = field(default=None, repr=False)
    w1_b: Tensor | None = field(default=None, repr=False)
    w2: Tensor | None = field(default=None, repr=False)
    w2_a: Tensor | None = field(default=None, repr=False)
    w2_b: Tensor | None = field(default=None, repr=False)
    t2: Tensor | None = field(default=None, repr=False)
    alpha: float | None = None

    @property
    def rank(self) -> int | None:
        for b in (self.w1_b, self.w2_b):
            if b is not None:
                return int(b.shape[0])
        return None

    def _w1_shape(self) -> tuple[int, int]:
        if self.w1 is not None:
            return (int(self.w1.shape[0]), int(self.w1.shape[1]))
        assert self.w1_a is not None and self.w1_b is not None
        return (int(self.w1_a.shape[0]), int(self.w1_b.shape[1]))

    def _w2_shape(self) -> tuple[int, int]:
        """w2 as a matrix: (c, d · kh · kw)."""
        if self.w2 is not None:
            return (int(self.w2.shape[0]), int(math.prod(self.w2.shape[1:])))
        assert self.w2_a is not None and self.w2_b is not None
        if self.t2 is not None:
            kh, kw = self.t2.shape[2:]
            return (int(self.w2_a.shape[1]), int(self.w2_b.shape[1]) * kh * kw)
        return (int(self.w2_a.shape[0]), int(math.prod(self.w2_b.shape[1:])))

    @property
    def out_features(self) -> int:
        return self._w1_shape()[0] * self._w2_shape()[0]

    @property
    def fan_in(self) -> int:
        return self._w1_shape()[1] * self._w2_shape()[1]

    @property
    def kernel(self) -> tuple[int, int] | None:
        source = self.t2 if self.t2 is not None else self.w2
        if source is None or source.ndim != 4:
            return None
        return (int(source.shape[2]), int(source.shape[3]))

    def product(self, device: torch.device) -> Tensor:
        if self.w1 is not None:
            w1 = _f32(self.w1, device)
        else:
            assert self.w1_a is not None and self.w1_b is not None
            w1 = _f32(self.w1_a, device) @ _f32(self.w1_b, device)
        if self.w2 is not None:
            w2 = _f32(self.w2, device).flatten(1)
        else:
            assert self.w2_a is not None and self.w2_b is not None
            a, b = _f32(self.w2_a, device), _f32(self.w2_b, device).flatten(1)
            w2 = a @ b if self.t2 is None else _tucker(_f32(self.t2, device), a.T, b).flatten(1)
        # kron of (a, b) and (c, d·kh·kw) flattened row-major equals the 4-D kron flattened,
        # so the conv layout comes out right after the caller's reshape.
        return torch.kron(w1, w2)


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


LOW_RANK_KEYS = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid"}
LOHA_KEYS = {f"hada_{k}": k for k in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")}
LOKR_KEYS = {f"lokr_{k}": k for k in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}
NETWORK_KEYS = {**LOW_RANK_KEYS, **LOHA_KEYS, **LOKR_KEYS}
ALPHA_KEY = "alpha"


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
            layers[module] = _build_layer(module, tensors)
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


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in t.shape)


def _build_layer(name: str, tensors: Mapping[str, Tensor]) -> LoraLayer:
    """The layer described by one module's tensors (suffix → tensor); ValueError saying why
    when they do not form one."""
    alpha: float | None = None
    if ALPHA_KEY in tensors:
        value = tensors[ALPHA_KEY]
        if value.numel() != 1:
            raise ValueError(f"alpha must be one number; it has shape {_shape(value)}")
        alpha = float(value.float().reshape(()))
    parts = set(tensors) - {ALPHA_KEY}
    for suffix in sorted(parts):
        if not tensors[suffix].is_floating_point():
            raise ValueError(f"{suffix} has dtype {tensors[suffix].dtype}, not a float type")

    layer: LoraLayer
    if parts <= LOW_RANK_KEYS.keys():
        t = {LOW_RANK_KEYS[s]: tensors[s] for s in parts}
        _require(t, "down", "up", spelling="lora_{}.weight")
        down, up = t["down"], t["up"]
        if "mid" not in t and up.ndim >= 2 and down.ndim >= 1 and up.shape[1] != down.shape[0]:
            raise ValueError(
                f"lora_up {_shape(up)} does not fit lora_down {_shape(down)}: "
                f"rank {up.shape[1]} vs {down.shape[0]}"
            )
        layer = LowRankLayer(name, down, up, alpha, t.get("mid"))
    elif parts <= LOHA_KEYS.keys():
        t = {LOHA_KEYS[s]: tensors[s] for s in parts}
        _require(t, "w1_a", "w1_b", "w2_a", "w2_b", spelling="hada_{}")
        if ("t1" in t) != ("t2" in t):
            raise ValueError("hada_t1 and hada_t2 come together or not at all")
        layer = LohaLayer(
            name, t["w1_a"], t["w1_b"], t["w2_a"], t["w2_b"], alpha, t.get("t1"), t.get("t2")
        )
    elif parts <= LOKR_KEYS.keys():
        t = {LOKR_KEYS[s]: tensors[s] for s in parts}
        for i in ("1", "2"):
            present = (f"w{i}" in t, f"w{i}_a" in t, f"w{i}_b" in t)
            if present not in ((True, False, False), (False, True, True)):
                raise ValueError(f"needs either lokr_w{i} or both lokr_w{i}_a and lokr_w{i}_b")
        if "t2" in t and "w2" in t:
            raise ValueError("lokr_t2 belongs to lokr_w2_a and lokr_w2_b, not to lokr_w2")
        layer = LokrLayer(name, **t, alpha=alpha)
    else:
        raise ValueError(f"it mixes keys of different network kinds: {sorted(parts)}")

    # Multiply the factors out on the meta device (shapes only, no data): whatever does not
    # fit together fails here, with every shape named.
    try:
        product = layer.product(torch.device("meta"))
        fitting = tuple(product.shape) == (layer.out_features, layer.fan_in)
    except (RuntimeError, IndexError, ValueError):
        fitting = False
    if not fitting:
        shapes = ", ".join(f"{s} {_shape(tensors[s])}" for s in sorted(parts))
        raise ValueError(f"its factors do not fit together: {shapes}")
    return layer


def _require(t: Mapping[str, Tensor], *names: str, spelling: str) -> None:
    """ValueError unless `t` has all `names`; `spelling` ("lora_{}.weight") gives the keys."""
    missing = [spelling.format(n) for n in names if n not in t]
    if missing:
        present = sorted(spelling.format(k) for k in t)
        raise ValueError(f"{' and '.join(missing)} missing (it has {present})")


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
