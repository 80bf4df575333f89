"""The drawn shape's mask: every pixel at least half-way from the background to the named colour.

The background colour is measured, not assumed: the median of the image's 2-pixel border
(no shape of the grammar reaches it). A pixel belongs to the shape when its RGB distance to
that background is at least half the distance from the background to the colour the caption
names. On a clean anti-aliased render this is exactly "the shape covers at least half of the
pixel", the same rule that turns the ideal rendering's coverage into its mask, so a perfect
image scores IoU 1. A shape drawn in a wrong colour still stands out from the background and
is segmented; its colour is then judged wrong (see `verdict`).

Independent of `training.detector`, which thresholds at half the image's *largest* distance
and keeps one 4-connected region: here the threshold comes from the caption, and every
standing-out pixel counts (specks and second blobs lower the IoU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BORDER = 2  # pixels of the image edge that show the background
MIN_CONTRAST = 20.0  # RGB distance below which a pixel never counts as shape
# "At least half": just under ½, because the renderer's 4×4 supersampling covers many edge
# pixels exactly half, and rounding to uint8 would put those on either side of ½ at random.
HALF = 0.47


@dataclass(frozen=True)
class Segmentation:
    """`background`: (3,) measured RGB; `alpha`: (H, W) float64 in [0, 1], each pixel's distance
    to the background over the named colour's; `mask`: (H, W) bool, the shape's pixels
    (alpha ≥ `HALF`, and at least `MIN_CONTRAST` from the background)."""

    background: np.ndarray
    alpha: np.ndarray
    mask: np.ndarray


def border_pixels(image: np.ndarray, width: int = BORDER) -> np.ndarray:
    """The pixels of the `width`-pixel frame of an (H, W, 3) image → (N, 3) float64."""
    frame = np.ones(image.shape[:2], dtype=bool)
    frame[width:-width, width:-width] = False
    return np.asarray(image, dtype=np.float64)[frame]


def segment(image: np.ndarray, colour: tuple[int, int, int]) -> Segmentation:
    """Segment an (H, W, 3) uint8 image against its background, for a shape of `colour`."""
    pixels = np.asarray(image, dtype=np.float64)
    background = np.median(border_pixels(image), axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    span = max(float(np.linalg.norm(np.array(colour) - background)), 1.0)
    alpha = np.clip(distance / span, 0.0, 1.0)
    return Segmentation(background, alpha, (alpha >= HALF) & (distance >= MIN_CONTRAST))
