"""Every figure of one generated image against its caption (issue 17's measures).

For the caption's object:

- `iou`: the drawn mask (`segment`) against the best allowed ideal rendering (`ideal`);
- `colour`: the named colour nearest (ΔE, CIELAB) to the mean of the shape's inner pixels (the
  region less its 1-pixel edge, where the anti-aliasing blends in the background), and
  `delta_e`: the mean ΔE of those pixels to the colour the caption names;
- `shape`: the moment classifier (`classifier`) on the largest region's soft coverage;
- `position`: the anchor nearest to the centre of the largest region's bounding box, and
  `offset` from the named anchor (pixels of the 64-pixel canvas);
- `size`: the class of the region's extent, √(soft area / fill ratio of the shape read),
  against the thresholds 16 and 24 of the 64-pixel canvas.

- `style`: "outline" when the region encloses holes of at least 15 % of its filled area,
  else "filled"; an outline's hole (and the ring's inner edge) counts as shape for the
  classifier and the size, and its ideal is the ring the renderer draws.

Two-object captions (`judge_pair`): each object is segmented by its own named colour and read
as above against its own ideal (its pair anchor ±2 px); the relation is read from the two
regions' bounding-box centres (the larger of the horizontal and vertical offsets).

For the image: `background` (the named colour nearest to the border's median) and
`background_std`: the largest per-channel standard deviation of the background pixels (all
pixels 2 or more away from any shape pixel), in levels of 255 — flat when ≤ 3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.judge.classifier import ShapeReading, classify
from training.judge.colours import delta_e, nearest_name
from training.judge.ideal import IdealFit, fit_ideal
from training.judge.masks import bounding_box, dilate, erode, holes, largest_component
from training.judge.segment import border_pixels, segment
from training.shapes import (
    ANCHORS,
    BACKGROUND_COLORS,
    COLORS,
    FILL_RATIO,
    NATIVE_SIZE,
    PAIR_OFFSET,
    SIZE_THRESHOLDS,
    PairScene,
    Scene,
)

IOU_GOOD = 0.7  # issue 17: "IoU ≥ 0.7 on ≥ 90 % of images"
FLAT_STD = 3.0  # issue 17: background std ≤ 3/255
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "position", "size", "style", "background", "flat")
ALL = ("color", "shape", "position", "size")  # "all attributes" of the issue


@dataclass(frozen=True)
class Verdict:
    """What the judge read in one image (see the module docstring)."""

    iou: float
    color: str | None
    delta_e: float
    shape: str
    shape_distance: float
    style: str | None
    position: str | None
    offset: float
    size: str | None
    extent: float
    background: str
    background_std: float

    def matches(self, scene: Scene) -> dict[str, bool]:
        """Each attribute right or not ("flat": background std ≤ 3)."""
        return {
            "color": self.color == scene.color,
            "shape": self.shape == scene.shape,
            "position": self.position == scene.position,
            "size": self.size == scene.size,
            "style": self.style == scene.style,
            "background": self.background == scene.background,
            "flat": self.background_std <= FLAT_STD,
        }

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def size_class(extent: float) -> str:
    """small / medium / large for an extent in pixels of the 64-pixel canvas."""
    small_max, medium_max = SIZE_THRESHOLDS
    return "small" if extent < small_max else "medium" if extent < medium_max else "large"


def soft_coverage(pixels: np.ndarray, background: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Each pixel's share of the shape, from its distance to the background relative to the
    region's inner colour, within 3 pixels of the region (a blurred edge's tail included)
    → (H, W) float64 in [0, 1]. Distances up to the background's own noise (the 99th
    percentile of the border's) count as 0, so a noisy background adds no mass far out,
    where the higher moments weigh it most."""
    inner = erode(region)
    core = pixels[inner if inner.any() else region]
    colour = np.median(core, axis=0)
    distance = np.linalg.norm(pixels - background, axis=-1)
    floor = float(np.percentile(np.linalg.norm(border_pixels(pixels) - background, axis=-1), 99))
    span = max(float(np.linalg.norm(colour - background)) - floor, 1.0)
    alpha = np.clip((distance - floor) / span, 0.0, 1.0)
    return np.where(dilate(region, 3), alpha, 0.0)


OUTLINE_HOLE_SHARE = 0.15  # holes / (region + holes) from which a region reads as an outline


def _read_object(
    pixels: np.ndarray,
    background: np.ndarray,
    drawn: np.ndarray,
    alpha: np.ndarray,
    colour: str,
    shape: str,
    style: str,
    anchor: tuple[float, float],
    size: str,
    anchors: dict[str, tuple[float, float]],
) -> tuple[dict[str, Any], IdealFit]:
    """One object's figures: `drawn` (H, W) bool is its mask, `alpha` its segmentation's soft
    coverage; the caption says `colour`, `shape`, `style`, `size`, at `anchor` (64-px canvas);
    its position is read as the nearest of `anchors`."""
    scale = NATIVE_SIZE / pixels.shape[0]
    fit = fit_ideal(shape, anchor, size, drawn, alpha, style)
    region = largest_component(drawn)
    if not region.any():
        return {"iou": fit.iou, "color": None, "delta_e": float("nan"), "shape": "other",
                "shape_distance": float("inf"), "style": None, "position": None,
                "offset": float("inf"), "size": None, "extent": 0.0}, fit  # fmt: skip
    # An outline's hole belongs to its shape: fill it before reading shape and size.
    hole = holes(region)
    filled = region | hole
    style_read = "outline" if hole.sum() >= OUTLINE_HOLE_SHARE * filled.sum() else "filled"
    inner = erode(region)
    if inner.sum() < 4:  # a thin outline: its most covered pixels instead
        inner = region & (alpha >= 0.75)
    core = pixels[inner if inner.any() else region]
    # Filled, the hole and the ring's inner edge (its pixels next to the hole) are covered.
    inside = hole | (region & _next_to(hole))
    soft = np.maximum(soft_coverage(pixels, background, region), inside.astype(np.float64))
    reading: ShapeReading = classify(soft)
    x0, y0, x1, y1 = bounding_box(region)
    cx, cy = (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale
    # Extent from the area, which blur does not change, and the fill ratio of the shape read
    # (the caption's when the classifier reads none).
    fill = FILL_RATIO[reading.shape if reading.shape in FILL_RATIO else shape]
    extent = float(np.sqrt(soft.sum() / fill)) * scale
    position = min(anchors, key=lambda p: (anchors[p][0] - cx) ** 2 + (anchors[p][1] - cy) ** 2)
    return {
        "iou": fit.iou,
        "color": nearest_name(core.mean(axis=0), COLORS),
        "delta_e": float(delta_e(core, np.array(COLORS[colour], dtype=np.float64)).mean()),
        "shape": reading.shape,
        "shape_distance": reading.distance,
        "style": style_read,
        "position": position,
        "offset": float(np.hypot(cx - anchor[0], cy - anchor[1])),
        "size": size_class(extent),
        "extent": extent,
    }, fit


def _next_to(mask: np.ndarray) -> np.ndarray:
    """Pixels 4-adjacent to `mask` (or in it)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _background(
    pixels: np.ndarray, background: np.ndarray, shapes: np.ndarray
) -> tuple[str, float]:
    """The named background nearest to the measured one, and the largest per-channel std of the
    pixels 2 or more away from any shape pixel."""
    rest = pixels[~dilate(shapes, 2)]
    std = float(rest.std(axis=0).max()) if len(rest) else 0.0
    return nearest_name(background, BACKGROUND_COLORS), std


def judge_image(image: np.ndarray, scene: Scene) -> tuple[Verdict, IdealFit]:
    """Judge an (H, W, 3) uint8 image of `scene` → (verdict, the ideal it was compared with)."""
    pixels = np.asarray(image, dtype=np.float64)
    seg = segment(image, COLORS[scene.color])
    read, fit = _read_object(pixels, seg.background, seg.mask, seg.alpha, scene.color,
                             scene.shape, scene.style, ANCHORS[scene.position], scene.size,
                             ANCHORS)  # fmt: skip
    background, std = _background(pixels, seg.background, seg.mask)
    return Verdict(**read, background=background, background_std=std), fit


@dataclass(frozen=True)
class PairVerdict:
    """Both objects of a two-object image (each a `Verdict`, its `position` the nearest of
    the four pair anchors: left, right, top, bottom) and the relation read from their centres
    (None when an object is missing)."""

    first: Verdict
    second: Verdict
    relation: str | None

    def matches(self, pair: PairScene) -> dict[str, bool]:
        """Each object's attributes (prefixed first_/second_), the relation, the background."""
        out: dict[str, bool] = {}
        for name, verdict, thing in (("first", self.first, pair.first),
                                     ("second", self.second, pair.second)):  # fmt: skip
            out[f"{name}_color"] = verdict.color == thing.color
            out[f"{name}_shape"] = verdict.shape == thing.shape
            out[f"{name}_size"] = verdict.size == thing.size
            out[f"{name}_style"] = verdict.style == thing.style
            out[f"{name}_iou"] = verdict.iou >= IOU_GOOD
        out["relation"] = self.relation == pair.relation
        out["background"] = self.first.background == pair.background
        out["flat"] = self.first.background_std <= FLAT_STD
        return out


def _pair_anchors() -> dict[str, tuple[float, float]]:
    low, high = 32.0 - PAIR_OFFSET, 32.0 + PAIR_OFFSET
    return {"left": (low, 32.0), "right": (high, 32.0), "top": (32.0, low), "bottom": (32.0, high)}


def judge_pair(image: np.ndarray, pair: PairScene) -> tuple[PairVerdict, list[IdealFit]]:
    """Judge an (H, W, 3) uint8 image of a two-object caption → (verdict, the two ideals).

    Each object is segmented against the background by its own named colour; a pixel that
    stands out for both goes to the object whose colour line (background → colour) it lies
    nearer to, so touching or overlapping objects are still told apart by colour."""
    pixels = np.asarray(image, dtype=np.float64)
    things = (pair.first, pair.second)
    segs = [segment(image, COLORS[t.color]) for t in things]
    background = segs[0].background
    residuals = []
    for thing in things:
        direction = np.array(COLORS[thing.color], dtype=np.float64) - background
        t = np.clip((pixels - background) @ direction / max(direction @ direction, 1.0), 0, 1)
        residuals.append(np.linalg.norm(pixels - background - t[..., None] * direction, axis=-1))
    masks = [
        segs[0].mask & (residuals[0] <= residuals[1]),
        segs[1].mask & (residuals[1] < residuals[0]),
    ]
    anchors = _pair_anchors()
    name, std = _background(pixels, background, masks[0] | masks[1])
    verdicts, fits, centres = [], [], []
    for thing, seg, mask, anchor in zip(things, segs, masks, pair.centres(), strict=True):
        read, fit = _read_object(pixels, background, mask, seg.alpha, thing.color, thing.shape,
                                 thing.style, anchor, thing.size, anchors)  # fmt: skip
        verdicts.append(Verdict(**read, background=name, background_std=std))
        fits.append(fit)
        region = largest_component(mask)
        if region.any():
            x0, y0, x1, y1 = bounding_box(region)
            centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
    relation = None
    if len(centres) == 2:
        dx = centres[0][0] - centres[1][0]
        dy = centres[0][1] - centres[1][1]
        if abs(dx) >= abs(dy):
            relation = "left of" if dx < 0 else "right of"
        else:
            relation = "above" if dy < 0 else "below"
    return PairVerdict(verdicts[0], verdicts[1], relation), fits
