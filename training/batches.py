"""What a training step sees: batches of rendered training images with their loss weights, and
the captions of a latent pool (v1, and a share of v2 when `v2_share` > 0)."""

from __future__ import annotations

import numpy as np

from training.shapes import (
    BACKGROUND_COLORS,
    EVAL_SEED_BASE,
    PairScene,
    Scene,
    random_v2_scene,
    render,
    train_scenes,
)


def grow(mask: np.ndarray, ring: int) -> np.ndarray:
    """(..., H, W) bool: `mask` and every pixel within `ring` pixels of it (a square
    neighbourhood, (2·ring + 1)² pixels), image by image."""
    if ring <= 0:
        return mask
    height, width = mask.shape[-2:]
    pad = [(0, 0)] * (mask.ndim - 2) + [(ring, ring), (ring, ring)]
    padded = np.pad(mask, pad)
    grown = np.zeros_like(mask)
    for dy in range(2 * ring + 1):
        for dx in range(2 * ring + 1):
            grown |= padded[..., dy : dy + height, dx : dx + width]
    return grown


def shape_weights(
    images: np.ndarray,
    backgrounds: list[str],
    weight: float,
    ring: int = 0,
    elsewhere: float = 1.0,
) -> np.ndarray:
    """(B, H, W) float32 loss weights: `weight` where a pixel differs from its scene's known
    background colour (the shape and its anti-aliased edge) or lies within `ring` pixels of such
    a pixel, `elsewhere` (the plain background) elsewhere.

    A small shape is a few percent of the pixels; with an unweighted loss the autoencoder is
    content to draw it as a blob of the right colour, and a blob's corners are what tells a
    triangle from a circle. With ring 0 the weighting is lopsided: a shape drawn too large costs
    less than one drawn too small, and the decoder learns to grow shapes; a ring around the
    shape weights both mistakes alike.
    """
    colours = np.array([BACKGROUND_COLORS[name] for name in backgrounds], dtype=np.int16)
    differs = np.abs(images.astype(np.int16) - colours[:, None, None, :]).sum(-1) > 24
    differs = grow(differs, ring)
    return np.where(differs, np.float32(weight), np.float32(elsewhere))


def weighted_training_batch(
    rng: np.random.Generator,
    size: int,
    weight: float,
    ring: int = 0,
    image_size: int = 64,
    elsewhere: float = 1.0,
    v2_share: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`size` training images of random captions and seeds, drawn from `rng`, and their
    `shape_weights`: ((B, S, S, 3) uint8, (B, S, S) float32), S = `image_size`.

    `v2_share` > 0: each image is, with that probability, of a random v2 training caption
    instead (`random_v2_scene`); at 0 `rng` draws exactly what it drew before v2.
    """
    v1 = train_scenes()
    picks = rng.integers(0, len(v1), size=size)
    seeds = rng.integers(0, EVAL_SEED_BASE, size=size)
    scenes: list[Scene | PairScene] = [v1[i] for i in picks]
    if v2_share > 0:
        for i in np.flatnonzero(rng.random(size) < v2_share):
            scenes[i] = random_v2_scene(rng, held_out=False)
    images = np.stack(
        [render(scene, int(s), image_size) for scene, s in zip(scenes, seeds, strict=True)]
    )
    backgrounds = [scene.background for scene in scenes]
    return images, shape_weights(images, backgrounds, weight, ring, elsewhere)


def pool_scenes(count: int, seed: int, v2_share: float, stream: int = 5) -> list[Scene | PairScene]:
    """A latent pool's captions: the v1 training captions in turn, and for `v2_share` > 0 a
    share of the places (chosen by an RNG of `seed` and `stream` alone) given to random v2
    training captions, so a resumed run rebuilds the same pool."""
    v1 = train_scenes()
    scenes: list[Scene | PairScene] = [v1[i % len(v1)] for i in range(count)]
    if v2_share > 0:
        rng = np.random.default_rng([seed, stream])
        for i in np.flatnonzero(rng.random(count) < v2_share):
            scenes[i] = random_v2_scene(rng, held_out=False)
    return scenes
