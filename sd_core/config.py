"""Model configurations as frozen dataclasses.

Each config holds every number a model module needs, so the modules contain no magic numbers.
`SD_V1` is Stable Diffusion v1.x at full size; `TINY_TEST` keeps every one of the 1131 checkpoint
key names of SD v1.x at a fraction of the width, so reference tests run in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CLIPConfig:
    """CLIP text tower (OpenAI ViT-L/14 text model for SD v1.x)."""

    vocab_size: int = 49408
    max_positions: int = 77
    width: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    layer_norm_eps: float = 1e-5
    activation: str = "quick_gelu"


@dataclass(frozen=True)
class VAEConfig:
    """KL autoencoder with downsampling factor 2 ** (len(channel_mult) - 1)."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32
    scale_factor: float = 0.18215

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class UNetConfig:
    """Latent-diffusion UNet (openaimodel.UNetModel as configured by SD v1.x)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (1, 2, 4)  # downsample factors that get attention
    num_heads: int = 8
    context_dim: int = 768
    transformer_depth: int = 1
    norm_groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


@dataclass(frozen=True)
class ScheduleConfig:
    """The DDPM training schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end)) ** 2."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012


@dataclass(frozen=True)
class ModelConfig:
    """Everything that describes one text-to-image model."""

    name: str = "sd-v1"
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    native_size: int = 512
    default_sampler: str = "euler_a"


SD_V1 = ModelConfig()

SD_V1_INPAINT = ModelConfig(name="sd-v1-inpainting", unet=UNetConfig(in_channels=9))

TINY_TEST = ModelConfig(
    name="tiny-test",
    clip=CLIPConfig(width=32, layers=12, heads=4, intermediate=64),
    vae=VAEConfig(base_channels=32, channel_mult=(1, 2, 4, 4)),
    unet=UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), num_heads=8, context_dim=32),
    native_size=64,
)
