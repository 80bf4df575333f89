"""KL-regularised autoencoder of Stable Diffusion v1.x (LDM `AutoencoderKL`, f=8).

The module tree mirrors the checkpoint: `model.state_dict()` keys are the checkpoint keys with
`CHECKPOINT_PREFIX` removed (`encoder.down.0.block.0.conv1.weight`, `decoder.mid.attn_1.q.weight`,
`quant_conv.weight`, ...). As in the original, the decoder's `up` list is indexed by resolution
level (`up.0` is the full-resolution level) but run from the last index to the first.

Latents here are unscaled; multiplying by `VAEConfig.scale_factor` (0.18215) is the caller's job.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sd_core.config import VAEConfig

CHECKPOINT_PREFIX = "first_stage_model."

# LDM's `Normalize` uses eps=1e-6 (not torch's 1e-5); VAEConfig has no field for it.
GROUP_NORM_EPS = 1e-6
# LDM's DiagonalGaussianDistribution clamps logvar to this range for numerical safety.
LOGVAR_RANGE = (-30.0, 20.0)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups != 0:
        raise ValueError(
            f"VAEConfig.norm_groups={groups} must divide every channel count; got {channels}"
        )
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice plus a residual (1×1 `nin_shortcut` when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H×W positions; q/k/v/proj_out are 1×1 convs."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        # (B, C, H, W) → (B, 1, H*W, C): positions become the sequence; one head of width C.
        h = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = (
            F.linear(h, conv.weight.flatten(1), conv.bias).unsqueeze(1)
            for conv in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = F.linear(out, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one pixel on the right and bottom only (as trained)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, self-attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class EncoderLevel(nn.Module):
    """One resolution level: `block.M` ResnetBlocks, then `downsample` except at the last."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, down: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)
        )
        self.downsample = Downsample(out_ch) if down else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(nn.Module):
    """One resolution level: `block.M` ResnetBlocks, then `upsample` except at full size."""

    def __init__(self, in_ch: int, out_ch: int, blocks: int, groups: int, up: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(blocks)
        )
        self.upsample = Upsample(out_ch) if up else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """(B, in_channels, H, W) → (B, 2*z_channels, H/f, W/f) moments (mean, logvar)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        groups = config.norm_groups
        last = len(widths) - 1
        # Level i reads the width of level i-1; level 0 reads conv_in's base_channels.
        in_widths = [config.base_channels, *widths[:-1]]
        self.conv_in = nn.Conv2d(config.in_channels, config.base_channels, 3, padding=1)
        self.down = nn.ModuleList(
            EncoderLevel(in_widths[i], widths[i], config.num_res_blocks, groups, down=i != last)
            for i in range(len(widths))
        )
        self.mid = MidBlock(widths[-1], groups)
        self.norm_out = group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) → (B, out_channels, h*f, w*f)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        groups = config.norm_groups
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(config.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], groups)
        # Level i reads the width of level i+1 (the one run before it); each has one more block
        # than the encoder's, as in LDM.
        self.up = nn.ModuleList(
            DecoderLevel(
                widths[min(i + 1, last)], widths[i], config.num_res_blocks + 1, groups, up=i != 0
            )
            for i in range(len(widths))
        )
        self.norm_out = group_norm(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AutoencoderKL(nn.Module):
    """Image ↔ latent. Encoder output is a diagonal Gaussian; the decoder takes a sample."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) image in [-1, 1] → (mean, logvar), each (B, z, H/f, W/f); unscaled (no 0.18215).

        H and W must be multiples of the downsampling factor f. logvar is clamped to
        LOGVAR_RANGE as in LDM; a sample is `mean + exp(0.5 * logvar) * noise`.
        """
        factor = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x must have shape (batch, {self.config.in_channels}, height, width); "
                f"got {tuple(x.shape)}"
            )
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"image height and width must be multiples of {factor}; "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """(B, z, h, w) unscaled latents → (B, 3, h*f, w*f) image, nominally [-1, 1]."""
        if z.ndim != 4 or z.shape[1] != self.config.embed_dim:
            raise ValueError(
                f"z must have shape (batch, {self.config.embed_dim}, height, width); "
                f"got {tuple(z.shape)}"
            )
        return self.decoder(self.post_quant_conv(z))
