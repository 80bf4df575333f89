"""The diffusion model's own latents, each paired with the rendering it should decode to.

A decoder fine-tuned only on the encoder's posterior samples never sees what it is handed in
use: latents the UNet sampled lie near the encoder's, not on them, and the decoder draws their
small errors as pinched sides, bumped circles and a halo around the shape (the independent
judge reads 36 % of the first model's shapes right end to end, 80 % of its autoencoder's round
trips). So the finished model draws *training* captions (training seeds, its default sampler
and guidance) and each drawing gets a target the caption allows: the caption's shape, colour
and background, drawn by `training.shapes` with the drawing's own soft area and centroid — its
centre clamped into the anchor's jitter box and its extent into the size class. A drawing too
far from its anchor to clamp (more than `SLACK` px outside the box) is left out rather than
taught to move. The drawing's shape is its soft coverage (each pixel's place between the
background and the named colour) within one pixel of where it is at least half covered, so a
faint halo further out does not count. The targets use the renderer's geometry only: no
detector or judge is involved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from training.batches import grow
from training.shapes import (
    ANCHORS,
    BACKGROUND_COLORS,
    COLORS,
    EVAL_SEED_BASE,
    EXTENTS,
    FILL_RATIO,
    POSITION_JITTER,
    Scene,
    coverage,
    train_scenes,
)

SLACK = 3.0  # px a drawing's centre may lie outside its anchor's jitter box and still be used


def nearest_allowed_render(image: np.ndarray, scene: Scene) -> np.ndarray | None:
    """The rendering of `scene` with `image`'s soft area and centroid, clamped to what the
    caption allows → (64, 64, 3) uint8; None when `image` (64, 64, 3) uint8 shows (almost) no
    shape or one more than `SLACK` px outside its anchor's box. ValueError for an outline."""
    if scene.style != "filled":  # a ring's area and centroid do not fix its outer extent
        raise ValueError(
            f"style {scene.style!r}: sampled targets are for filled shapes only (the v1 "
            "grammar the model is trained on); outline captions need a fit of their own"
        )
    size = image.shape[0]
    fg = np.array(COLORS[scene.color], dtype=np.float64)
    bg = np.array(BACKGROUND_COLORS[scene.background], dtype=np.float64)
    direction = fg - bg
    alpha = np.clip((image.astype(np.float64) - bg) @ direction / (direction @ direction), 0, 1)
    alpha = np.where(grow(alpha >= 0.5, 1), alpha, 0.0)
    area = float(alpha.sum())
    if area < 4.0:
        return None
    centres = np.arange(size, dtype=np.float64) + 0.5
    cx = float((alpha.sum(axis=0) * centres).sum() / area)
    cy = float((alpha.sum(axis=1) * centres).sum() / area)
    extent = math.sqrt(area / FILL_RATIO[scene.shape])
    if scene.shape == "triangle":
        cy -= extent / 6  # a triangle's centroid lies a sixth of its height below the box centre
    ax, ay = ANCHORS[scene.position]
    if max(abs(cx - ax), abs(cy - ay)) > POSITION_JITTER + SLACK:
        return None
    cx = float(np.clip(cx, ax - POSITION_JITTER, ax + POSITION_JITTER))
    cy = float(np.clip(cy, ay - POSITION_JITTER, ay + POSITION_JITTER))
    extent = float(np.clip(extent, *EXTENTS[scene.size]))
    cover = coverage(scene.shape, cx, cy, extent, size)
    return np.clip(np.rint(bg + cover[..., None] * direction), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SampledTargets:
    """`latents` (N, 4, h, w) float32, unscaled (what the VAE decoder takes); `images` (N, 64,
    64, 3) uint8, their targets; `backgrounds` the N scenes' background names."""

    latents: Tensor
    images: np.ndarray
    backgrounds: tuple[str, ...]
    drawn: int  # drawings made; len(latents) of them were kept
    sampler: str
    guidance: float


def sample_targets(
    pipe: Any,
    count: int,
    rng: np.random.Generator,
    steps: int,
    sampler: str,
    guidance: float,
    per_caption: int = 4,
) -> SampledTargets:
    """Draw `count` images (rounded up to whole batches of `per_caption` seeds) of random
    training captions with `pipe` (an `sd_core` pipeline) and pair each kept one with its
    `nearest_allowed_render`. Captions and seeds come from `rng` (seeds below the evaluation
    range)."""
    from sd_core.image_tensors import tensor_to_images
    from sd_core.params import GenerationParams

    scenes = train_scenes()
    latents: list[Tensor] = []
    targets: list[np.ndarray] = []
    backgrounds: list[str] = []
    drawn = 0
    for _ in tqdm(range(math.ceil(count / per_caption)), desc="sample", unit="batch"):
        scene = scenes[int(rng.integers(len(scenes)))]
        seed = int(rng.integers(0, EVAL_SEED_BASE - per_caption))
        params = GenerationParams(scene.caption, seed=seed, steps=steps, sampler=sampler,
                                  guidance=guidance, batch=per_caption)  # fmt: skip
        resolved, scaled = pipe.generate_latents(params)
        images = tensor_to_images(pipe.decode_latents(scaled, pipe.vae_for(resolved)))
        for z, image in zip(scaled, images, strict=True):
            drawn += 1
            target = nearest_allowed_render(np.asarray(image.convert("RGB")), scene)
            if target is None:
                continue
            latents.append(z.float().cpu() / pipe.latent_scale)
            targets.append(target)
            backgrounds.append(scene.background)
    return SampledTargets(  # empty when nothing the captions allow was drawn
        latents=torch.stack(latents) if latents else torch.empty(0),
        images=np.stack(targets) if targets else np.empty((0, 64, 64, 3), np.uint8),
        backgrounds=tuple(backgrounds),
        drawn=drawn,
        sampler=sampler,
        guidance=guidance,
    )
