"""The caption's ideal rendering, and how well a drawn shape's mask matches it (IoU).

A caption does not fix one image: the renderer of `training.shapes` places the shape's bounding
box centre within ±2 px of the named anchor and picks its extent within the size class (small
11–14 px, medium 18–22, large 26–30 on the 64-px canvas). The *ideal* for a drawn image is the
rendering of the caption's shape, allowed by the caption, that overlaps the drawn mask best:
centre and extent start from the ideal shape with the mask's centroid and area, are clamped
into the allowed ranges and refined by a coordinate search (steps of 1 px down to 1/16 px). A perfect render is thus its own ideal
(IoU ≈ 1); a shape drawn in the wrong place, at the wrong size or with the wrong outline
cannot be matched by any allowed rendering and scores low. Its mask is coverage ≥ `HALF`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from training.judge.masks import dilate, holes, iou
from training.judge.segment import HALF
from training.shapes import (
    ANCHORS,
    BACKGROUND_COLORS,
    COLORS,
    EXTENTS,
    FILL_RATIO,
    NATIVE_SIZE,
    POSITION_JITTER,
    styled_coverage,
)


@dataclass(frozen=True)
class IdealFit:
    """The best allowed rendering: bounding-box centre (`cx`, `cy`) and `extent` in pixels of
    the image; `coverage` (H, W) float64 in [0, 1]; `iou` of its mask with the drawn mask."""

    shape: str
    cx: float
    cy: float
    extent: float
    coverage: np.ndarray
    iou: float

    @property
    def mask(self) -> np.ndarray:
        return self.coverage >= HALF


def allowed(
    anchor: tuple[float, float], size_class: str, size: int
) -> tuple[tuple[float, float], ...]:
    """((cx_lo, cx_hi), (cy_lo, cy_hi), (extent_lo, extent_hi)) in pixels of a `size` image,
    for a shape whose anchor is `anchor` (x, y) on the 64-pixel canvas."""
    scale = size / NATIVE_SIZE
    ax, ay = anchor
    low, high = EXTENTS[size_class]
    return (
        ((ax - POSITION_JITTER) * scale, (ax + POSITION_JITTER) * scale),
        ((ay - POSITION_JITTER) * scale, (ay + POSITION_JITTER) * scale),
        (low * scale, high * scale),
    )


def fit_ideal(
    shape: str,
    anchor: tuple[float, float] | str,
    size_class: str,
    drawn: np.ndarray,
    alpha: np.ndarray,
    style: str = "filled",
) -> IdealFit:
    """The allowed rendering of (`shape`, `anchor`, `size_class`, `style`) nearest to the (H, W)
    bool mask `drawn` (IoU-best; an empty mask gets the middle of every range). `anchor` is a
    position name or (x, y) on the 64-pixel canvas (a two-object caption's anchors). `alpha`
    (H, W) in [0, 1], the drawn soft coverage, breaks ties: the IoU of pixel masks moves in
    steps, and on a ledge the search follows the soft overlap."""
    size = drawn.shape[0]
    ranges = allowed(ANCHORS[anchor] if isinstance(anchor, str) else anchor, size_class, size)
    if style == "outline" and drawn.any():
        # A ring's IoU is a narrow ridge; start from the filled shape fitted to the ring with
        # its hole filled in, whose IoU is smooth.
        hole = holes(drawn)
        filled = fit_ideal(shape, anchor, size_class, drawn | hole, np.maximum(alpha, hole))
        start = [filled.cx, filled.cy, filled.extent]
    elif drawn.any():
        # The ideal shape with the mask's area and centroid (a triangle's centroid lies a
        # sixth of its height below its bounding box centre).
        ys, xs = np.nonzero(drawn)
        extent = float(np.sqrt(len(xs) / FILL_RATIO[shape]))
        lift = extent / 6 if shape == "triangle" else 0.0
        start = [float(xs.mean()) + 0.5, float(ys.mean()) + 0.5 - lift, extent]
    else:
        start = [(lo + hi) / 2 for lo, hi in ranges]
    params = [float(np.clip(v, lo, hi)) for v, (lo, hi) in zip(start, ranges, strict=True)]

    # The search's objective: the IoU of the masks, plus the soft overlap of the coverages
    # (near the drawn mask only) to break its ties — a little for a filled shape; for an
    # outline as much, since a ring's mask IoU is a ridge a few hundredths of a pixel wide.
    near = np.where(dilate(drawn, 2), alpha, 0.0)
    soft_weight = 1.0 if style == "outline" else 1e-3

    def score(p: list[float]) -> float:
        cover = styled_coverage(shape, style, p[0], p[1], p[2], size)
        soft = float(np.minimum(cover, near).sum() / max(np.maximum(cover, near).sum(), 1e-9))
        return iou(cover >= HALF, drawn) + soft_weight * soft

    best = score(params)
    for step in (1.0, 0.5, 0.25, 0.125, 0.0625):
        improved = True
        while improved:
            improved = False
            for axis in range(3):
                for sign in (-1.0, 1.0):
                    lo, hi = ranges[axis]
                    trial = list(params)
                    trial[axis] = float(np.clip(trial[axis] + sign * step, lo, hi))
                    value = score(trial)
                    if value > best + 1e-9:
                        best, params, improved = value, trial, True
    if style == "outline":
        # The ridge can still stop the descent a fraction of a pixel off: try every
        # combination of 0, ±¼ and ±½ px around where it stopped.
        centre = list(params)
        for offsets in itertools.product((-0.5, -0.25, 0.0, 0.25, 0.5), repeat=3):
            trial = [
                float(np.clip(c + o, lo, hi))
                for c, o, (lo, hi) in zip(centre, offsets, ranges, strict=True)
            ]
            value = score(trial)
            if value > best + 1e-9:
                best, params = value, trial
    cover = styled_coverage(shape, style, params[0], params[1], params[2], size)
    return IdealFit(shape, params[0], params[1], params[2], cover, iou(cover >= HALF, drawn))


def ideal_image(fit: IdealFit, colour: str, background: str) -> np.ndarray:
    """The fitted ideal drawn as the renderer draws it → (H, W, 3) uint8."""
    fg = np.array(COLORS[colour], dtype=np.float64)
    bg = np.array(BACKGROUND_COLORS[background], dtype=np.float64)
    image = bg + fit.coverage[..., None] * (fg - bg)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
