"""The dali-tiny world: one geometric shape on a plain background, and its captions.

Caption grammar (issue 3; the words are fixed so that any evaluator can parse them)::

    a [small |large ]<color> <shape>[ <position>] on a <background> background

No size word means medium and no position means the center. A scene is rendered from
`(scene, seed)` alone: the seed picks a small jitter of the position and of the size *within*
the scene's size class, so different seeds give visibly different images of the same caption,
while a detector can still tell every attribute apart (the jitter never crosses a class border).

Images are 64×64 RGB uint8 arrays (the model's native size), anti-aliased by rendering at 4×
and averaging, so that edges look like a photo of a shape rather than a pixel mask.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# RGB of each named colour. Chosen far apart (every pair ≥ 95 apart in RGB) so that the
# nearest-colour rule of the detector has a wide margin for what a model draws.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 225, 30),
    "orange": (250, 130, 10),
    "purple": (140, 40, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, "gray": (128, 128, 128)}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")

NATIVE_SIZE = 64
# Geometry on the 64-pixel canvas. Centre of the shape's bounding box for each position.
_CORNER_OFFSET = 13.0
ANCHORS: dict[str, tuple[float, float]] = {  # position -> (x, y) in pixels
    "top left": (32.0 - _CORNER_OFFSET, 32.0 - _CORNER_OFFSET),
    "top right": (32.0 + _CORNER_OFFSET, 32.0 - _CORNER_OFFSET),
    "bottom left": (32.0 - _CORNER_OFFSET, 32.0 + _CORNER_OFFSET),
    "bottom right": (32.0 + _CORNER_OFFSET, 32.0 + _CORNER_OFFSET),
    "center": (32.0, 32.0),
}
POSITION_JITTER = 2.0  # ± pixels on each axis; far below half the anchor spacing (9.2)
# Extent (circle diameter, square side, triangle base = height) range of each size class. The
# gaps between classes (14–18, 22–26) hold the detector's thresholds; a large shape in a corner
# still keeps 2 pixels off the image border so the border shows the background.
EXTENTS: dict[str, tuple[float, float]] = {
    "small": (11.0, 14.0),
    "medium": (18.0, 22.0),
    "large": (26.0, 30.0),
}
SIZE_THRESHOLDS = (16.0, 24.0)  # small < 16 ≤ medium < 24 ≤ large

_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One image's content. `position_said`/`size_said` record whether the caption names them
    (the default position is the center and the default size is medium)."""

    color: str
    shape: str
    background: str
    size: str = "medium"
    position: str = "center"
    position_said: bool = True
    size_said: bool = True

    def __post_init__(self) -> None:
        _check("color", self.color, tuple(COLORS))
        _check("shape", self.shape, SHAPES)
        _check("background", self.background, tuple(BACKGROUND_COLORS))
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)
        if self.color == self.background:
            raise ValueError(
                f"background {self.background!r} must differ from color {self.color!r}"
            )
        if not self.size_said and self.size != "medium":
            raise ValueError(
                f"size {self.size!r} must be said in the caption (only medium is implied)"
            )
        if not self.position_said and self.position != "center":
            raise ValueError(f"position {self.position!r} must be said (only center is implied)")

    @property
    def caption(self) -> str:
        size = f"{self.size} " if self.size_said else ""
        position = f" in the {self.position}" if self.position_said else ""
        return f"a {size}{self.color} {self.shape}{position} on a {self.background} background"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")


_CAPTION_RE = re.compile(
    r"^a (?:(?P<size>small|large) )?(?P<color>\w+) (?P<shape>\w+)"
    r"(?: in the (?P<position>top left|top right|bottom left|bottom right|center))?"
    r" on a (?P<background>\w+) background$"
)


def parse_caption(caption: str) -> Scene:
    """The scene a caption describes; ValueError naming the caption if it is not in the grammar."""
    match = _CAPTION_RE.match(caption.strip())
    if match is None:
        raise ValueError(
            f"caption {caption!r} does not follow 'a [small |large ]<color> <shape>[ in the "
            "<position>] on a <background> background'"
        )
    size, position = match["size"], match["position"]
    return Scene(
        color=match["color"],
        shape=match["shape"],
        background=match["background"],
        size=size or "medium",
        position=position or "center",
        position_said=position is not None,
        size_said=size is not None,
    )


@lru_cache(maxsize=1)
def all_scenes() -> tuple[Scene, ...]:
    """Every caption of the grammar once (3456 of them), in a fixed order."""
    scenes = []
    size_options = [("small", True), ("medium", False), ("large", True)]
    position_options = [(p, True) for p in POSITIONS] + [("center", False)]
    for color, shape, background, (size, size_said), (position, position_said) in itertools.product(
        COLORS, SHAPES, BACKGROUND_COLORS, size_options, position_options
    ):
        if background != color:
            scenes.append(Scene(color, shape, background, size, position, position_said, size_said))
    return tuple(scenes)


HELD_OUT_COUNT = 360


@lru_cache(maxsize=1)
def _split() -> tuple[tuple[Scene, ...], tuple[Scene, ...]]:
    # Ordering by a hash of the caption text makes the split independent of any RNG and of the
    # enumeration order: a caption is held out or not by its words alone.
    ranked = sorted(all_scenes(), key=lambda s: hashlib.sha256(s.caption.encode()).hexdigest())
    held_out = ranked[:HELD_OUT_COUNT]
    held = set(held_out)
    return tuple(s for s in all_scenes() if s not in held), tuple(held_out)


def train_scenes() -> tuple[Scene, ...]:
    """The captions training may use."""
    return _split()[0]


def held_out_scenes() -> tuple[Scene, ...]:
    """The captions training never sees (for evaluation), in a fixed order."""
    return _split()[1]


# Seeds: training images use seeds below this, evaluation images seeds from it upward.
EVAL_SEED_BASE = 1_000_000_000


def eval_seed(index: int) -> int:
    """The seed of the `index`-th evaluation image (disjoint from every training seed)."""
    return EVAL_SEED_BASE + index


def coverage(shape: str, cx: float, cy: float, extent: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by a shape → (size, size) float64 in [0, 1].

    The shape's bounding box is `extent` × `extent` pixels centred at (`cx`, `cy`) (pixel units,
    the image's top-left corner at (0, 0)). Triangles point up with their base at the bottom.
    """
    _check("shape", shape, SHAPES)
    n = size * _SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float64) + 0.5) / _SUPERSAMPLE  # sub-pixel centres
    x, y = coords[None, :], coords[:, None]
    half = extent / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    else:
        top, bottom = cy - half, cy + half
        halfwidth_at_y = half * (y - top) / extent  # 0 at the apex, extent / 2 at the base
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= halfwidth_at_y)
    return inside.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, seed: int, size: int = NATIVE_SIZE) -> np.ndarray:
    """Draw `scene` with the jitter chosen by `seed` → (size, size, 3) uint8 RGB.

    The geometry is defined on a 64-pixel canvas and scaled to `size`.
    """
    if size < 32:
        raise ValueError(f"size {size} is too small; use at least 32 pixels")
    rng = np.random.default_rng(seed)
    jx, jy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    low, high = EXTENTS[scene.size]
    extent = rng.uniform(low, high)
    ax, ay = ANCHORS[scene.position]
    scale = size / NATIVE_SIZE
    alpha = coverage(scene.shape, (ax + jx) * scale, (ay + jy) * scale, extent * scale, size)
    fg = np.array(COLORS[scene.color], dtype=np.float64)
    bg = np.array(BACKGROUND_COLORS[scene.background], dtype=np.float64)
    image = bg + alpha[..., None] * (fg - bg)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def sample_training_batch(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[str]]:
    """`count` random training pairs → ((count, 64, 64, 3) uint8, captions).

    Each pair gets its own seed drawn from `rng` below EVAL_SEED_BASE, so a run is reproducible
    from the seed of `rng` alone.
    """
    scenes = train_scenes()
    picks = rng.integers(0, len(scenes), size=count)
    seeds = rng.integers(0, EVAL_SEED_BASE, size=count)
    images = np.stack([render(scenes[i], int(s)) for i, s in zip(picks, seeds, strict=True)])
    return images, [scenes[i].caption for i in picks]
