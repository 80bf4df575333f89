"""A second shape classifier, from image moments: circle, square, triangle or "other".

It never fits or draws an ideal shape (as `training.detector` does); it reads four moment
invariants off the drawn region's soft coverage α (each pixel weighted by how much of it the
shape covers) and compares them with each shape's prototype. With A = Σα and μ_pq the central
moments per unit of α:

- anisotropy: (λ₁ − λ₂) / A, the difference of the second-moment eigenvalues (0 for circle and
  square, 0.028 for the apex-up triangle whose base equals its height; an ellipse or
  rectangle of aspect 1.25 is at 0.036–0.038);
- skew: μ₀₃ / A^1.5, the vertical third moment (0 for circle and square, −0.021 for the
  apex-up triangle, whose mass sits low);
- kurtosis: the fourth cumulants (μ₄₀ − 3μ₂₀² + μ₀₄ − 3μ₀₂²) / (2A²) (circle −1/(16π²) =
  −0.0063, square −1/120 = −0.0083, triangle −0.0058);
- cross: (μ₂₂ − μ₂₀μ₀₂ − 2μ₁₁²) / A² (circle −1/(48π²) = −0.0021, square 0, triangle −0.0019).

All four are cumulants of order 2 (as a difference), 3 and 4, which a symmetric blur leaves
unchanged (a Gaussian blur adds only to the second cumulants, equally in x and y), and they are
scale-free: a model's soft or slightly blurred edges do not move them, a wrong outline does.
Prototypes are the mean invariants of clean renders (extents 11–30 px, sub-pixel offsets); a
region is the class whose prototype is nearest in tolerance units (max over invariants of
|value − prototype| / tolerance) and "other" when even that is beyond 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from training.shapes import SHAPES, Scene, coverage

FEATURES: tuple[str, ...] = ("anisotropy", "skew", "kurtosis", "cross")
# Half-widths of each class's accepted band, from the geometry, not from any model's images:
# anisotropy 0.014 accepts an aspect ratio up to ≈ 1.09 and rejects 1.25 (0.036); skew 0.008
# is under half the triangle's −0.021; kurtosis and cross are half the circle–square gap
# (0.0020 and 0.0021), so a shape is never "other" for lying between those two — it is the
# nearer one — only for lying beyond both.
TOLERANCE: dict[str, float] = {
    "anisotropy": 0.014,
    "skew": 0.008,
    "kurtosis": 0.001,
    "cross": 0.00105,
}
OTHER = "other"


@dataclass(frozen=True)
class ShapeReading:
    """The class read, its distance in tolerance units (≤ 1 means within tolerance) and the
    invariants (name → value)."""

    shape: str
    distance: float
    features: dict[str, float]


def features(alpha: np.ndarray) -> dict[str, float]:
    """The four invariants of one region's soft coverage α: (H, W) float in [0, 1], 0 outside
    the region."""
    alpha = np.clip(np.asarray(alpha, dtype=np.float64), 0.0, 1.0)
    area = float(alpha.sum())
    if area < 1.0:
        raise ValueError(f"features of a region of area {area:.2f} (under one pixel)")
    ys, xs = np.indices(alpha.shape, dtype=np.float64)
    weights = alpha / area
    x = xs - float((weights * xs).sum())
    y = ys - float((weights * ys).sum())

    def mu(p: int, q: int) -> float:
        return float((weights * x**p * y**q).sum())

    mu20, mu02, mu11 = mu(2, 0), mu(0, 2), mu(1, 1)
    return {
        "anisotropy": float(np.hypot(mu20 - mu02, 2 * mu11)) / area,
        "skew": mu(0, 3) / area**1.5,
        "kurtosis": (mu(4, 0) - 3 * mu20**2 + mu(0, 4) - 3 * mu02**2) / (2 * area**2),
        "cross": (mu(2, 2) - mu20 * mu02 - 2 * mu11**2) / area**2,
    }


@lru_cache(maxsize=1)
def prototypes() -> dict[str, dict[str, float]]:
    """Mean invariants of clean 64-px renders of each shape: 24 extents × 4 sub-pixel offsets."""
    out = {}
    for shape in SHAPES:
        rows = []
        for extent in np.linspace(11, 30, 24):
            for dx, dy in ((0.0, 0.0), (0.3, 0.6), (0.5, 0.5), (0.8, 0.1)):
                rows.append(features(coverage(shape, 32 + dx, 32 + dy, float(extent), 64)))
        out[shape] = {name: float(np.mean([r[name] for r in rows])) for name in FEATURES}
    return out


def classify(alpha: np.ndarray) -> ShapeReading:
    """Read the shape of one region's coverage (H, W) in [0, 1]; under a pixel is "other"."""
    if float(np.clip(alpha, 0, 1).sum()) < 1.0:
        return ShapeReading(OTHER, float("inf"), {})
    values = features(alpha)
    distances = {
        shape: max(abs(values[n] - proto[n]) / TOLERANCE[n] for n in FEATURES)
        for shape, proto in prototypes().items()
    }
    best = min(distances, key=lambda s: distances[s])
    shape = best if distances[best] <= 1.0 else OTHER
    return ShapeReading(shape, distances[best], values)


def matches(scene: Scene, reading: ShapeReading) -> bool:
    """Whether the reading is the caption's shape."""
    return reading.shape == scene.shape
