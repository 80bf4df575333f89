"""Noise-prediction UNet of Stable Diffusion v1.x (LDM `openaimodel.UNetModel`).

The module tree mirrors the checkpoint: `model.state_dict()` keys are the checkpoint keys with
`CHECKPOINT_PREFIX` removed (`time_embed.0.weight`, `input_blocks.1.0.in_layers.2.weight`,
`input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight`, `middle_block.1.proj_in.weight`,
`output_blocks.2.2.conv.weight`, `out.2.bias`, ...). Parameter-less slots (SiLU, Dropout) are
kept so that the Sequential indices match.

Layout: `input_blocks` = [conv_in] + per level (num_res_blocks × [ResBlock (+ SpatialTransformer)]
then a Downsample except at the last level); `middle_block` = ResBlock, SpatialTransformer,
ResBlock; `output_blocks` = per level, deepest first, (num_res_blocks + 1) × [ResBlock on the
concatenated skip (+ SpatialTransformer)] with an Upsample after the last one except at full
resolution; `out` = GroupNorm, SiLU, conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_core.config import UNetConfig

CHECKPOINT_PREFIX = "model.diffusion_model."

# Numbers of the original architecture that UNetConfig does not carry.
RESBLOCK_NORM_EPS = 1e-5  # LDM's GroupNorm32 keeps torch's default eps
TRANSFORMER_NORM_EPS = 1e-6  # SpatialTransformer's input GroupNorm
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms (torch's default)
FF_MULT = 4  # GEGLU feed-forward inner width = FF_MULT × channels
MAX_PERIOD = 10000.0  # longest wavelength of the sinusoidal timestep embedding


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """(B,) float timesteps → (B, dim) float32 sinusoidal embedding, cos half first.

    freqs_i = exp(-ln(MAX_PERIOD) * i / half) for i < half = dim // 2; no frequency shift.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent * (-math.log(MAX_PERIOD) / half))
    args = timesteps.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int, groups: int, eps: float) -> nn.GroupNorm:
    if channels % groups != 0:
        raise ValueError(
            f"UNetConfig.norm_groups={groups} must divide every channel count; got {channels}"
        )
    return nn.GroupNorm(groups, channels, eps=eps)


class ResBlock(nn.Module):
    """Two norm-SiLU-conv stages with the timestep embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_ch, groups, RESBLOCK_NORM_EPS),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            group_norm(out_ch, groups, RESBLOCK_NORM_EPS),
            nn.SiLU(),
            nn.Dropout(),  # p is irrelevant: SD never trains through this code
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, in_ch, h, w), emb (B, emb_dim) → (B, out_ch, h, w)."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention of x (B, L, dim) over context (B, S, context_dim), or over itself."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout())
        # Set by `sd_core.fast_path.fuse_qkv`: one (3·dim, dim) matrix whose rows are to_q's,
        # to_k's and to_v's weights, which are views into it (self-attention), or one
        # (2·dim, context_dim) for to_k and to_v (cross-attention). Not in the state dict.
        self.fused_qkv: Tensor | None = None
        self.fused_kv: Tensor | None = None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        source = x if context is None else context
        batch, length, dim = x.shape
        if self.fused_qkv is not None and context is None:
            q_, k_, v_ = F.linear(x, self.fused_qkv).chunk(3, dim=-1)
        elif self.fused_kv is not None:
            q_ = self.to_q(x)
            k_, v_ = F.linear(source, self.fused_kv).chunk(2, dim=-1)
        else:
            q_, k_, v_ = self.to_q(x), self.to_k(source), self.to_v(source)
        # (B, L, dim) → (B, heads, L, head_dim): a view plus a transpose, no copy.
        q = q_.view(batch, length, self.heads, -1).transpose(1, 2)
        k = k_.view(batch, source.shape[1], self.heads, -1).transpose(1, 2)
        v = v_.view(batch, source.shape[1], self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, dim))


class GEGLU(nn.Module):
    """Linear to 2×inner, then value * GELU(gate) (Shazeer 2020)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = FF_MULT * dim
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Feature map ↔ token sequence around `depth` transformer blocks; 1×1 conv projections."""

    def __init__(self, channels: int, config: UNetConfig) -> None:
        super().__init__()
        if channels % config.num_heads != 0:
            raise ValueError(
                f"UNetConfig.num_heads={config.num_heads} must divide every attention width; "
                f"got {channels}"
            )
        self.norm = group_norm(channels, config.norm_groups, TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, config.context_dim, config.num_heads)
            for _ in range(config.transformer_depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x (B, C, h, w), context (B, S, context_dim) → (B, C, h, w)."""
        batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.flatten(2).transpose(1, 2)  # (B, h*w, C)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Stride-2 3×3 conv (`op`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to `size` (normally ×2), then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # An explicit size rather than ×2: for latent sizes that are not multiples of 8 a
        # stride-2 conv rounded up on the way down, and the skip tensor decides the size here.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepBlock(nn.ModuleList):
    """One `input_blocks.N` / `output_blocks.N` entry: layers fed what each one needs."""

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor, size: tuple[int, int] | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size if size is not None else (2 * x.shape[2], 2 * x.shape[3]))
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """(noisy latent, timestep, text context) → predicted noise ε."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.model_channels % 2 != 0:
            raise ValueError(
                f"UNetConfig.model_channels={config.model_channels} must be even "
                "(half of it are cos, half sin timestep features)"
            )
        self.config = config
        mc, emb_dim, groups = config.model_channels, config.time_embed_dim, config.norm_groups
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def res_block(in_ch: int, out_ch: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, emb_dim, groups)

        self.input_blocks = nn.ModuleList(
            [TimestepBlock([nn.Conv2d(config.in_channels, mc, 3, padding=1)])]
        )
        skip_widths = [mc]  # width of each input block's output, consumed by output_blocks
        ch, factor = mc, 1
        last = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * mc)]
                ch = mult * mc
                if factor in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, config))
                self.input_blocks.append(TimestepBlock(layers))
                skip_widths.append(ch)
            if level != last:
                self.input_blocks.append(TimestepBlock([Downsample(ch)]))
                skip_widths.append(ch)
                factor *= 2

        self.middle_block = TimestepBlock(
            [res_block(ch, ch), SpatialTransformer(ch, config), res_block(ch, ch)]
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res_block(ch + skip_widths.pop(), mult * mc)]
                ch = mult * mc
                if factor in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, config))
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    factor //= 2
                self.output_blocks.append(TimestepBlock(layers))

        self.out = nn.Sequential(
            group_norm(ch, groups, RESBLOCK_NORM_EPS),
            nn.SiLU(),
            nn.Conv2d(ch, config.out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        """x (B, in_channels, h, w), timesteps (B,) float (fractional allowed), context (B, L, context_dim) → (B, out_channels, h, w) predicted noise.

        A 0-d or 1-element `timesteps` is broadcast over the batch.
        """
        config = self.config
        if x.ndim != 4 or x.shape[1] != config.in_channels:
            raise ValueError(
                f"x must have shape (batch, {config.in_channels}, height, width); "
                f"got {tuple(x.shape)}"
            )
        if context.ndim != 3 or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must have shape ({x.shape[0]}, length, {config.context_dim}); "
                f"got {tuple(context.shape)}"
            )
        if context.shape[2] != config.context_dim:
            raise ValueError(
                f"context width {context.shape[2]} does not match "
                f"UNetConfig.context_dim={config.context_dim}"
            )
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.shape[0] == 1:
            timesteps = timesteps.expand(x.shape[0])
        elif timesteps.shape[0] != x.shape[0]:
            raise ValueError(
                f"timesteps must have shape ({x.shape[0]},) or be a scalar; "
                f"got {timesteps.shape[0]} values"
            )

        t_emb = timestep_embedding(timesteps, config.model_channels).to(x.dtype)
        emb = self.time_embed(t_emb)

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # An upsampling block must land on the size of the skip tensor it meets next.
            size = (skips[-1].shape[2], skips[-1].shape[3]) if skips else None
            h = block(h, emb, context, size)
        return self.out(h)
