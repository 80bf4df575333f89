"""Colours in CIELAB, where a distance (ΔE 1976) tracks what a viewer sees as different.

sRGB (D65) → linear RGB → XYZ → L*a*b*. ΔE ≈ 2.3 is a just-noticeable difference; the named
colours of `training.shapes` lie ≥ 40 apart (red–orange is the closest pair).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0…255, shape (..., 3) → CIELAB (..., 3) float64 (L in 0…100)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def delta_e(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    """ΔE 1976 between sRGB colours (broadcast over leading axes) → (...) float64."""
    return np.asarray(np.linalg.norm(to_lab(rgb_a) - to_lab(rgb_b), axis=-1))


def nearest_name(rgb: np.ndarray, palette: Mapping[str, tuple[int, int, int]]) -> str:
    """The name in `palette` whose colour is nearest (ΔE) to the sRGB colour `rgb` (3,)."""
    names = list(palette)
    distances = delta_e(
        np.asarray(rgb, dtype=np.float64)[None], np.array([palette[n] for n in names])
    )
    return names[int(np.argmin(distances))]
