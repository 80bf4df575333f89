"""Configurations of the built-in model "dali-tiny" and of its training run.

`DALI_TINY` is the SD v1 architecture at a small width: the same kinds of blocks in the same
arrangement (a UNet of 4 levels, channel_mult (1, 2, 2, 2), with cross-attention at downsample
factors 1, 2, 4 and in the middle block; a VAE with f=8, 2 res blocks a level and the mid
attention, exactly SD's; a causal CLIP text tower with the real 49,408-token vocabulary), so its
checkpoint uses the original key names and loads through the same code as SD v1.5. The UNet has
1 res block a level instead of SD's 2: at 8×8 latents its cost is the number of layers, not
their width, and one block a level is what keeps a 20-step image under a second on 2 CPU cores
(and the training under an hour). Its VAE `scale_factor` here is a placeholder: the trainer measures the latent standard
deviation after training the VAE (as SD's 0.18215 was measured) and writes the measured value
into the shipped file's config.

`TrainConfig` holds every knob of a run; its defaults are the run that ships (sized to finish in
under an hour on 2 CPU cores). `MICRO_MODEL`/`MICRO_TRAIN` are a seconds-long run for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from sd_core.config import CLIPConfig, ModelConfig, UNetConfig, VAEConfig

DALI_TINY = ModelConfig(
    name="dali-tiny",
    clip=CLIPConfig(width=64, layers=2, heads=2, intermediate=256),
    vae=VAEConfig(base_channels=16, channel_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=8),
    unet=UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2, 4),
        num_heads=2,
        context_dim=64,
        norm_groups=8,
    ),
    native_size=64,
    default_sampler="euler_a",
)

# The v2 candidate (issue 17): dali-tiny with an f=4 autoencoder (three levels, 16×16 latents
# at 64 px). Small shapes (11–14 px) cover under two of f=8's latent cells and an outline's
# 1.5-px band a fifth of one; through f=8 the autoencoder alone already lost them. Measured
# (docs/dali-tiny.md, "A full run with the v2 grammar and 128 px"): the same 3,000 autoencoder
# steps kept 91.7 % of held-out shapes at f=4 against 56.3 % at f=8. A 64-px image costs more
# (0.442 s against 0.337 s on 2 cores with this UNet; 0.324 s with a three-level UNet attending
# at factors 2 and 4 only), so the shipped v2 needs a lighter UNet than this preset's.
DALI_TINY_F4 = dataclasses.replace(
    DALI_TINY, vae=dataclasses.replace(DALI_TINY.vae, channel_mult=(1, 2, 4))
)

# The shipped file since 2026-12-08 (docs/dali-tiny.md, "The shipped file: dali-tiny v2"):
# DALI_TINY_F4 with that lighter UNet: three levels (channel_mult (1, 2, 2): 16, 8 and 4 latent
# cells at 64 px) with cross-attention at factors 2 and 4 and in the middle block, none at the
# full 16×16 latent (256 tokens, the costliest attention).
DALI_TINY_V2 = dataclasses.replace(
    DALI_TINY_F4,
    unet=dataclasses.replace(DALI_TINY.unet, channel_mult=(1, 2, 2), attention_resolutions=(2, 4)),
)

# The smallest model with the same structure, for the trainer's tests.
MICRO_MODEL = ModelConfig(
    name="dali-micro",
    clip=CLIPConfig(width=16, layers=1, heads=2, intermediate=32),
    vae=VAEConfig(base_channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4),
    unet=UNetConfig(
        model_channels=8,
        channel_mult=(1, 1, 1, 1),
        num_res_blocks=1,
        attention_resolutions=(1,),
        num_heads=2,
        context_dim=16,
        norm_groups=4,
    ),
    native_size=64,
    default_sampler="euler_a",
)


@dataclass(frozen=True)
class TrainConfig:
    """Every number of one training run (both phases) and of its evaluation."""

    seed: int = 0
    # Phase 1: the autoencoder, on freshly rendered images.
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32  # pixels; random crops (multiples of 8) of the 64-pixel images
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5  # per latent element, against a per-pixel reconstruction loss
    vae_shape_weight: float = 4.0  # loss weight of the shape's pixels against the background's
    # Phase 2: text encoder + UNet on a pool of pre-encoded training images.
    pool_size: int = 18576  # encoded training images (6 seeds of each of the 3096 captions)
    unet_steps: int = 3000
    unet_batch: int = 64
    lr: float = 1e-3
    # The text encoder learns 10× slower than the UNet. At the full rate it erased the corner
    # words: before the UNet can place anything, which corner a caption names is noise to it, so
    # the gradient made "top left" and "bottom right" encode alike (their outputs differed by 6 %
    # of what a colour word changes, against 113 % at initialisation) and the model drew every
    # corner caption in a random corner. Slower, the random-init distinctions survive until the
    # UNet learns to read them.
    text_lr_scale: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    grad_clip: float = 1.0
    checkpoint_every: int = 500  # steps, in each phase
    # 128-pixel training (issue 17), off at 0: every `large_every`-th VAE and diffusion step
    # uses 128-px renders (the same scenes drawn at twice the size; latents 16×16) from a pool
    # of `large_pool_size` images, so the model draws both sizes. A fixed rule, no random draw:
    # with it off, a run draws exactly the random numbers it drew before.
    large_every: int = 0
    large_pool_size: int = 0
    # The v2 grammar (issue 17: "outline"/"filled", two objects), off at 0: this share of every
    # autoencoder batch, of the 64-px latent pool and of the decoder fine-tune's posterior
    # batches is drawn from v2 training captions (`shapes.random_v2_scene`), the rest from v1
    # ones. At 0 no extra random number is drawn, so the v1 recipe is unchanged.
    v2_share: float = 0.0
    # Evaluation (held-out captions through sd_core's pipeline).
    eval_count: int = 300
    eval_steps: int = 20
    tune_count: int = 16  # training captions used to pick the default sampler and guidance
    tune_samplers: tuple[str, ...] = ("euler_a", "euler", "dpmpp_2m")
    tune_guidance: tuple[float, ...] = (3.0, 5.0, 7.0)
    model: ModelConfig = field(default_factory=lambda: DALI_TINY)

    def overrides(self) -> dict[str, object]:
        """The fields that differ from the defaults (for the record of how a file was made)."""
        default = TrainConfig()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "model" and getattr(self, f.name) != getattr(default, f.name)
        }


MICRO_TRAIN = TrainConfig(
    vae_steps=4,
    vae_batch=2,
    pool_size=16,
    unet_steps=6,
    unet_batch=4,
    warmup_steps=2,
    checkpoint_every=3,
    eval_count=4,
    eval_steps=2,
    tune_count=2,
    tune_samplers=("euler",),
    tune_guidance=(3.0,),
    model=MICRO_MODEL,
)
