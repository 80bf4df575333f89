"""The dali-tiny world: one geometric shape on a plain background, and its captions.

Caption grammar (issue 3; the words are fixed so that any evaluator can parse them)::

    a [small |large ]<color> <shape>[ <position>] on a <background> background

The v2 grammar (issue 17) adds, keeping every v1 caption and its rendering as they were:

    a [small |large ]<color> [filled |outline ]<shape>[ <position>] on a <background> background
    a [small ]<color> [filled |outline ]<shape> <relation> a [small ]<color> [filled |outline ]<shape>
        on a <background> background           (relation: left of, right of, above, below)

No style word means filled. In a two-object caption the objects are small or medium (no room
for large ones side by side), their colours differ from each other and from the background,
and they sit on one axis through the centre, 14 px either side of it.

No size word means medium and no position means the center. A scene is rendered from
`(scene, seed)` alone: the seed picks a small jitter of the position and of the size *within*
the scene's size class, so different seeds give visibly different images of the same caption,
while a detector can still tell every attribute apart (the jitter never crosses a class border).

Images are 64×64 RGB uint8 arrays (the model's native size), anti-aliased by rendering at 4×
and averaging, so that edges look like a photo of a shape rather than a pixel mask.
"""

from __future__ import annotations

import dataclasses
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
# Each shape's area over its bounding box's (extent²): what turns an area into an extent.
FILL_RATIO: dict[str, float] = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}

_SUPERSAMPLE = 4

STYLES: tuple[str, ...] = ("filled", "outline")
OUTLINE_WIDTH = 1.5  # pixels of the 64-pixel canvas, measured inward from the outer edge
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
PAIR_OFFSET = 14.0  # each object of a pair sits this far from the centre along the axis
PAIR_SIZES: tuple[str, ...] = ("small", "medium")


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
    style: str = "filled"
    style_said: bool = False

    def __post_init__(self) -> None:
        _check("style", self.style, STYLES)
        if not self.style_said and self.style != "filled":
            raise ValueError(f"style {self.style!r} must be said (only filled is implied)")
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
        style = f"{self.style} " if self.style_said else ""
        position = f" in the {self.position}" if self.position_said else ""
        return (
            f"a {size}{self.color} {style}{self.shape}{position} on a {self.background} background"
        )


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")


_CAPTION_RE = re.compile(
    r"^a (?:(?P<size>small|large) )?(?P<color>\w+) (?:(?P<style>filled|outline) )?(?P<shape>\w+)"
    r"(?: in the (?P<position>top left|top right|bottom left|bottom right|center))?"
    r" on a (?P<background>\w+) background$"
)
_OBJECT = r"a (?:(?P<size{n}>small|large) )?(?P<color{n}>\w+) (?:(?P<style{n}>filled|outline) )?(?P<shape{n}>\w+)"
_PAIR_RE = re.compile(
    "^"
    + _OBJECT.format(n=1)
    + r" (?P<relation>left of|right of|above|below) "
    + _OBJECT.format(n=2)
    + r" on a (?P<background>\w+) background$"
)


def parse_caption(caption: str) -> Scene:
    """The scene a caption describes; ValueError naming the caption if it is not in the grammar."""
    match = _CAPTION_RE.match(caption.strip())
    if match is None:
        raise ValueError(
            f"caption {caption!r} does not follow 'a [small |large ]<color> [filled |outline ]"
            "<shape>[ in the <position>] on a <background> background'"
        )
    size, position, style = match["size"], match["position"], match["style"]
    return Scene(
        color=match["color"],
        shape=match["shape"],
        background=match["background"],
        size=size or "medium",
        position=position or "center",
        position_said=position is not None,
        size_said=size is not None,
        style=style or "filled",
        style_said=style is not None,
    )


@dataclass(frozen=True)
class Thing:
    """One object of a two-object caption (no position of its own: the relation places it)."""

    color: str
    shape: str
    size: str = "medium"
    style: str = "filled"
    size_said: bool = False
    style_said: bool = False

    def __post_init__(self) -> None:
        _check("color", self.color, tuple(COLORS))
        _check("shape", self.shape, SHAPES)
        _check("size (of an object in a two-object caption)", self.size, PAIR_SIZES)
        _check("style", self.style, STYLES)
        if not self.size_said and self.size != "medium":
            raise ValueError(f"size {self.size!r} must be said (only medium is implied)")
        if not self.style_said and self.style != "filled":
            raise ValueError(f"style {self.style!r} must be said (only filled is implied)")

    @property
    def words(self) -> str:
        size = f"{self.size} " if self.size_said else ""
        style = f"{self.style} " if self.style_said else ""
        return f"a {size}{self.color} {style}{self.shape}"


@dataclass(frozen=True)
class PairScene:
    """Two objects, the first `relation` the second, on one background."""

    first: Thing
    relation: str
    second: Thing
    background: str

    def __post_init__(self) -> None:
        _check("relation", self.relation, RELATIONS)
        _check("background", self.background, tuple(BACKGROUND_COLORS))
        colours = (self.first.color, self.second.color)
        if self.first.color == self.second.color:
            raise ValueError(f"the two objects must differ in colour; both are {colours[0]!r}")
        if self.background in colours:
            raise ValueError(
                f"background {self.background!r} must differ from the colours {colours}"
            )

    @property
    def caption(self) -> str:
        return (
            f"{self.first.words} {self.relation} {self.second.words} on a {self.background} "
            "background"
        )

    def centres(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two objects' anchors (x, y) on the 64-pixel canvas, first then second."""
        low, high = 32.0 - PAIR_OFFSET, 32.0 + PAIR_OFFSET
        if self.relation == "left of":
            return (low, 32.0), (high, 32.0)
        if self.relation == "right of":
            return (high, 32.0), (low, 32.0)
        if self.relation == "above":
            return (32.0, low), (32.0, high)
        return (32.0, high), (32.0, low)


def parse_any(caption: str) -> Scene | PairScene:
    """The scene of a one- or two-object caption; ValueError naming the caption otherwise."""
    match = _PAIR_RE.match(caption.strip())
    if match is None:
        return parse_caption(caption)
    things = []
    for n in (1, 2):
        size, style = match[f"size{n}"], match[f"style{n}"]
        things.append(
            Thing(
                match[f"color{n}"],
                match[f"shape{n}"],
                size or "medium",
                style or "filled",
                size_said=size is not None,
                style_said=style is not None,
            )
        )
    return PairScene(things[0], match["relation"], things[1], match["background"])


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


# The v2 captions (styles, pairs) are too many to list (≈ 0.5 M); a caption is held out by its
# words alone, as in v1: the first byte of its SHA-256 below 26 (≈ 10 %). v1 captions keep the
# v1 split above.
_V2_HELD_OUT_BYTE = 26


def is_held_out(caption: str) -> bool:
    """Whether training must never see `caption` (v1: the v1 split; v2: by its hash)."""
    scene = parse_any(caption)
    if isinstance(scene, Scene) and not scene.style_said:
        return scene in set(held_out_scenes())
    return hashlib.sha256(caption.encode()).digest()[0] < _V2_HELD_OUT_BYTE


def random_v2_scene(rng: np.random.Generator, held_out: bool) -> Scene | PairScene:
    """A random v2 caption (half styled one-object, half two-object) from the training side
    (`held_out` False) or the held-out side of the split."""
    while True:
        if rng.random() < 0.5:
            base = all_scenes()[int(rng.integers(len(all_scenes())))]
            style = STYLES[int(rng.integers(2))]
            scene: Scene | PairScene = dataclasses.replace(base, style=style, style_said=True)
        else:
            colours = rng.choice(len(COLORS), size=2, replace=False)
            first, second = (list(COLORS)[int(c)] for c in colours)
            backgrounds = [b for b in BACKGROUND_COLORS if b not in (first, second)]
            things = []
            for colour in (first, second):
                size = PAIR_SIZES[int(rng.integers(2))]
                style_pick = int(rng.integers(3))  # unsaid, filled, outline
                things.append(Thing(colour, SHAPES[int(rng.integers(3))], size,
                                    ("filled", "filled", "outline")[style_pick],
                                    size_said=size == "small",
                                    style_said=style_pick > 0))  # fmt: skip
            scene = PairScene(things[0], RELATIONS[int(rng.integers(4))], things[1],
                              backgrounds[int(rng.integers(len(backgrounds)))])  # fmt: skip
        if is_held_out(scene.caption) == held_out:
            return scene


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


def styled_coverage(
    shape: str, style: str, cx: float, cy: float, extent: float, size: int
) -> np.ndarray:
    """`coverage`, or for an outline the band `OUTLINE_WIDTH` (scaled like the image) wide
    inside the outer edge: the outer shape less the inner one, whose every side is moved inward
    by the width (for the triangle: the outer one shrunk about its incentre)."""
    outer = coverage(shape, cx, cy, extent, size)
    if style == "filled":
        return outer
    _check("style", style, STYLES)
    width = OUTLINE_WIDTH * size / NATIVE_SIZE
    if shape == "triangle":
        inradius = extent / (1 + np.sqrt(5))  # base = height = extent
        k = max(inradius - width, 0.0) / inradius
        base = cy + extent / 2
        inner_cy = base - inradius - k * (extent / 2 - inradius)
        inner = coverage(shape, cx, inner_cy, k * extent, size)
    else:
        inner = coverage(shape, cx, cy, max(extent - 2 * width, 0.0), size)
    return np.clip(outer - inner, 0.0, 1.0)


def _draw_layers(layers: list[tuple[np.ndarray, str]], background: str, size: int) -> np.ndarray:
    image = np.broadcast_to(np.array(BACKGROUND_COLORS[background], np.float64), (size, size, 3))
    image = image.copy()
    for alpha, colour in layers:
        image += alpha[..., None] * (np.array(COLORS[colour], np.float64) - image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(scene: Scene | PairScene, seed: int, size: int = NATIVE_SIZE) -> np.ndarray:
    """Draw `scene` with the jitter chosen by `seed` → (size, size, 3) uint8 RGB.

    The geometry is defined on a 64-pixel canvas and scaled to `size`. A v1 scene draws exactly
    as before v2 (same random draws, same pixels).
    """
    if size < 32:
        raise ValueError(f"size {size} is too small; use at least 32 pixels")
    rng = np.random.default_rng(seed)
    scale = size / NATIVE_SIZE
    if isinstance(scene, PairScene):
        layers = []
        for thing, (ax, ay) in zip((scene.first, scene.second), scene.centres(), strict=True):
            jx, jy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
            extent = rng.uniform(*EXTENTS[thing.size])
            alpha = styled_coverage(thing.shape, thing.style, (ax + jx) * scale,
                                    (ay + jy) * scale, extent * scale, size)  # fmt: skip
            layers.append((alpha, thing.color))
        return _draw_layers(layers, scene.background, size)
    jx, jy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    low, high = EXTENTS[scene.size]
    extent = rng.uniform(low, high)
    ax, ay = ANCHORS[scene.position]
    alpha = styled_coverage(scene.shape, scene.style, (ax + jx) * scale, (ay + jy) * scale,
                            extent * scale, size)  # fmt: skip
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
